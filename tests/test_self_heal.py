"""Self-heal: failures become fix records. Rules first, a model second (the package's fake endpoint, the real
openai client), a second look at what the model proposes, and only allow-listed actions ever applied."""

from __future__ import annotations

import gzip
import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import PYTHON, ROOT, SCRIPTS, call_script, script_env
from selfheal.core.breaker import Breakers
from selfheal.core.config import Config, load_config
from selfheal.core.ledger import Ledger
from selfheal.heal.diagnose import ApplyRefused, Evidence, Healer, apply_fix, gather_openclaw, gather_task
from selfheal.observe.logreport import analyze
from selfheal.state.fixes import FixStore, normalize, write_learnings
from selfheal.state.root import StateRoot
from selfheal.tasks.tree import REQUIRES_MANUAL, Task, TaskStore
from selfheal.testing import FakeClock, FakeModelServer, Fault

SELF_HEAL = str(SCRIPTS / "self_heal.py")
FIXTURES = ROOT / "tests" / "fixtures" / "openclaw-logs"
GATEWAY_LOG = FIXTURES / "gateway-cron-agent-errors.jsonl"


@pytest.fixture
def server() -> Iterator[FakeModelServer]:
    with FakeModelServer() as srv:
        yield srv


@pytest.fixture
def model_config(server: FakeModelServer, write_config: Callable[[str], Path]) -> Config:
    """One endpoint, on the fake server; quick to give up."""
    write_config(
        f"""
        retry: {{jitter: none}}
        models:
          timeout_s: 2.0
          timeout_per_1k_tokens_s: 0.0
          connect_timeout_s: 0.5
          deadline_s: 20
          chain:
            - {{name: analyst, base_url: "{server.url("analyst")}", model: analyst-7b, api_key_env: ANALYST_KEY}}
        """
    )
    return load_config()


@pytest.fixture(autouse=True)
def analyst_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANALYST_KEY", "analyst-key-value-123")


def healer(config: Config, state: StateRoot, **options: Any) -> Healer:
    return Healer(config=config, state=state, clock=FakeClock(), **options)


def evidence(error: str, error_class: str | None = "unknown", *, task: str = "nightly-report", **more: Any) -> Evidence:
    return Evidence(
        task=task,
        kind=more.pop("kind", "task"),
        error=error,
        error_class=error_class,
        occurrence=more.pop("occurrence", "run-1"),
        failures=more.pop("failures", 1),
        **more,
    )


def good_analysis(**changes: Any) -> str:
    answer = {
        "root_cause": "the frobnicator overflowed its zq buffer because the batch grew past 4096 rows",
        "problems": ["the zq buffer is fixed at 4096 rows", "the batch size is not capped"],
        "fix_steps": ["raise ZQ_ROWS in frob.py to 16384", "cap the batch at 10000 rows in frob.py"],
        "target_module": "frob.py",
        "success_criteria": "the nightly batch runs without a zq overflow",
        "confidence": 0.8,
    }
    answer.update(changes)
    return json.dumps(answer)


def run(home: Path, *args: str, script: str = SELF_HEAL) -> subprocess.CompletedProcess[str]:
    return call_script(Path(script).name, *args, home=home)


# -- rules first ---------------------------------------------------------------------------------------------------

RULE_CASES = [
    ("rate_limit", "HTTP 429: Too Many Requests", {}, "rate-limited", "fallback endpoint"),
    ("fatal", "insufficient_quota: You exceeded your current quota", {}, "quota-exhausted", "quota"),
    ("auth", "HTTP 401: invalid api key", {"target": "analyst"}, "auth", "ANALYST_KEY"),
    ("resource", "torch.cuda.OutOfMemoryError: CUDA out of memory", {}, "out-of-memory", "smaller model"),
    ("resource", "OSError: [Errno 28] No space left on device", {}, "disk-full", "free space"),
    ("permanent", "ModuleNotFoundError: No module named 'pandas'", {}, "missing-module", "sys.path"),
    ("unknown", "NameError: name 'LLM_API_KEY' is not defined", {}, "undefined-name", "alias"),
    ("permanent", "Error code: 400 - context_length_exceeded", {}, "context-too-long", "context_tokens"),
    (
        "transient",
        "ConnectionRefusedError: [Errno 111] Connection refused",
        {"target": "qwen3-4b"},
        "endpoint-down",
        "qwen3-4b",
    ),
    ("transient", "HTTP 503: upstream busy", {}, "transient", "fallback"),
    ("timeout", "timed out after 600s", {}, "timeout", "timeout"),
    ("permanent", "SyntaxError: invalid syntax (report.py, line 12)", {}, "syntax-error", "syntax"),
    ("permanent", "PermissionError: [Errno 13] Permission denied: '/srv/www'", {}, "permission-denied", "owner"),
    ("permanent", "sh: 1: wkhtmltopdf: command not found", {}, "file-missing", "install the program"),
    ("format", "not JSON: Expecting value: line 1 column 1", {}, "bad-model-output", "--schema"),
    ("timeout", "stuck: no output for 612s (limit 600s); its processes were stopped", {}, "stuck", "--timeout"),
    ("unknown", "KeyError: 'price'", {}, "bad-data", "input"),
    (
        "auth",
        "No route-compatible authentication source is configured for openai.",
        {"kind": "fallback_exhausted", "fallback_configured": False, "model": "openai/gpt-6-astra"},
        "openclaw-no-fallback",
        "agents.defaults.model.fallbacks",
    ),
    (
        "auth",
        "No route-compatible authentication source is configured for openai.",
        {"kind": "lane_error"},
        "openclaw-auth",
        "auth profile",
    ),
    (
        "unknown",
        "command exited with code 1",
        {"kind": "cron_failed", "job": "backup"},
        "cron-job-failed",
        "system crontab",
    ),
    (
        "unknown",
        "description is required",
        {"kind": "skill_invalid", "file": "/w/skills/x/SKILL.md"},
        "invalid-skill",
        "/w/skills/x/SKILL.md",
    ),
]


@pytest.mark.parametrize(("error_class", "error", "more", "rule", "in_steps"), RULE_CASES)
def test_each_known_failure_gets_its_rule_based_record_without_a_model(
    model_config: Config,
    state: StateRoot,
    server: FakeModelServer,
    error_class: str,
    error: str,
    more: dict[str, Any],
    rule: str,
    in_steps: str,
) -> None:
    result = healer(model_config, state).heal(evidence(error, error_class, **more))
    record = result.record
    assert (record.source, record.status, record.review["verdict"]) == (f"rule:{rule}", "open", "ready")
    assert in_steps in " ".join(record.fix_steps)
    assert "{" not in record.root_cause + " ".join(record.fix_steps) + record.success_criteria  # all filled
    assert record.id == f"FIX-{record.task}-001" and record.occurrences == 1
    assert server.requests("analyst") == 0  # a rule explained it: no model involved
    md = (state.sub("fixes") / f"{record.id}.md").read_text()
    assert record.root_cause in md and "never runs it" in md


def test_an_auth_record_about_one_of_the_users_openclaw_models_names_its_key_variable(
    state: StateRoot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write_config: Callable[[str], Path]
) -> None:
    """With no chain in config.yaml the calls go to the user's OpenClaw models: a 401 from one of them gets a
    record that names the variable its key comes from, as one from config.yaml's chain does (it said "set the
    key in the environment variable that holds the provider's key")."""
    folder = tmp_path / "oc"
    folder.mkdir()
    provider = {"baseUrl": "https://corp.example.com/v1", "apiKey": "${CORP_LLM}", "models": [{"id": "m1"}]}
    config = {"models": {"providers": {"corp": provider}}, "agents": {"defaults": {"model": {"primary": "corp/m1"}}}}
    (folder / "openclaw.json").write_text(json.dumps(config))
    monkeypatch.setenv("OPENCLAW_STATE_DIR", str(folder))
    monkeypatch.setenv("CORP_LLM", "corp-key-value-123")
    write_config("retry: {jitter: none}\n")
    result = healer(load_config(), state, use_model=False).heal(
        evidence("HTTP 401: invalid api key", "auth", target="corp-m1")
    )
    assert result.record.source == "rule:auth"
    assert "set the key in the environment variable CORP_LLM of the process" in " ".join(result.record.fix_steps)


def test_a_word_holding_auth_is_not_an_authentication_failure(
    model_config: Config, state: StateRoot, server: FakeModelServer
) -> None:
    """OpenClaw's "set an authored value" is about a config path, not credentials: openclaw-auth's words are
    whole words, so "authored" does not give it the auth rule's fix."""
    error = (
        "Config path is valid but unset: logging. Run `openclaw config set logging.level info` to set an authored value"
    )
    record = healer(model_config, state).heal(evidence(error, "unknown", kind="lane_error")).record
    assert record.source != "rule:openclaw-auth"
    assert "auth profile" not in " ".join(record.fix_steps)


def test_the_same_failure_three_times_is_one_record_with_three_occurrences(home: Path) -> None:
    """Real failures of a real task, recorded by retry_run.py, each read by self_heal.py."""
    for n in range(1, 4):
        subprocess.run(
            [PYTHON, str(SCRIPTS / "retry_run.py"), "--task", "etl", "--max-attempts", "1", "--", PYTHON, "-c",
             f"import sys; print('loading batch {n * 1000} rows'); sys.exit('ValueError: bad row {n}')"],
            env=script_env(home), capture_output=True, check=False,
        )  # fmt: skip
        result = json.loads(run(home, "--task", "etl", "--no-model", "--json").stdout)
        assert (result["id"], result["occurrences"], result["created"]) == ("FIX-etl-001", n, n == 1)
    again = json.loads(run(home, "--task", "etl", "--no-model", "--json").stdout)
    assert (again["occurrences"], again["counted"]) == (3, False)  # reading the same failure again counts nothing
    assert sorted(p.name for p in (home / "fixes").glob("FIX-*.json")) == ["FIX-etl-001.json"]
    listed = json.loads(run(home, "list", "--json").stdout)["records"]
    assert [(r["id"], r["occurrences"]) for r in listed] == [("FIX-etl-001", 3)]
    history = (home / "fixes" / "HISTORY.md").read_text()
    assert "| FIX-etl-001 | etl |" in history


def test_signatures_ignore_numbers_ids_paths_times_and_quoted_values() -> None:
    a = normalize(
        "2026-11-21T03:12:18Z job 4711 failed at /srv/a/b.py: key 'x-91' uuid 3f2b8c1e-1d2e-4f5a-9b8c-0123456789ab"
    )
    b = normalize("2026-11-22T04:00:00Z job 12 failed at /tmp/c.py: key 'y' uuid 00000000-1111-2222-3333-444444444444")
    assert a == b
    assert normalize("timeout after 31s") == normalize("timeout after 47s")
    assert normalize("disk full") != normalize("permission denied")


# -- a model second ----------------------------------------------------------------------------------------------


def test_a_failure_no_rule_explains_gets_a_model_analysis(
    model_config: Config, state: StateRoot, server: FakeModelServer
) -> None:
    server.script("analyst", Fault.reply(good_analysis()))
    result = healer(model_config, state).heal(evidence("frobnicator exploded: zq overflow at row 5000"))
    record = result.record
    assert record.source == "model:analyst/analyst-7b"
    assert record.review == {"verdict": "ready", "objections": [], "by": "the second look (rules)"}
    assert record.problems == ["the zq buffer is fixed at 4096 rows", "the batch size is not capped"]
    assert (record.target_module, record.confidence) == ("frob.py", 0.8)
    assert server.requests("analyst") == 1


def test_a_malformed_analysis_is_retried_once_stricter_then_the_record_comes_from_rules(
    model_config: Config, state: StateRoot, server: FakeModelServer
) -> None:
    server.script("analyst", Fault.reply("I think the frobnicator broke."), Fault.reply("Really, it broke."))
    result = healer(model_config, state).heal(evidence("frobnicator exploded: zq overflow"))
    assert server.requests("analyst") == 2  # the answer, then one stricter retry
    record = result.record
    assert record.source == "none" and record.review["verdict"] == "draft"
    assert any("wrong shape, also after a stricter retry" in n and "rules alone" in n for n in record.notes)


def test_with_no_endpoint_reachable_self_heal_works_from_rules_alone(
    state: StateRoot, write_config: Callable[[str], Path]
) -> None:
    write_config(
        "models: {connect_timeout_s: 0.5, deadline_s: 5,"
        ' chain: [{name: gone, base_url: "http://127.0.0.1:9/v1", model: m}]}\n'
    )
    result = healer(load_config(), state).heal(evidence("ModuleNotFoundError: No module named 'zq'", failures=3))
    assert result.record.source == "rule:missing-module"  # at the threshold a model was asked, and failed
    assert any("rules alone" in n for n in result.record.notes)


def test_at_the_threshold_a_model_is_asked_even_when_a_rule_matched(
    model_config: Config, state: StateRoot, server: FakeModelServer
) -> None:
    server.script(
        "analyst",
        Fault.reply(
            good_analysis(
                root_cause="pandas is missing from the venv the cron job uses (ModuleNotFoundError)",
                problems=["the cron job runs /usr/bin/python3, not the venv"],
                fix_steps=["point the cron line at .venv/bin/python in run.py's crontab entry"],
                target_module="run.py",
            )
        ),
    )
    h = healer(model_config, state)
    for n in (1, 2):
        record = h.heal(evidence("ModuleNotFoundError: No module named 'pandas'", occurrence=f"run-{n}")).record
        assert record.source == "rule:missing-module"
    record = h.heal(evidence("ModuleNotFoundError: No module named 'pandas'", occurrence="run-3")).record
    assert (record.source, record.occurrences, record.id) == ("model:analyst/analyst-7b", 3, "FIX-nightly-report-001")
    assert server.requests("analyst") == 1


def test_the_analysis_call_is_not_counted_as_a_run_of_the_task_it_analyses(
    model_config: Config, state: StateRoot, server: FakeModelServer
) -> None:
    """A task that failed 5 times, then self-heal's root-cause call about it: the report still says 0 of 5
    succeeded (P1), not 1 of 6; the call is recorded under self-heal's own task name."""
    clock = FakeClock()
    ledger = Ledger(state, model_config, clock=clock)
    for attempt in range(1, 6):
        ledger.record("failed", task="doc-gen-588", error_class="timeout", reason="timed out", attempt=attempt)
        clock.advance(60)
    server.script("analyst", Fault.reply(good_analysis()))
    record = Healer(config=model_config, state=state, clock=clock).heal(evidence("zq overflow", task="doc-gen-588"))
    assert record.record.source == "model:analyst/analyst-7b"

    report = analyze(None, since=None, default_since=False, config=model_config, state=state, env={})
    assert (report["runs"]["succeeded"], report["runs"]["failed"]) == (0, 5)
    assert [t["task"] for t in report["tasks"]["slowest"]] == []
    assert report["lines"]["own_events"] == 1
    p1 = next(a for a in report["alerts"] if a["priority"] == "P1")
    assert "0 of 5 finished runs succeeded" in p1["message"]
    days = sorted((state.root / "ledger").iterdir())
    events = [json.loads(line) for day in days for line in day.read_text().splitlines()]
    assert [e["task"] for e in events if e["event"] == "success"] == ["self-heal.diagnose.doc-gen-588"]


# -- the second look, and nothing a model says is ever run ----------------------------------------------------------


def test_a_destructive_model_fix_stays_a_draft_and_its_shell_text_stays_inert(
    model_config: Config, state: StateRoot, server: FakeModelServer, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    server.script(
        "analyst",
        Fault.reply(
            good_analysis(
                fix_steps=[f"rm -rf ~ && touch {marker}", f"$(touch {marker}) then rerun frob.py"],
                actions=["requeue_task", f"sh -c 'touch {marker}'"],
            )
        ),
    )
    record = healer(model_config, state).heal(evidence("frobnicator exploded: zq overflow")).record
    assert record.review["verdict"] == "draft"
    objections = " ".join(record.review["objections"])
    assert "destructive or irreversible" in objections and "does not allow" in objections
    assert f"rm -rf ~ && touch {marker}" in record.fix_steps  # kept as text for a person to read
    with pytest.raises(ApplyRefused, match="does not perform") as refused:
        apply_fix(record.id, config=model_config, state=state)
    assert "Nothing was done" in str(refused.value)
    assert not marker.exists()
    assert FixStore(state).get(record.id).status == "open"


@pytest.mark.parametrize(
    ("changes", "objection"),
    [
        ({"root_cause": "the moon was in the wrong phase"}, "does not mention anything the evidence shows"),
        ({"fix_steps": ["restart the machine politely"]}, "no fix step touches the target module"),
        ({"confidence": 0.2}, "below fixes.min_confidence"),
        ({"fix_steps": []}, "proposes no fix steps"),
    ],
)
def test_the_second_look_objects_to_a_weak_model_fix(
    model_config: Config, state: StateRoot, server: FakeModelServer, changes: dict[str, Any], objection: str
) -> None:
    server.script("analyst", Fault.reply(good_analysis(**changes)))
    record = healer(model_config, state).heal(evidence("frobnicator exploded: zq overflow")).record
    assert record.review["verdict"] == "draft"
    assert any(objection in o for o in record.review["objections"]), record.review


# -- --apply: allow-listed, reversible, recorded -------------------------------------------------------------------


def test_apply_resets_the_breaker_and_records_how_to_undo_it(model_config: Config, state: StateRoot) -> None:
    breakers = Breakers(state, model_config.breakers, ledger=Ledger(state, model_config))
    for _ in range(5):
        permit = breakers.acquire("vendor-api")
        breakers.release(permit, ok=False, error_class="transient")
    assert breakers.status("vendor-api")["state"] == "open"
    record = (
        healer(model_config, state, use_model=False)
        .heal(evidence("HTTP 401 unauthorized", "auth", target="vendor-api"))
        .record
    )
    assert record.actions == ["reset_breaker"]
    done = apply_fix(record.id, config=model_config, state=state)
    assert [(d.action, d.target) for d in done] == [("reset_breaker", "vendor-api")]
    assert breakers.status("vendor-api")["state"] == "closed"
    stored = FixStore(state).get(record.id)
    assert stored.status == "applied" and stored.history[-1]["undo"].startswith("none needed")
    with pytest.raises(ApplyRefused, match="is applied, not open"):
        apply_fix(record.id, config=model_config, state=state)


def test_an_apply_refused_by_its_second_action_leaves_the_first_undone(model_config: Config, state: StateRoot) -> None:
    """endpoint-down asks for reset_breaker, requeue_task: a retry_run task is not in the tree, so the refusal's
    "nothing was done" must hold for the breaker too (it was closed, unrecorded)."""
    breakers = Breakers(state, model_config.breakers, ledger=Ledger(state, model_config))
    for _ in range(5):
        breakers.release(breakers.acquire("vendor-api"), ok=False, error_class="transient")
    record = (
        healer(model_config, state, use_model=False)
        .heal(evidence("ConnectionRefusedError: [Errno 111] Connection refused", "transient", target="vendor-api"))
        .record
    )
    assert record.actions == ["reset_breaker", "requeue_task"]
    with pytest.raises(ApplyRefused, match="not a task of the task tree; nothing was done"):
        apply_fix(record.id, config=model_config, state=state)
    assert breakers.status("vendor-api")["state"] == "open"
    assert FixStore(state).get(record.id).status == "open"


def test_apply_requeues_a_parked_task_and_a_later_success_verifies_the_fix(home: Path, state: StateRoot) -> None:
    config = load_config()
    store = TaskStore(state, config)
    with store.transaction() as tree:
        tree.add(Task(name="sync", run={"kind": "argv", "argv": ["true"], "cwd": str(home)}))
        tree.quiet_update("sync", exec_state=REQUIRES_MANUAL, retry_count=5, last_error="No space left on device")
    record = healer(config, state, use_model=False).heal(gather_task("sync", state=state, config=config)).record
    assert record.source == "rule:disk-full" and record.actions == ["requeue_task"]
    apply_fix(record.id, config=config, state=state)
    assert (store.get("sync").exec_state, store.get("sync").retry_count) == ("ERROR_FIX_PENDING", 0)
    outcome = json.loads(run(home, "run-next", "--json", script=str(SCRIPTS / "tasks.py")).stdout)
    assert outcome["exec_state"] == "END" and outcome["verified_fixes"] == [record.id]
    assert FixStore(state).get(record.id).status == "verified"


def test_apply_refuses_a_record_with_nothing_self_heal_can_do(home: Path) -> None:
    subprocess.run(
        [PYTHON, str(SCRIPTS / "retry_run.py"), "--task", "build", "--max-attempts", "1", "--", "sh", "-c",
         "echo 'SyntaxError: invalid syntax' >&2; exit 1"],
        env=script_env(home), capture_output=True, check=False,
    )  # fmt: skip
    fix_id = json.loads(run(home, "--task", "build", "--no-model", "--json").stdout)["id"]
    refused = run(home, "--apply", fix_id)
    assert refused.returncode == 3 and "its fix steps are for a person" in refused.stderr


def test_a_model_proposing_to_void_the_task_stays_a_draft_and_nothing_is_voided(
    model_config: Config, state: StateRoot, server: FakeModelServer
) -> None:
    """A clean-looking model answer that proposes void_task (final) is never ready; --apply voids nothing."""
    store = TaskStore(state, model_config)
    with store.transaction() as tree:
        tree.add(Task(name="nightly-report", run={"kind": "argv", "argv": ["true"], "cwd": str(state.root)}))
        tree.quiet_update("nightly-report", exec_state=REQUIRES_MANUAL)
    server.script("analyst", Fault.reply(good_analysis(actions=["void_task"])))
    record = healer(model_config, state).heal(evidence("frobnicator exploded: zq overflow")).record
    assert record.review["verdict"] == "draft"
    assert any("cannot be undone (void_task)" in o for o in record.review["objections"]), record.review
    for allow in (False, True):
        with pytest.raises(ApplyRefused, match="draft"):
            apply_fix(record.id, config=model_config, state=state, allow_irreversible=allow)
    assert store.get("nightly-report").exec_state == REQUIRES_MANUAL


def test_apply_voids_a_task_only_with_a_persons_allow_irreversible(home: Path, state: StateRoot) -> None:
    """A ready record asking for void_task: plain --apply refuses (exit 3, naming the flag) and the task is
    untouched; with --allow-irreversible it is voided and the record says it cannot be undone."""
    config = load_config()
    store = TaskStore(state, config)
    with store.transaction() as tree:
        tree.add(Task(name="sync", run={"kind": "argv", "argv": ["true"], "cwd": str(home)}))
        tree.quiet_update("sync", exec_state=REQUIRES_MANUAL, retry_count=5, last_error="No space left on device")
    record = healer(config, state, use_model=False).heal(gather_task("sync", state=state, config=config)).record
    fixes = FixStore(state)
    stored = fixes.get(record.id)
    stored.actions = ["void_task"]  # as a user's rule may ask
    fixes.save(stored)
    refused = run(home, "--apply", record.id)
    assert refused.returncode == 3, refused.stderr
    assert "cannot be undone" in refused.stderr and "--allow-irreversible" in refused.stderr
    assert store.get("sync").exec_state == REQUIRES_MANUAL and fixes.get(record.id).status == "open"
    done = run(home, "--apply", record.id, "--allow-irreversible", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["applied"][0]["reversible"] is False
    assert store.get("sync").exec_state == "VOID"
    assert "irreversible" in fixes.get(record.id).history[-1]["what"]
    assert run(home, "list", "--allow-irreversible").returncode == 2  # the flag goes with --apply only


# -- OpenClaw's own logs ------------------------------------------------------------------------------------------


def test_openclaw_logs_yield_records_for_the_failed_cron_job_and_the_exhausted_chain(home: Path) -> None:
    proc = run(home, "--from-openclaw-logs", str(GATEWAY_LOG), "--no-model", "--json")
    assert proc.returncode == 1, proc.stderr  # failures found
    result = json.loads(proc.stdout)
    assert (result["lines"], result["malformed"], result["failures"]) == (79, 0, 3)  # turn, cron run, CLI
    by_task: dict[str, list[dict[str, Any]]] = {}
    for record in result["records"]:
        by_task.setdefault(record["task"], []).append(record)
    cron = by_task["openclaw-cron-oc-selfheal-health-fail"][0]
    assert cron["source"] == "rule:cron-job-failed"
    (chain,) = by_task["openclaw-agent"]  # the main lane, the session lane and the chain: one failed turn
    assert chain["source"] == "rule:openclaw-no-fallback" and chain["occurrences"] == 1
    assert any("agents.defaults.model.fallbacks" in step for step in chain["fix_steps"])
    assert by_task["openclaw-cli"][0]["source"] == "rule:openclaw-auth"
    again = json.loads(run(home, "--from-openclaw-logs", str(GATEWAY_LOG), "--no-model", "--json").stdout)
    assert all(not r["created"] and not r["counted"] for r in again["records"])  # nothing counted twice


def test_a_corrupt_or_unnamed_gzip_of_openclaws_logs_is_named_or_read_never_a_traceback(
    home: Path, tmp_path: Path
) -> None:
    """A cut or fake `.gz` named on the command line ended in a traceback (exit 3); one OpenClaw's folder holds is
    named on stderr and the rest read; a gzip whose name does not say so was read as 19 malformed lines and
    `found nothing` (exit 0). Now as analyze_logs.py: exit 2 naming the file, gzip known by its first bytes."""
    data = gzip.compress(GATEWAY_LOG.read_bytes())
    cut, fake = tmp_path / "gw.log.1.gz", tmp_path / "gw.log.2.gz"
    cut.write_bytes(data[: len(data) // 2])
    fake.write_text("not gzip at all\n", encoding="utf-8")
    for path, problem in ((cut, "corrupt or truncated gzip data"), (fake, "not gzip data")):
        proc = run(home, "--from-openclaw-logs", str(path), "--no-model", "--json")
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert f"{path}: {problem}" in json.loads(proc.stdout)["message"]
    unnamed = tmp_path / "gw-archive"
    unnamed.write_bytes(data)
    result = json.loads(run(home, "--from-openclaw-logs", str(unnamed), "--no-model", "--json").stdout)
    assert (result["lines"], result["malformed"], result["failures"]) == (79, 0, 3)
    (tmp_path / "gw.log").write_bytes(GATEWAY_LOG.read_bytes())  # logging.file, beside its broken archives
    (tmp_path / "openclaw-state").mkdir()
    (tmp_path / "openclaw-state" / "openclaw.json").write_text(
        json.dumps({"logging": {"file": str(tmp_path / "gw.log")}})
    )
    proc = run(home, "--from-openclaw-logs", "--no-model", "--json")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    result = json.loads(proc.stdout)
    assert {r["task"] for r in result["records"]} >= {"openclaw-cron-oc-selfheal-health-fail", "openclaw-agent"}
    assert f"{fake}: not gzip data" in proc.stderr and f"{cut}: corrupt or truncated gzip data" in proc.stderr
    assert {e["path"] for e in result["unreadable"]} == {str(cut), str(fake)}


def test_openclaw_evidence_carries_the_cron_diagnostics(config: Config) -> None:
    found, lines, malformed = gather_openclaw([GATEWAY_LOG], config=config)
    assert (lines, malformed) == (79, 0)
    cron = next(e for e in found if e.kind == "cron_failed")
    assert cron.job == "oc-selfheal-health-fail" and "Connection refused" in "\n".join(cron.log_tail)
    skills = gather_openclaw([FIXTURES / "cli-skills-commands.jsonl"], config=config)[0]
    assert sorted(e.task for e in skills if e.kind == "skill_invalid") == [
        "openclaw-skill-oc-broken",
        "openclaw-skill-oc-nodesc",
    ]


# -- records for people --------------------------------------------------------------------------------------------


def test_learnings_entries_are_added_once_then_updated_and_other_entries_kept(
    model_config: Config, state: StateRoot, tmp_path: Path
) -> None:
    h = healer(model_config, state, use_model=False)
    h.heal(evidence("HTTP 429: Too Many Requests", "rate_limit"))
    target = tmp_path / "workspace" / ".learnings" / "ERRORS.md"
    target.parent.mkdir(parents=True)
    target.write_text("# Errors\n\n## [ERR-20260101-001] by_hand\n\n**Status**: pending\n\n---\n\n")
    assert write_learnings(target, FixStore(state).all()) == (1, 0)
    h.heal(evidence("HTTP 429: Too Many Requests", "rate_limit", occurrence="run-2"))
    assert write_learnings(target, FixStore(state).all()) == (0, 1)
    text = target.read_text()
    assert text.count("Pattern-Key: self-heal.") == 1 and "Recurrence-Count: 2" in text
    assert "## [ERR-20260101-001] by_hand" in text  # a person's entry is left alone
    assert "### Suggested Fix" in text and "] nightly-report" in text


def test_secrets_in_the_evidence_never_reach_the_record(model_config: Config, state: StateRoot) -> None:
    key = "sk-" + "Zx9" * 10
    record = (
        healer(model_config, state, use_model=False)
        .heal(evidence(f"HTTP 401: invalid api key {key}", "auth", log_tail=[f"Authorization: Bearer {key}"]))
        .record
    )
    stored = (state.sub("fixes") / f"{record.id}.json").read_text() + (
        state.sub("fixes") / f"{record.id}.md"
    ).read_text()
    assert key not in stored and "***" in stored


def test_bad_input_is_refused_with_a_clear_message(home: Path) -> None:
    cases = [
        (["--task", "never-ran"], 2, "nothing is known about task 'never-ran'"),
        (["--task", "../etc"], 2, "invalid task id"),
        (["show", "FIX-nope-001"], 2, "no fix record 'FIX-nope-001'"),
        (["--apply", "FIX-nope-001"], 2, "no fix record"),
        (["--from-openclaw-logs", "/nonexistent.log"], 2, "no such log file"),
        (["--from-openclaw-logs", "--since", "yesterday"], 2, "not a duration"),
        (["list", "--task", "x"], 2, "give one of"),
        ([], 2, "give one of"),
    ]
    for args, code, text in cases:
        proc = run(home, *args)
        assert proc.returncode == code, (args, proc.stderr)
        assert text in proc.stderr, (args, proc.stderr)


def test_learnings_for_a_workspace_that_does_not_exist_exits_2_and_creates_nothing(home: Path, tmp_path: Path) -> None:
    """A mistyped --workspace (`/nonexistent`) is named, exit 2, instead of growing .learnings/ERRORS.md
    wherever it points; inside an existing workspace, .learnings/ is still created."""
    missing = tmp_path / "gone" / "workspace"
    proc = run(home, "learnings", "--workspace", str(missing), "--json")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert json.loads(proc.stdout)["message"] == (
        f"--workspace {missing}: does not exist; give the OpenClaw workspace folder"
    )
    assert not (tmp_path / "gone").exists()
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    done = run(home, "learnings", "--workspace", str(workspace), "--json")
    assert done.returncode == 0 and json.loads(done.stdout)["file"] == str(workspace / ".learnings" / "ERRORS.md")
    assert (workspace / ".learnings" / "ERRORS.md").is_file()


# -- in the task tree ----------------------------------------------------------------------------------------------


def test_in_the_task_tree_each_problem_of_the_analysis_becomes_a_fix_task(
    state: StateRoot, server: FakeModelServer, write_config: Callable[[str], Path], tmp_path: Path
) -> None:
    from selfheal.heal.diagnose import task_runner

    write_config(
        f"""
        retry: {{jitter: none}}
        policies: {{unknown: {{attempts: 1}}}}
        models:
          connect_timeout_s: 0.5
          deadline_s: 20
          chain:
            - {{name: analyst, base_url: "{server.url("analyst")}", model: analyst-7b}}
        """
    )
    config = load_config()
    server.script("analyst", Fault.reply(good_analysis()))  # the only analysis the model is asked for
    store = TaskStore(state, config)
    with store.transaction() as tree:
        tree.add(
            Task(
                name="batch",
                run={"kind": "argv", "argv": ["sh", "-c", "echo 'frobnicator exploded: zq overflow' >&2; exit 1"],
                     "cwd": str(tmp_path)},
            )
        )  # fmt: skip
    runner = task_runner(store)
    first = runner.run_next()  # failure 1: a FIX task for the step
    assert first.fix_tasks == ["FIX-batch-command"] and first.fix_record is None
    analysed = runner.run_next()  # the FIX task: no rule explains it, so the model is asked
    assert (analysed.task, analysed.exec_state, analysed.fix_record) == (
        "FIX-batch-command",
        REQUIRES_MANUAL,
        "FIX-batch-001",
    )
    fix_task = store.get("FIX-batch-command")
    assert "frobnicator overflowed" in (fix_task.analysis or "") and "raise ZQ_ROWS" in (fix_task.fix_suggestion or "")
    second = runner.run_next()  # failure 2: the first FIX task was worked on, so a new one (a FIX per failure)
    assert second.retry_count == 2 and second.fix_tasks == ["FIX-batch-command-2"]
    assert runner.run_next().task == "FIX-batch-command-2"  # analysed in turn
    third = runner.run_next()  # failure 3: the threshold; the record already holds the model's analysis
    assert (third.retry_count, third.fix_record) == (3, "FIX-batch-001")
    assert third.fix_tasks == ["FIX-batch-A3", "FIX-batch-A3-2"]  # one per problem the analysis found
    titles = [store.get(n).display_name or "" for n in third.fix_tasks]
    assert "zq buffer is fixed" in titles[0] and "batch size is not capped" in titles[1]
    assert store.get("batch").fix_record == "FIX-batch-001"
    assert server.requests("analyst") == 1
    # The analyses of run 1's and run 2's FIX tasks, and run 3: one record, the model asked once.
    assert FixStore(state).get("FIX-batch-001").occurrences == 3


def test_a_fix_tasks_target_comes_from_the_traceback_the_command_and_the_keyword_map(
    state: StateRoot, write_config: Callable[[str], Path], tmp_path: Path
) -> None:
    """The fourth document's FIX-TC-FLOW-* lesson: a FIX task's target is found from the whole failure (the
    traceback kept in its record, not only the last error line), else its parent's command; and
    fixes.target_keywords maps words to a module (its infer_target_from_error: selector -> updater)."""
    from selfheal.heal.diagnose import infer_target_module

    write_config("fixes:\n  target_keywords:\n    - {pattern: '(?i)selector|element not found', target: updater.py}\n")
    config = load_config()
    store = TaskStore(state, config)
    traceback = (
        "exit 1: NameError: name 'analyze' is not defined\n"
        "Traceback (most recent call last):\n"
        '  File "/srv/shop/workflow_runner.py", line 88, in run\n'
        "NameError: name 'analyze' is not defined"
    )
    with store.transaction() as tree:
        tree.add(Task(name="TC-FLOW-001", run={"kind": "argv", "argv": ["python3", "/srv/shop/workflow_runner.py"]}))
        tree.add(Task(name="FIX-TC-FLOW-001-command", type="fix", parent="TC-FLOW-001", last_error=traceback))
        tree.add(Task(name="FIX-TC-FLOW-001-A3", type="fix", parent="TC-FLOW-001", last_error="exit 1: it broke"))
    env = {"HOME": str(tmp_path)}
    found = infer_target_module(gather_task("FIX-TC-FLOW-001-command", state=state, config=config), env=env)
    assert found == "/srv/shop/workflow_runner.py:88"
    found = infer_target_module(gather_task("FIX-TC-FLOW-001-A3", state=state, config=config), env=env)
    assert found == "/srv/shop/workflow_runner.py"  # the parent's command
    ui = evidence("TimeoutError: Timeout 30000ms exceeded waiting for selector '.edit-btn'", task="TC-FLOW-002")
    keywords = config.fixes.target_keywords
    assert infer_target_module(ui, env=env, keywords=keywords) == "updater.py"


def test_the_target_module_is_inferred_as_the_document_does(tmp_path: Path) -> None:
    from selfheal.heal.diagnose import infer_target_module

    env = {"HOME": str(tmp_path)}
    traceback = [
        "Traceback (most recent call last):",
        '  File "/srv/shop/workflow_runner.py", line 88, in run',
        '  File "/usr/lib/python3.11/site-packages/requests/api.py", line 59, in get',
        "requests.exceptions.ConnectionError: refused",
    ]
    assert infer_target_module(evidence("ConnectionError: refused", log_tail=traceback), env=env) == (
        "/srv/shop/workflow_runner.py:88"
    )
    # A skill whose folder uses hyphens, named in the task with underscores (the document's own lesson).
    skill = tmp_path / ".openclaw" / "skills" / "miaoshou-updater"
    skill.mkdir(parents=True)
    (skill / "SKILL.md").write_text("---\nname: miaoshou-updater\n---\n")
    assert infer_target_module(evidence("timeout", task="FIX-miaoshou_updater-001"), env=env) == str(skill)
    assert infer_target_module(evidence("exit 1", command=["python3", "/srv/report.py"]), env=env) == "/srv/report.py"
    chain = evidence("auth", kind="fallback_exhausted")
    assert infer_target_module(chain, env=env) == f"{tmp_path}/.openclaw/openclaw.json (agents.defaults.model)"


FAILURES_LOG = ROOT / "tests" / "fixtures" / "openclaw-failures" / "agent-chains-cron.jsonl"


def test_openclaw_fix_records_are_built_on_the_right_model_and_the_cron_diagnosis(home: Path) -> None:
    """The 402 quota of the fallback is the fix (not the primary's rate limit); a cron job's record counts its
    runs and carries OpenClaw's diagnosis; nothing offers to requeue what OpenClaw runs."""
    proc = run(home, "--from-openclaw-logs", str(FAILURES_LOG), "--no-model", "--json")
    assert proc.returncode == 1, proc.stderr
    records = json.loads(proc.stdout)["records"]
    by_source = {r["source"]: r for r in records}
    quota = by_source["rule:quota-exhausted"]
    assert quota["task"] == "openclaw-agent" and quota["occurrences"] == 2
    assert "backup/qwen-0.5b" in " ".join(quota["fix_steps"]) and "concurrency" not in " ".join(quota["fix_steps"])
    assert quota["error_class"] == "fatal" and quota["actions"] == []
    assert "rule:rate-limited" not in by_source
    single = by_source["rule:openclaw-single-model"]
    assert "openai/gpt-6-astra" in single["root_cause"]
    nightly = [r for r in records if r["task"] == "openclaw-cron-nightly-report"][-1]  # one record, seen 3 times
    assert nightly["occurrences"] == 3
    assert "No such file or directory" in nightly["root_cause"]
    assert all(r["actions"] == [] for r in records)
