"""The task tree's states and the rules of thumb written as data: exec states, the document's `status` for
each, which state may follow which, what is actionable. No imports beyond the language, so a reader that
only asks "is anything running?" (the health check) loads nothing more.
"""

from __future__ import annotations

# -- states --------------------------------------------------------------------------------------------

NEW = "NEW"
PROCESSING = "PROCESSING"
END = "END"
ERROR_FIX_PENDING = "ERROR_FIX_PENDING"
NORMAL_CRASH = "NORMAL_CRASH"
REQUIRES_MANUAL = "REQUIRES_MANUAL"
VOID = "VOID"
EXEC_STATES = (NEW, PROCESSING, END, ERROR_FIX_PENDING, NORMAL_CRASH, REQUIRES_MANUAL, VOID)

# The source document's `status` column, derived from the exec state so the two never disagree.
STATUS_OF = {
    NEW: "pending",
    PROCESSING: "running",
    END: "completed",
    ERROR_FIX_PENDING: "failed",
    NORMAL_CRASH: "failed",
    REQUIRES_MANUAL: "failed",
    VOID: "voided",
}

# Which exec state may follow which. END and VOID are final (END may still be voided); a task that needs
# a person leaves REQUIRES_MANUAL only when a person hands it back (ERROR_FIX_PENDING), ends or voids it.
TRANSITIONS: dict[str, frozenset[str]] = {
    NEW: frozenset({PROCESSING, END, REQUIRES_MANUAL, VOID}),
    PROCESSING: frozenset({END, ERROR_FIX_PENDING, NORMAL_CRASH, REQUIRES_MANUAL, VOID}),
    ERROR_FIX_PENDING: frozenset({PROCESSING, END, NORMAL_CRASH, REQUIRES_MANUAL, VOID}),
    NORMAL_CRASH: frozenset({PROCESSING, END, ERROR_FIX_PENDING, REQUIRES_MANUAL, VOID}),
    REQUIRES_MANUAL: frozenset({ERROR_FIX_PENDING, END, VOID}),
    END: frozenset({VOID}),
    VOID: frozenset(),
}

# `tasks.py mark NAME VERB`: the source document's mark_start / mark_end / mark_error_fix_pending / ...
VERBS = {
    "start": PROCESSING,
    "end": END,
    "error": ERROR_FIX_PENDING,
    "crash": NORMAL_CRASH,
    "manual": REQUIRES_MANUAL,
    "void": VOID,
}

ACTIONABLE_STATES = frozenset({NEW, ERROR_FIX_PENDING, NORMAL_CRASH})
# A parent runs only when every child is in one of these (the source document's gate).
CHILD_SETTLED = frozenset({END, VOID, REQUIRES_MANUAL})
OPEN_STATES = frozenset({NEW, PROCESSING, ERROR_FIX_PENDING, NORMAL_CRASH})

TYPES = ("fix", "regular", "creative")
PRIORITIES = ("P0", "P1", "P2")
RUN_KINDS = ("argv", "shell", "plan")
SCHEMA = 1
HISTORY_KEEP = 30
TEXT_FIELDS = ("display_name", "description", "success_criteria", "fix_suggestion", "analysis", "plan", "solution")
