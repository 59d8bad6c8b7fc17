"""The five source documents (../shared/seeds/), replayed: each test is one row of docs/source-documents.md's
"The replay" whose "works" no other test showed, written from the document's own example (its task names,
numbers and messages). In-process and on a FakeClock: no real waits.

Sections follow the documents: 000 (first: retry for a local Qwen3-4B), 001 (second: fault tolerance for
multi-step tasks), 002 (third: the error recovery module), 003 (gateway failure), 004 (the task tree).
"""

from __future__ import annotations

import json
import random
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import selfheal
from conftest import PYTHON, ROOT, call_script
from selfheal.core.classify import Classifier, Failure, classify_error
from selfheal.core.config import Config, load_config
from selfheal.core.retrying import Retrier, attempts_of
from selfheal.durable.workflow import StepContext, Workflow
from selfheal.errors import ConfigError
from selfheal.models.llm import _ChainCall, _Request
from selfheal.state.root import StateRoot
from selfheal.tasks.tree import TaskStore
from selfheal.testing import FakeClock

# --- words in an error, as each document classifies them -----------------------------------------------

# (document, phrase, the class self-heal gives it). The documents' own classes map onto ours: 000's
# "immediate retry" is transient or timeout, "delayed retry" resource, format or rate_limit, "fatal" auth,
# fatal or permanent; 001's TRANSIENT / RATE_LIMIT / TIMEOUT / PERMANENT; 002's retryable patterns (each
# with its backoff group) and its non-retryable ones.
DOCUMENT_PHRASES = [
    # 000: 2.1's three levels
    ("000", "HTTP 502 Bad Gateway", "transient"),
    ("000", "HTTP 504 Gateway Timeout", "transient"),
    ("000", "model response timeout after 60s", "timeout"),
    ("000", "Connection reset by peer", "transient"),
    ("000", "CUDA out of memory. Tried to allocate 2.00 GiB", "resource"),
    ("000", "model returned malformed JSON", "format"),
    ("000", "rate limit triggered, cooling down", "rate_limit"),
    ("000", "authentication failed", "auth"),
    ("000", "unsupported model parameter: top_k", "fatal"),
    ("000", "hardware failure on GPU 0", "fatal"),
    # 001: classify_error's keyword lists, and its own example's failure
    ("001", "timeout", "timeout"),
    ("001", "Report generation timeout", "timeout"),
    ("001", "connection reset", "transient"),
    ("001", "service unavailable", "transient"),
    ("001", "503", "transient"),
    ("001", "502", "transient"),
    ("001", "network error", "transient"),
    ("001", "Email service unavailable", "transient"),
    ("001", "rate limit exceeded", "rate_limit"),
    ("001", "429", "rate_limit"),
    ("001", "timed out", "timeout"),
    ("001", "invalid parameter", "permanent"),
    ("001", "authentication failed", "auth"),
    ("001", "404", "permanent"),
    ("001", "permission denied", "permanent"),
    ("001", "syntax error", "permanent"),
    # 002: RETRYABLE_PATTERNS and NON_RETRYABLE_PATTERNS, every one
    ("002", "rate limit", "rate_limit"),
    ("002", "too many requests", "rate_limit"),
    ("002", "429", "rate_limit"),
    ("002", "timed out", "timeout"),
    ("002", "timeout", "timeout"),
    ("002", "connection error", "transient"),
    ("002", "connection reset", "transient"),
    ("002", "server disconnected", "transient"),
    ("002", "internal server error", "transient"),
    ("002", "service unavailable", "transient"),
    ("002", "temporarily unavailable", "transient"),
    ("002", "bad gateway", "transient"),
    ("002", "gateway timeout", "transient"),
    ("002", "unauthorized", "auth"),
    ("002", "authentication required", "auth"),
    ("002", "AuthenticationError: bad credentials", "auth"),
    ("002", "invalid api key", "auth"),
    ("002", "forbidden", "permanent"),
    ("002", "not found", "permanent"),
    ("002", "validation error", "permanent"),
    ("002", "bad request", "permanent"),
    ("002", "402", "fatal"),
    ("002", "Payment Required", "fatal"),
]


@pytest.mark.parametrize(("document", "phrase", "expected"), DOCUMENT_PHRASES)
def test_each_documents_error_words_get_its_class(config: Config, document: str, phrase: str, expected: str) -> None:
    """Printed by a failed command or raised as an exception's message, each phrase gets the class its
    document gives it (never `unknown`, which is retried once blindly: 002's own lesson)."""
    classifier = Classifier(config.classify)
    as_output = classifier.classify(Failure.from_command(exit_code=1, stderr_tail=phrase))
    as_exception = classify_error(RuntimeError(phrase), settings=config.classify)
    assert (as_output.error_class, as_exception.error_class) == (expected, expected), (document, phrase)


def test_a_usage_error_naming_a_timeout_option_stays_permanent(config: Config) -> None:
    """The bare word `timeout` is the weakest evidence: a refused --timeout option is still the caller's."""
    classifier = Classifier(config.classify)
    failure = Failure.from_command(exit_code=2, stderr_tail="job.py: error: unrecognized arguments: --timeout 5")
    assert classifier.classify(failure).error_class == "permanent"


def test_a_403_status_line_is_still_auth_and_a_402_status_is_fatal(config: Config) -> None:
    classifier = Classifier(config.classify)
    refused = classifier.classify(Failure.from_command(exit_code=22, stderr_tail="HTTP 403 Forbidden"))
    assert refused.error_class == "auth"
    paid = classifier.classify(Failure.from_command(exit_code=22, stderr_tail="HTTP/1.1 402 Payment Required"))
    assert (paid.error_class, paid.reason) == ("fatal", "payment_required")


# --- backoff: the second document's +-25% and the third's +-10% jitter ------------------------------------


class _Bound(random.Random):
    """uniform() returns its lower or upper bound, so the jitter's range becomes observable."""

    def __init__(self, upper: bool) -> None:
        super().__init__(0)
        self.upper = upper

    def uniform(self, a: float, b: float) -> float:
        return b if self.upper else a


def _rate_limited_then(clock: FakeClock, failures: int) -> Callable[[], str]:
    calls = {"n": 0}

    def call() -> str:
        calls["n"] += 1
        if calls["n"] <= failures:
            raise RuntimeError("429 Too Many Requests")
        return "ok"

    return call


@pytest.mark.parametrize("upper", [False, True])
def test_001_retry_with_backoff_jitters_plus_or_minus_25_percent(
    write_config: Callable[[str], Path], clock: FakeClock, upper: bool
) -> None:
    """retry_with_backoff(max_retries=3, base_delay=1.0, max_delay=30.0) with jitter=True: each wait is
    1, 2, 4 s, plus or minus 25% of it. `jitter: 0.25` says the same."""
    write_config("policies:\n  transient: {retries: 3, base_s: 1.0, multiplier: 2.0, cap_s: 30.0, jitter: 0.25}\n")
    config = load_config()
    calls = {"n": 0}

    def call_llm_api() -> str:
        calls["n"] += 1
        if calls["n"] <= 3:
            raise RuntimeError("503 service unavailable")
        return "answer"

    assert Retrier(config=config, clock=clock, rng=_Bound(upper)).call(call_llm_api) == "answer"
    factor = 1.25 if upper else 0.75
    assert clock.waits == pytest.approx([1.0 * factor, 2.0 * factor, 4.0 * factor])


@pytest.mark.parametrize("upper", [False, True])
def test_002_compute_delay_jitters_plus_or_minus_10_percent(
    write_config: Callable[[str], Path], clock: FakeClock, upper: bool
) -> None:
    """BackoffConfig(jitter=0.1) for "rate limit": 5 s x2 (5, 10, 20, 40, 80 s for its 5 retries), each
    plus or minus 10%; `retry: {jitter: 0.1}` makes it every policy's jitter."""
    write_config("retry: {jitter: 0.1}\n")
    config = load_config()
    assert config.policies.rate_limit.jitter == 0.1
    call = _rate_limited_then(clock, 5)
    assert Retrier(config=config, clock=clock, rng=_Bound(upper)).call(call) == "ok"
    factor = 1.1 if upper else 0.9
    assert clock.waits == pytest.approx([d * factor for d in (5.0, 10.0, 20.0, 40.0, 80.0)])


@pytest.mark.parametrize("value", ["0", "1.5", "fuzzy", "true"])
def test_a_jitter_that_is_no_mode_and_no_fraction_is_refused_naming_the_key(
    write_config: Callable[[str], Path], value: str
) -> None:
    path = write_config(f"policies:\n  transient: {{jitter: {value}}}\n")
    with pytest.raises(ConfigError) as info:
        load_config()
    message = str(info.value)
    assert str(path) in message and "policies.transient.jitter" in message


# --- counting retries as the documents do, from Python -----------------------------------------------------


def test_001_max_retries_3_is_the_first_try_and_3_retries(
    write_config: Callable[[str], Path], clock: FakeClock
) -> None:
    """@retry_with_backoff(max_retries=3) on call_llm_api: "Attempt 1/3 failed" ... "Failed after 3 retries",
    four calls in all. selfheal.retry(retries=3) counts the same; a permanent error still stops at once."""
    write_config("retry: {jitter: none}\n")
    config = load_config()
    calls: list[str] = []

    def call_llm_api() -> str:
        calls.append("call")
        raise RuntimeError("503 service unavailable")

    with pytest.raises(RuntimeError, match="503") as info:
        selfheal.retry(retries=3, config=config, clock=clock).call(call_llm_api)
    assert len(calls) == 4 and len(attempts_of(info.value)) == 4
    assert clock.waits == [1.0, 2.0, 4.0]

    calls.clear()
    with pytest.raises(RuntimeError):
        selfheal.retry(retries=3, config=config, clock=clock).call(lambda: calls.append("x") or _raise("syntax error"))
    assert calls == ["x"]


def _raise(message: str) -> str:
    raise RuntimeError(message)


def test_002_a_callers_max_retries_overrides_the_patterns_own(
    write_config: Callable[[str], Path], clock: FakeClock
) -> None:
    """execute_with_retry(fn, max_retries=1) on a rate limit (whose own BackoffConfig says 5): 2 calls."""
    write_config("retry: {jitter: none}\n")
    config = load_config()
    call = _rate_limited_then(clock, 10)
    with pytest.raises(RuntimeError, match="429"):
        selfheal.retry(retries=1, config=config, clock=clock).call(call)
    assert clock.waits == [5.0]


def test_retries_and_max_attempts_together_are_refused() -> None:
    with pytest.raises(ValueError, match="retries or max_attempts"):
        selfheal.retry(retries=3, max_attempts=4)
    with pytest.raises(ValueError, match="retries must be"):
        selfheal.retry(retries=-1)


# --- 000: the model chain, its timeouts and the simplified retry -------------------------------------------


def test_000_the_shipped_chain_is_the_documents_fallback_path(config: Config) -> None:
    """Qwen3-4B-Thinking-2507 at localhost:8000/v1, then Qwen1.5-0.5B on backup-server:8000/v1, then
    Phi-3-mini at 127.0.0.1:5000 (no network needed): the chain skill.yaml ships, in that order."""
    chain = [(e.model, e.base_url) for e in config.models.chain]
    assert chain == [
        ("Qwen3-4B-Thinking-2507", "http://localhost:8000/v1"),
        ("Qwen1.5-0.5B", "http://backup-server:8000/v1"),
        ("Phi-3-mini", "http://127.0.0.1:5000/v1"),
    ]


@pytest.mark.parametrize(("max_tokens", "expected"), [(None, 40.0), (1000, 40.0), (4000, 70.0), (500, 35.0)])
def test_000_the_read_timeout_is_30_s_plus_10_s_per_1k_tokens(
    config: Config, state: StateRoot, clock: FakeClock, max_tokens: int | None, expected: float
) -> None:
    """ "超时阈值优化: 基础30秒 + 每千token增加10秒": a request for 4,000 tokens waits 70 s for its answer;
    one that names no max_tokens is taken to ask for models.expected_tokens (1,000)."""
    request = _Request(({"role": "user", "content": "weekly report"},), False, None, max_tokens, None, False)
    call = _ChainCall(
        request, config=config, state=state, clock=clock, rng=None, task=None, deadline_s=300.0,
        on_text=None, on_restart=None, record=False, offload=False,
    )  # fmt: skip
    assert call.read_timeout(config.models.chain[0]) == pytest.approx(expected)


def test_000_the_simplified_retry_asks_what_simplify_prompt_asks(config: Config) -> None:
    """simplify_prompt(): "回答不超过200字, 使用Markdown列表格式, 避免使用比喻和修辞", a lower temperature,
    and the long prompt cut (here: split into its sub-questions, each cut, as 3.2's first measure says)."""
    question = "\n\n".join(f"Section {i}: " + "why did revenue change? " * 40 for i in range(1, 4))
    request = _Request(({"role": "user", "content": question},), False, None, None, 0.7, False)
    simpler = request.simplified("empty answer", max_prompt_chars=1000, split_parts=5)
    instruction = simpler.messages[-1]["content"]
    assert "200 words" in instruction and "Markdown list" in instruction and "metaphors" in instruction
    assert simpler.temperature == 0.0
    user = simpler.messages[0]["content"]
    assert len(user) <= 1000 and "1. Section 1" in user and "3. Section 3" in user


# --- 001: the resumable executor, the human fallback -------------------------------------------------------


def test_001_financial_report_fails_at_step_3_and_the_second_run_resumes_there(
    write_config: Callable[[str], Path], clock: FakeClock
) -> None:
    """3.2's run: fetch_data and analyze_data complete, generate_report fails ("Report generation timeout",
    a timeout: its retries spent), the task pauses; the second run with the same task id starts at
    generate_report (the first two never run again) and completes, each step reading the earlier results.
    The failure leaves an incident saying what failed, the last completed step and how to resume."""
    write_config("retry: {jitter: none}\n")
    config = load_config()
    ran: list[str] = []
    broken = {"report": True}
    wf = Workflow("financial-report")

    @wf.step
    def fetch_data(ctx: StepContext) -> dict[str, Any]:
        ran.append("fetch_data")
        return {"revenue": 1000000, "profit": 200000}

    @wf.step
    def analyze_data(ctx: StepContext) -> dict[str, Any]:
        ran.append("analyze_data")
        return {"trend": "positive", "growth_rate": 0.15}

    @wf.step
    def generate_report(ctx: StepContext) -> dict[str, Any]:
        ran.append(f"generate_report#{ctx.attempt}")
        if broken["report"]:
            raise TimeoutError("Report generation timeout")
        return {"report": f"Report: Growth rate is {ctx.outputs['analyze_data']['growth_rate'] * 100}%"}

    @wf.step
    def send_email(ctx: StepContext) -> dict[str, Any]:
        ran.append("send_email")
        return {"sent": True, "report": ctx.outputs["generate_report"]["report"]}

    first = wf.run(task="financial-report-2026-q1", config=config, clock=clock)
    assert first.status == "failed"
    assert ran == ["fetch_data", "analyze_data", *(f"generate_report#{n}" for n in (1, 2, 3, 4))]
    assert clock.waits == [0.5, 0.75, 1.125]  # the timeout policy: 3 retries, 0.5 s x1.5
    assert first.incident is not None
    incident = json.loads(Path(first.incident).read_text())
    assert (incident["failed_step"], incident["last_completed_step"]) == ("generate_report", "analyze_data")
    assert incident["error_class"] == "timeout" and "financial-report-2026-q1" in incident["resume_command"]

    ran.clear()
    broken["report"] = False
    second = wf.run(task="financial-report-2026-q1", config=config, clock=clock)
    assert (second.status, second.resumed) == ("completed", True)
    assert ran == ["generate_report#1", "send_email"]  # a run after the fix starts the step afresh
    report = {s.name: s for s in second.steps}["send_email"]
    assert report.outputs["report"] == "Report: Growth rate is 15.0%"


def test_000_model_errors_wait_60_s_and_the_tenacity_example_waits_4_then_8(
    write_config: Callable[[str], Path], clock: FakeClock
) -> None:
    """ "对模型错误使用保守策略(60秒间隔)": a malformed answer (format) and an out-of-memory GPU (resource)
    wait 60 s before their one retry. And generate_with_retry's @retry(stop_after_attempt(3),
    wait_exponential(multiplier=1, min=4, max=60)) is `attempts: 3, base_s: 4, cap_s: 60`: waits 4 s, 8 s."""
    config = load_config()
    for cls in (config.policies.format, config.policies.resource):
        assert (cls.attempts, cls.base_s) == (2, 60.0)
    write_config("retry: {jitter: none}\n")
    malformed = _failing_with(RuntimeError("model returned malformed JSON"))
    with pytest.raises(RuntimeError):
        Retrier(config=load_config(), clock=clock).call(malformed)
    assert clock.waits == [60.0]

    write_config("policies:\n  timeout: {attempts: 3, base_s: 4, multiplier: 2, cap_s: 60, jitter: none}\n")
    clock.waits.clear()
    generate = _failing_with(TimeoutError("Request timed out"))
    with pytest.raises(TimeoutError):
        Retrier(config=load_config(), clock=clock).call(generate)
    assert clock.waits == [4.0, 8.0]


def _failing_with(error: BaseException) -> Callable[[], str]:
    def call() -> str:
        raise error

    return call


# --- 002: the retry executor's callback -------------------------------------------------------------------


def test_002_on_retry_sees_each_attempt_its_error_and_its_wait(
    write_config: Callable[[str], Path], clock: FakeClock
) -> None:
    """execute_with_retry(fn, on_retry=cb): cb(attempt, error, delay) before each wait. on_attempt gets the
    same, for every attempt (the last one with no wait)."""
    write_config("retry: {jitter: none}\n")
    seen: list[tuple[int, str | None, str, float | None]] = []
    call = _rate_limited_then(clock, 2)
    retrier = Retrier(
        config=load_config(),
        clock=clock,
        on_attempt=lambda a: seen.append((a.number, a.error_class, a.reason, a.delay_s)),
    )
    assert retrier.call(call) == "ok"
    assert [(n, cls, delay) for n, cls, _, delay in seen] == [
        (1, "rate_limit", 5.0),
        (2, "rate_limit", 10.0),
        (3, None, None),
    ]
    assert all("429 Too Many Requests" in reason for _, _, reason, _ in seen[:2])


# --- 004: the task tree, from tasks.py ---------------------------------------------------------------------


def _tasks(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return call_script("tasks.py", *args, home=home)


def _record(home: Path, name: str) -> dict[str, Any]:
    store = TaskStore(StateRoot(home), load_config())
    try:
        return store.record(name)
    finally:
        store.close()


def test_004_the_status_column_follows_the_exec_state_and_a_failure_keeps_2000_characters_of_its_error(
    write_config: Callable[[str], Path], home: Path
) -> None:
    """tm.create_task('TC-FLOW-001', display_name='端到端测试', priority='P1'): status pending (NEW); a
    failed run is status failed (ERROR_FIX_PENDING, a business error) with "完整错误详情(2000+字符)" in
    last_error rather than a short summary, and main_logs holds the run's row."""
    write_config("policies:\n  permanent: {attempts: 1}\nfixes: {use_model: false}\n")
    script = "import sys; print('step4 落库失败: ' + 'x' * 3000, file=sys.stderr); sys.exit(2)"
    added = _tasks(
        home, "add", "TC-FLOW-001", "--priority", "P1", "--display-name", "端到端测试", "--", PYTHON, "-c", script
    )
    assert added.returncode == 0, added.stderr
    assert (_record(home, "TC-FLOW-001")["status"], _record(home, "TC-FLOW-001")["exec_state"]) == ("pending", "NEW")
    _tasks(home, "run-next", "--type", "regular")
    task = _record(home, "TC-FLOW-001")
    assert (task["status"], task["exec_state"]) == ("failed", "ERROR_FIX_PENDING")
    assert 2000 <= len(task["last_error"]) <= 2100 and "x" * 1900 in task["last_error"]
    store = TaskStore(StateRoot(home), load_config())
    try:
        query = "SELECT run_status, run_start_time, run_end_time, duration_ms FROM main_logs WHERE task_name = ?"
        rows = store.db.execute(query, ("TC-FLOW-001",)).fetchall()
    finally:
        store.close()
    # One row per run, its start and its end (the document's "running" row and its last row, in one).
    [(status, started, ended, duration_ms)] = rows
    assert status == "failed" and started <= ended and duration_ms >= 0


# --- 001: a circuit breaker per step (execute_step_with_protection) ----------------------------------------


def test_001_a_plan_step_behind_an_open_breaker_is_not_run_and_the_workflow_waits(home: Path, tmp_path: Path) -> None:
    """The engine checks the step's breaker first: "Circuit breaker OPEN for fetch_financial_data", and the
    step never runs. A plan step's `target:` is that breaker (shared with retry_run.py --target and every
    process): open, the run pauses with exit 4 and nothing failed; closed again, the same run resumes."""
    journal = tmp_path / "journal"
    plan = tmp_path / "financial-analysis.yaml"
    plan.write_text(
        "name: financial-analysis\n"
        "steps:\n"
        f"  - {{name: fetch_financial_data, target: finance-db, shell: 'echo fetch >> {journal}'}}\n"
        f"  - {{name: analyze_trends, shell: 'echo analyze >> {journal}'}}\n"
    )
    assert call_script("breakers.py", "trip", "finance-db", "--for", "300", home=home).returncode == 0
    paused = call_script("workflow.py", "run", str(plan), "--task", "financial-analysis-q3-2026", home=home)
    assert paused.returncode == 4 and "finance-db" in paused.stderr
    assert not journal.exists()
    assert call_script("breakers.py", "reset", "finance-db", home=home).returncode == 0
    done = call_script("workflow.py", "run", str(plan), "--task", "financial-analysis-q3-2026", home=home)
    assert done.returncode == 0, done.stderr
    assert journal.read_text().split() == ["fetch", "analyze"]


def test_001_a_python_step_with_a_target_opens_its_breaker_after_5_failures(
    write_config: Callable[[str], Path], clock: FakeClock
) -> None:
    """CircuitBreaker(failure_threshold=5): a step whose calls to its service keep failing opens that
    service's breaker; the next run does not call it at all (paused, not failed)."""
    write_config("retry: {jitter: none}\npolicies:\n  transient: {retries: 4}\n")
    config = load_config()
    calls: list[int] = []
    wf = Workflow("financial-analysis")

    @wf.step(target="llm-api")
    def analyze_trends(ctx: StepContext) -> None:
        calls.append(ctx.attempt)
        raise ConnectionResetError(104, "Connection reset by peer")

    first = wf.run(task="financial-analysis-q3-2026", config=config, clock=clock)
    assert first.status == "failed" and len(calls) == 5
    again = wf.run(task="financial-analysis-q3-2026", config=config, clock=clock)
    assert again.status == "not_attempted" and len(calls) == 5
    assert "llm-api" in again.message


def test_a_bad_step_target_is_refused_naming_the_step_and_key(home: Path, tmp_path: Path) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text("steps:\n  - {name: fetch, target: '../db', run: ['true']}\n")
    refused = call_script("workflow.py", "run", str(plan), home=home)
    assert refused.returncode == 2 and "steps[0].target" in refused.stderr and "fetch" in refused.stderr


# --- the table itself ----------------------------------------------------------------------------------------

_STATUSES = ("works", "partial", "missing", "different by design", "different and unacceptable")


def test_the_replay_tables_counts_match_its_rows_and_every_cited_test_exists() -> None:
    """docs/source-documents.md's summary is the count of its rows' statuses, per document, and each test a
    row names as evidence exists, so a "works" cannot point at nothing."""
    text = (ROOT / "docs" / "source-documents.md").read_text(encoding="utf-8")
    replay = text[text.index("## The replay") :]
    counted: dict[str, list[int]] = {}
    for doc, status, evidence in re.findall(r"^\| (\d{3})-\d+ \| .*? \| (.*?) \| (.*?) \|$", replay, re.MULTILINE):
        kind = next(k for k in sorted(_STATUSES, key=len, reverse=True) if status.startswith(k))
        counted.setdefault(doc, [0] * len(_STATUSES))[_STATUSES.index(kind)] += 1
        cited = re.findall(r"`([\w/]+\.py)::(\w+)`", evidence)
        assert cited or kind in ("missing", "partial"), f"{doc}: a row that {kind} names no test"
        for file, name in cited:
            source = (ROOT / "tests" / file).read_text(encoding="utf-8")
            assert re.search(rf"^(async )?def {name}\(", source, re.MULTILINE), f"{file}::{name} does not exist"
    summary = {
        doc: [int(n.strip("*")) for n in numbers.split(" | ")]
        for doc, numbers in re.findall(r"^\| (\d{3}) \(.*?\) \| ([\d |*]+) \|$", replay, re.MULTILINE)
    }
    assert set(summary) == set(counted) == {"000", "001", "002", "003", "004"}
    for doc, numbers in summary.items():
        assert numbers == [*counted[doc], sum(counted[doc])], doc
    total = re.search(r"^\| \*\*total\*\* \| ([\d |*]+) \|$", replay, re.MULTILINE)
    assert total is not None
    columns = [sum(c[i] for c in counted.values()) for i in range(len(_STATUSES))]
    assert [int(n.strip("*")) for n in total.group(1).split(" | ")] == [*columns, sum(columns)]
