"""The differences between the SQL dialects the task store speaks, in one place.

Statements in `taskdb` are written once, in the subset SQLite (3.35+) and PostgreSQL share: `?`
placeholders (rewritten here for PostgreSQL's drivers), `INSERT ... ON CONFLICT ... DO UPDATE`,
`UPDATE ... RETURNING`, `CASE` in `ORDER BY` and in index expressions, partial indexes. What differs is
below: how a writer takes the write lock, how a claim keeps two claimers off one row, auto-numbered keys,
the type names of a few columns, how long a writer waits for a lock, and whose clock stamps a claim and a
heartbeat, how the claim appends its history entry in the same statement, and how a trigger is written.
Fleet mode adds PostgreSQL as a second `Dialect`; nothing else needs to change.
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing's: the health check reads the task tree and never imports typing
if TYPE_CHECKING:
    from typing import NamedTuple
else:
    from .._typing import NamedTuple


class Dialect(NamedTuple):
    """How one database spells what the task store needs (a NamedTuple: no dataclasses import for readers)."""

    name: str
    placeholder: str  # what `?` becomes
    begin_write: str  # starts a transaction that holds the write lock from its first statement
    claim_lock: str  # appended to the claim's SELECT: keeps concurrent claimers off the chosen row
    queue_hint: str  # after `FROM tasks` in the actionable query and the claim: read {index}, in its order
    # The index the claim's pick reads. SQLite is told to read the queue index (queue_hint) and filters the
    # few rows it passes; PostgreSQL's planner, without statistics (a table just filled), would sort the whole
    # queue instead, so it gets `tasks_claim`, which holds exactly the claimable rows in run order.
    claim_index: str
    serial_key: str  # an auto-numbered primary key column
    real: str  # a floating-point column
    deferred_fk: str  # a foreign key checked at commit (a subtree may be inserted or deleted in any order)
    row_lock: str  # appended to a SELECT of one row that a writer is about to depend on (a child's parent)
    wait_lock: str  # sets how long a writer waits for a lock, from {ms}
    # The time a claim and a heartbeat write: an expression with one `?`, bound to the host's clock. On a
    # shared database the database's clock wins, so a lease means the same on every host.
    clock: str
    # The claim's new `history` (a JSON array as text): the old one, with an entry appended whose `what` is
    # "<old exec_state> -> PROCESSING" and whose other keys are the JSON object bound to the one `?`; the
    # newest {keep} entries kept. Evaluated in the claim's UPDATE, so the claim needs no read before its write.
    claim_history: str
    # A row trigger on `tasks`: statements formatted with {name}, {event} (INSERT, UPDATE, UPDATE OF ...,
    # DELETE), {when} (a condition on NEW/OLD) and {body} (statements, each ending in `;`).
    trigger: tuple[str, ...]
    # Drops the trigger {name} (and what it runs): each statement formatted with {name}.
    drop_trigger: tuple[str, ...]

    def sql(self, statement: str) -> str:
        """`statement` (written with `?` placeholders) as this dialect takes it."""
        if self.placeholder == "?":
            return statement
        return statement.replace("%", "%%").replace("?", self.placeholder)


# SQLite: BEGIN IMMEDIATE takes the database's write lock at once, so the claim's SELECT and UPDATE see
# no other writer; there is no row lock to add.
SQLITE = Dialect(
    name="sqlite",
    placeholder="?",
    begin_write="BEGIN IMMEDIATE",
    claim_lock="",
    # Without statistics the planner may prefer the exec_state index and sort every actionable row; the
    # queue index holds exactly those rows already in run order, so the first row that passes the gate wins.
    queue_hint=" INDEXED BY {index}",
    claim_index="tasks_queue",
    serial_key="INTEGER PRIMARY KEY AUTOINCREMENT",
    real="REAL",
    deferred_fk="DEFERRABLE INITIALLY DEFERRED",
    row_lock="",
    wait_lock="PRAGMA busy_timeout = {ms}",
    clock="?",
    # The old entries past the newest {keep} are left out: json_each yields an array's items in order.
    claim_history=(
        "(SELECT json_group_array(json(value)) FROM json_each(json_insert(history, '$[#]',"
        " json_set(?, '$.what', exec_state || ' -> PROCESSING'))) WHERE key > json_array_length(history) - {keep})"
    ),
    trigger=("CREATE TRIGGER {name} AFTER {event} ON tasks FOR EACH ROW WHEN {when} BEGIN {body} END",),
    drop_trigger=("DROP TRIGGER {name}",),
)

# PostgreSQL (fleet mode): writers run side by side; the claim's row lock skips rows another host is
# claiming, so each claimer takes a different task instead of waiting for the first. Leases (heartbeats)
# are stamped with the database's clock, never a host's.
POSTGRESQL = Dialect(
    name="postgresql",
    placeholder="%s",
    begin_write="BEGIN",
    claim_lock=" FOR UPDATE SKIP LOCKED",
    queue_hint="",
    claim_index="tasks_claim",
    serial_key="BIGSERIAL PRIMARY KEY",
    real="DOUBLE PRECISION",
    deferred_fk="DEFERRABLE INITIALLY DEFERRED",
    # Adding a child locks its parent: a claimer either sees the child or skips the locked parent.
    row_lock=" FOR UPDATE",
    wait_lock="SET lock_timeout = {ms}",
    # The host's time is bound as NULL (see state/pg.py): the database's clock as the statement starts
    # (statement_timestamp() is stable within a statement, so the lease sweep can read an index by it).
    # (date_part is double precision already; EXTRACT is numeric since PostgreSQL 14, slower to compute and cast.)
    clock="COALESCE(CAST(? AS DOUBLE PRECISION), date_part('epoch', statement_timestamp()))",
    # jsonpath's `last - n` is clamped to the array in lax mode: a shorter history is kept whole.
    claim_history=(
        "CAST(jsonb_path_query_array(CAST(history AS jsonb) || jsonb_build_array(CAST(? AS jsonb)"
        " || jsonb_build_object('what', exec_state || ' -> PROCESSING')), '$[last - {keep_less_one} to last]')"
        " AS TEXT)"
    ),
    trigger=(
        "CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN {body} RETURN NULL; END$$",
        "CREATE TRIGGER {name} AFTER {event} ON tasks FOR EACH ROW WHEN ({when}) EXECUTE FUNCTION {name}()",
    ),
    drop_trigger=("DROP TRIGGER {name} ON tasks", "DROP FUNCTION {name}()"),
)
