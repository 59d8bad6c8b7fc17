"""The retry ledger and the human log: exact line format, every field, rotation, masking, and many writers at once."""

from __future__ import annotations

import errno
import json
import os
import re
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import PYTHON, SCRIPTS
from selfheal.core import ledger as ledger_mod
from selfheal.core.config import Config, load_config
from selfheal.core.ledger import FIELDS, Ledger, format_log_line, iter_events, ledger_files
from selfheal.state.root import StateRoot
from selfheal.testing import FakeClock

HELPERS = Path(__file__).resolve().parent / "helpers"
# 2026-06-10T03:12:18Z, the moment of the source documents' example lines.
DOC_TIME = 1_781_061_138.0


def event(**fields: Any) -> dict[str, Any]:
    """An event as record() builds it: every field present, null unless given."""
    full: dict[str, Any] = dict.fromkeys(FIELDS)
    full.update(fields)
    return full


def ledger_lines(state: StateRoot) -> list[str]:
    return [line for f in ledger_files(state) for line in f.read_text(encoding="utf-8").splitlines()]


def log_lines(state: StateRoot) -> list[str]:
    return state.log_file.read_text(encoding="utf-8").splitlines()


@pytest.fixture
def doc_clock() -> FakeClock:
    return FakeClock(wall=DOC_TIME)


@pytest.fixture
def ledger(state: StateRoot, config: Config, doc_clock: FakeClock) -> Ledger:
    return Ledger(state, config, clock=doc_clock)


# -- the log line format ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (
            {
                "event": "retry",
                "task": "doc-gen-587",
                "model": "Qwen3-4B",
                "error_class": "timeout",
                "attempt": 1,
                "max_attempts": 3,
                "delay_s": 5.0,
            },
            "2026-06-10T03:12:18Z [RETRY] task=doc-gen-587 model=Qwen3-4B reason=timeout attempt=1/3 delay=5s",
        ),
        (
            {"event": "success", "task": "doc-gen-587", "attempt": 1, "duration_s": 47.2, "tokens": 1428},
            "2026-06-10T03:12:18Z [SUCCESS] task=doc-gen-587 duration=47.2s tokens=1428",
        ),
        (
            {
                "event": "failed",
                "task": "doc-gen-588",
                "error_class": "auth",
                "status": "not_retryable",
                "attempt": 1,
                "max_attempts": 1,
            },
            "2026-06-10T03:12:18Z [FAILED] task=doc-gen-588 reason=auth attempts=1",
        ),
    ],
    ids=["retry", "success", "failed"],
)
def test_log_lines_match_the_source_documents(fields: dict[str, Any], expected: str) -> None:
    """Retry, success and failure lines read exactly like the source documents' examples."""
    assert format_log_line(event(ts="2026-06-10T03:12:18.123Z", **fields)) == expected


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("model", "Qwen3 4B", 'model="Qwen3 4B"'),
        ("target", "a=b", 'target="a=b"'),
        ("step", 'say "hi"', 'step="say \\"hi\\""'),
        ("model", "two\nlines", 'model="two\\nlines"'),
        ("target", "tab\there", 'target="tab\\there"'),
    ],
    ids=["space", "equals", "quote", "newline", "tab"],
)
def test_log_values_that_would_break_the_format_are_quoted(key: str, value: str, expected: str) -> None:
    """A value with spaces, '=', quotes or newlines is JSON-quoted, so the line stays one parseable line."""
    line = format_log_line(event(ts="2026-06-10T03:12:18.123Z", event="retry", task="t", **{key: value}))
    assert expected in line.split(" [RETRY] ", 1)[1]
    assert "\n" not in line


def test_grep_recipe_of_the_source_documents_finds_the_failure_classes(ledger: Ledger, state: StateRoot) -> None:
    """`grep -E "\\[RETRY\\]|\\[FAILED\\]"` on the log plus `reason=(\\w+)` lists each failure's class."""
    ledger.record("retry", task="doc-gen-587", error_class="timeout", attempt=1, max_attempts=3, delay_s=5.0)
    ledger.record("success", task="doc-gen-587", attempt=2, duration_s=47.2, tokens=1428)
    ledger.record("failed", task="doc-gen-588", error_class="auth", status="not_retryable", attempt=1)
    out = subprocess.run(
        ["grep", "-E", r"\[RETRY\]|\[FAILED\]", str(state.log_file)], capture_output=True, text=True, check=True
    ).stdout
    assert len(out.splitlines()) == 2
    assert re.findall(r"reason=(\w+)", out) == ["timeout", "auth"]


# -- what record() writes -----------------------------------------------------------------------------------------


def test_record_writes_one_json_line_with_every_field(ledger: Ledger, state: StateRoot) -> None:
    """One event is one ledger line holding every DESIGN field in order, null where it does not apply."""
    ledger.record(
        "retry", task="doc-gen-587", model="Qwen3-4B", error_class="timeout", attempt=1, max_attempts=3, delay_s=5.0
    )
    (line,) = ledger_lines(state)
    written = json.loads(line)
    assert list(written) == list(FIELDS)
    assert written == {
        "ts": "2026-06-10T03:12:18.000Z",
        "event": "retry",
        "task": "doc-gen-587",
        "step": None,
        "target": None,
        "model": "Qwen3-4B",
        "attempt": 1,
        "max_attempts": 3,
        "error_class": "timeout",
        "reason": None,
        "status": None,
        "exit_code": None,
        "delay_s": 5.0,
        "duration_s": None,
        "tokens": None,
        "pid": os.getpid(),
        "host": socket.gethostname(),
    }


def test_record_writes_the_documented_log_line(ledger: Ledger, state: StateRoot) -> None:
    """The same event appears in logs/selfheal.log as the source documents' RETRY line."""
    ledger.record(
        "retry", task="doc-gen-587", model="Qwen3-4B", error_class="timeout", attempt=1, max_attempts=3, delay_s=5.0
    )
    assert log_lines(state) == [
        "2026-06-10T03:12:18Z [RETRY] task=doc-gen-587 model=Qwen3-4B reason=timeout attempt=1/3 delay=5s"
    ]


def test_half_an_emoji_in_an_event_is_written_as_a_replacement_character(ledger: Ledger, state: StateRoot) -> None:
    """A lone surrogate (an error text JavaScript cut mid-emoji, a file name of another encoding) is not UTF-8:
    the event is still written, to the ledger and the log, with U+FFFD in its place; nothing raises."""
    written = ledger.record("failed", task="doc-gen-587", reason="ValueError: cut \ud83d here", error_class="permanent")
    assert written["reason"] == "ValueError: cut \ufffd here"
    assert json.loads(ledger_lines(state)[0])["reason"] == "ValueError: cut \ufffd here"
    assert log_lines(state) == ["2026-06-10T03:12:18Z [FAILED] task=doc-gen-587 reason=permanent"]
    assert ledger.write_errors == 0


@pytest.fixture
def far_east_timezone() -> Iterator[None]:
    """Local time 14 hours ahead of UTC, so a local-date file name would show."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TZ", "XXX-14")
        time.tzset()
        yield
    time.tzset()


@pytest.mark.usefixtures("far_east_timezone")
def test_ledger_file_is_named_by_the_utc_day(state: StateRoot, config: Config) -> None:
    """An event at 23:30 UTC goes to that UTC day's file, whatever the local timezone says."""
    late = 1_781_134_200.0  # 2026-06-10T23:30:00Z, 2026-06-11 13:30 local
    Ledger(state, config, clock=FakeClock(wall=late)).record("retry", task="t")
    assert [p.name for p in ledger_files(state)] == ["2026-06-10.jsonl"]
    assert json.loads(ledger_lines(state)[0])["ts"] == "2026-06-10T23:30:00.000Z"


def _day_files(state: StateRoot, *days: str) -> None:
    folder = state.root / "ledger"
    folder.mkdir(parents=True, exist_ok=True)
    for day in days:
        (folder / f"{day}.jsonl").write_text('{"event":"retry"}\n')


def test_the_first_event_of_a_day_deletes_days_past_keeping(
    state: StateRoot, write_config: Callable[[str], Path]
) -> None:
    """ledger.keep_days: 30 keeps today and the 30 days before it; older day files go, other files stay."""
    write_config("ledger: {keep_days: 30}\n")
    _day_files(state, "2026-04-01", "2026-05-10", "2026-05-11", "2026-06-09")
    (state.root / "ledger" / "notes.txt").write_text("mine")
    clock = FakeClock(wall=1_781_092_800.0)  # 2026-06-10T12:00:00Z
    ledger = Ledger(state, load_config(), clock=clock)
    ledger.record("retry", task="t")
    names = sorted(p.name for p in (state.root / "ledger").iterdir())
    assert names == ["2026-05-11.jsonl", "2026-06-09.jsonl", "2026-06-10.jsonl", "notes.txt"]
    # Later the same day nothing is listed again: a file that appears now stays until the next day starts.
    _day_files(state, "2026-01-01")
    clock.advance(3600)
    ledger.record("retry", task="t")
    Ledger(state, load_config(), clock=clock).record("retry", task="t")  # another process, same day
    assert (state.root / "ledger" / "2026-01-01.jsonl").exists()
    clock.advance(86_400)  # the next day's first event: 2026-05-11 is now past keeping too
    ledger.record("retry", task="t")
    names = sorted(p.name for p in ledger_files(state))
    assert names == ["2026-06-09.jsonl", "2026-06-10.jsonl", "2026-06-11.jsonl"]


def test_an_old_day_that_cannot_be_deleted_costs_no_event(
    state: StateRoot, write_config: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Retention is housekeeping: when deleting fails, the event is still written and the old file stays."""
    write_config("ledger: {keep_days: 1}\n")
    _day_files(state, "2026-01-01")

    def refuse(path: Path) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(ledger_mod, "unlink", refuse)
    ledger = Ledger(state, load_config(), clock=FakeClock(wall=1_781_092_800.0))
    ledger.record("retry", task="t", reason="kept")
    assert ledger.write_errors == 0
    assert json.loads(ledger_lines(state)[-1])["reason"] == "kept"
    assert (state.root / "ledger" / "2026-01-01.jsonl").exists()


def test_keep_days_0_keeps_every_day(state: StateRoot, write_config: Callable[[str], Path]) -> None:
    write_config("ledger: {keep_days: 0}\n")
    _day_files(state, "2001-01-01")
    Ledger(state, load_config(), clock=FakeClock(wall=1_781_092_800.0)).record("retry", task="t")
    assert [p.name for p in ledger_files(state)] == ["2001-01-01.jsonl", "2026-06-10.jsonl"]


@pytest.mark.parametrize(("length", "cut"), [(40, False), (41, True), (5000, True)])
def test_long_reasons_are_cut_to_the_limit(
    length: int, cut: bool, state: StateRoot, doc_clock: FakeClock, write_config: Callable[[str], Path]
) -> None:
    """A reason longer than ledger.reason_max_chars is cut to that length, ending in an ellipsis."""
    write_config("ledger: {reason_max_chars: 40}\n")
    reason = "r" * length
    Ledger(state, load_config(), clock=doc_clock).record("failed", task="t", reason=reason)
    written = json.loads(ledger_lines(state)[0])["reason"]
    assert written == ("r" * 39 + "…" if cut else reason)


SECRET_CASES = [
    ("local-key-1234567890", "auth failed with key local-key-1234567890"),
    ("sk-proj-ABCDEFGHIJKLMNOPQRSTUV", "invalid key sk-proj-ABCDEFGHIJKLMNOPQRSTUV"),
    ("eyJhbGciOiJIUzI1NiJ9.payload", "sent Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.payload"),
    ("hunter2secret", "POST https://bob:hunter2secret@example.com/v1 refused"),
]


@pytest.mark.parametrize(("secret", "text"), SECRET_CASES, ids=["env-key", "sk-key", "bearer", "url-password"])
def test_secrets_never_reach_the_ledger_or_the_log(
    secret: str, text: str, state: StateRoot, config: Config, doc_clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A secret in an event's reason, target or extra fields is masked in both the ledger and the log."""
    monkeypatch.setenv("OPENAI_API_KEY", "local-key-1234567890")
    ledger = Ledger(state, config, clock=doc_clock)
    ledger.record("retry", task="t", reason=text, target=text, detail=text, context={"headers": [text]})
    ledger_text = "\n".join(ledger_lines(state))
    log_text = state.log_file.read_text(encoding="utf-8")
    assert secret not in ledger_text and secret not in log_text
    assert "***" in ledger_text and "***" in log_text


@pytest.mark.parametrize(
    ("secret", "reason"),
    [
        ("Zq8wPn3kLm5tRv7y", "r" * 30 + " Zq8wPn3kLm5tRv7y"),
        ("ABCDEFGHIJKLMNOPQRSTUV", "r" * 20 + " sk-proj-ABCDEFGHIJKLMNOPQRSTUV"),
    ],
    ids=["env-value", "sk-key"],
)
def test_a_secret_cut_by_the_reason_limit_does_not_leak_in_part(
    secret: str,
    reason: str,
    state: StateRoot,
    doc_clock: FakeClock,
    write_config: Callable[[str], Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A secret straddling reason_max_chars is masked, not cut into a shorter piece the masks no longer match."""
    write_config("ledger: {reason_max_chars: 40}\n")
    monkeypatch.setenv("MY_SERVICE_TOKEN", "Zq8wPn3kLm5tRv7y")
    Ledger(state, load_config(), clock=doc_clock).record("failed", task="t", reason=reason)
    written = json.loads(ledger_lines(state)[0])["reason"]
    assert secret[:6] not in written


# -- rotation -------------------------------------------------------------------------------------------------------


@pytest.fixture
def small_log(write_config: Callable[[str], Path]) -> Config:
    write_config("log: {max_bytes: 4096, backups: 2}\n")
    return load_config()


def rotated(state: StateRoot) -> list[str]:
    return sorted(p.name for p in state.log_file.parent.iterdir() if re.fullmatch(r"selfheal\.log\.\d+", p.name))


def seqs(state: StateRoot) -> list[int]:
    """The seq= numbers in the log files, oldest backup first."""
    names = [*reversed(rotated(state)), "selfheal.log"]
    text = "".join((state.log_file.parent / n).read_text(encoding="utf-8") for n in names)
    return [int(m) for m in re.findall(r" seq=(\d+)$", text, flags=re.MULTILINE)]


def test_log_rotation_keeps_at_most_the_configured_backups(
    small_log: Config, state: StateRoot, doc_clock: FakeClock
) -> None:
    """Past log.max_bytes the log rotates to selfheal.log.1, .2, and never keeps more than log.backups."""
    ledger = Ledger(state, small_log, clock=doc_clock)
    for seq in range(600):  # about 12 files' worth
        ledger.record("retry", task="t", error_class="timeout", attempt=1, max_attempts=3, delay_s=5.0, seq=seq)
    assert rotated(state) == ["selfheal.log.1", "selfheal.log.2"]
    assert all((state.log_file.parent / n).stat().st_size >= 4096 for n in rotated(state))


def test_rotation_loses_no_line_while_the_backups_last(
    small_log: Config, state: StateRoot, doc_clock: FakeClock
) -> None:
    """Up to log.backups rotations, every line is still in the current file or a backup, once, in order."""
    ledger = Ledger(state, small_log, clock=doc_clock)
    seq = 0
    while not (state.log_file.parent / "selfheal.log.2").exists():
        ledger.record("retry", task="t", error_class="timeout", attempt=1, max_attempts=3, delay_s=5.0, seq=seq)
        seq += 1
        assert seq < 10_000, "the log never rotated twice"
    assert seqs(state) == list(range(seq))


def test_rotation_drops_only_the_oldest_lines(small_log: Config, state: StateRoot, doc_clock: FakeClock) -> None:
    """After many rotations the kept files hold the newest lines without a gap."""
    ledger = Ledger(state, small_log, clock=doc_clock)
    total = 600
    for seq in range(total):
        ledger.record("retry", task="t", error_class="timeout", attempt=1, max_attempts=3, delay_s=5.0, seq=seq)
    kept = seqs(state)
    assert kept == list(range(total - len(kept), total))
    assert len(kept) > 100  # three files of ~4 KB each


def test_rotation_leaves_the_ledger_whole(small_log: Config, state: StateRoot, doc_clock: FakeClock) -> None:
    """Log rotation never touches the ledger: every event stays there."""
    ledger = Ledger(state, small_log, clock=doc_clock)
    for seq in range(300):
        ledger.record("retry", task="t", seq=seq)
    assert [json.loads(line)["seq"] for line in ledger_lines(state)] == list(range(300))


# -- write errors ----------------------------------------------------------------------------------------------------


def _ledger_folder_is_a_file(state: StateRoot, monkeypatch: pytest.MonkeyPatch) -> None:
    state.ensure()
    state.sub("ledger").rmdir()
    state.sub("ledger").write_text("not a folder")


def _disk_full_on_append(state: StateRoot, monkeypatch: pytest.MonkeyPatch) -> None:
    state.ensure()

    def append_line(path: Path, line: bytes, *, redacted: bool = False) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ledger_mod, "append_line", append_line)


def _disk_full_creating_folders(state: StateRoot, monkeypatch: pytest.MonkeyPatch) -> None:
    # A fresh state root on a full disk: the ledger folder cannot be created.
    def mkdir(path: object, *args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "mkdir", mkdir)


@pytest.mark.parametrize(
    "break_it",
    [_ledger_folder_is_a_file, _disk_full_on_append, _disk_full_creating_folders],
    ids=["ledger-folder-is-a-file", "disk-full-on-append", "disk-full-creating-folders"],
)
def test_write_errors_are_counted_not_raised(
    break_it: Callable[[StateRoot, pytest.MonkeyPatch], None],
    home: Path,
    config: Config,
    doc_clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A ledger that cannot be written never breaks the caller's run: record() returns, counts and logs it."""
    state = StateRoot(home)
    break_it(state, monkeypatch)
    ledger = Ledger(state, config, clock=doc_clock)
    written = ledger.record("retry", task="t", error_class="timeout")
    assert written["event"] == "retry"
    assert ledger.write_errors == 1
    assert "could not record the ledger" in caplog.text


# -- reading events back --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [b"garbage", b'{"event": "retry", "ta', b"[1, 2]", b'"text"', b"42", b"null", b"", b"\xff\xfe\x00garbage"],
    ids=["garbage", "truncated", "array", "string", "number", "null", "empty", "binary"],
)
def test_iter_events_yields_none_for_a_malformed_line(bad: bytes, tmp_path: Path) -> None:
    """A line that is not a JSON object reads as None in its place; the good lines around it still read."""
    path = tmp_path / "2026-06-10.jsonl"
    path.write_bytes(b'{"event": "retry", "seq": 1}\n' + bad + b'\n{"event": "success", "seq": 2}\n')
    assert list(iter_events([path])) == [{"event": "retry", "seq": 1}, None, {"event": "success", "seq": 2}]


def test_iter_events_reads_files_in_order_and_skips_missing_ones(tmp_path: Path) -> None:
    """Events come file by file in the order given; a file that has gone away is skipped."""
    first, second = tmp_path / "2026-06-09.jsonl", tmp_path / "2026-06-10.jsonl"
    first.write_text('{"seq": 1}\n{"seq": 2}\n')
    second.write_text('{"seq": 3}\n')
    assert list(iter_events([first, tmp_path / "gone.jsonl", second])) == [{"seq": 1}, {"seq": 2}, {"seq": 3}]


def test_ledger_files_lists_only_day_files_in_date_order(state: StateRoot) -> None:
    """Only YYYY-MM-DD.jsonl files count as ledger files, oldest first; quarantined or stray files do not."""
    folder = state.sub("ledger")
    for name in ("2026-06-10.jsonl", "2026-06-09.jsonl", "notes.txt", "2026-06-10.jsonl.corrupt-20260610T031218Z"):
        (folder / name).write_text("")
    assert [p.name for p in ledger_files(state)] == ["2026-06-09.jsonl", "2026-06-10.jsonl"]


# -- many writers at once ---------------------------------------------------------------------------------------------

WRITERS, EVENTS_EACH = 8, 2000
LOG_LINE = re.compile(
    r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z \[RETRY\] task=w(\d) reason=transient attempt=1/3 delay=1s"
    r" writer=(\d) seq=(\d+)"
)


@pytest.fixture(scope="module")
def concurrent_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A state root that 8 real processes filled with 2,000 events each, all started at the same moment."""
    base = tmp_path_factory.mktemp("concurrent")
    home, go = base / "state", base / "go"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(SCRIPTS), "SELFHEAL_HOME": str(home)}
    children = [
        subprocess.Popen(
            [PYTHON, str(HELPERS / "ledger_writer.py"), str(w), str(EVENTS_EACH), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        for w in range(WRITERS)
    ]
    try:
        for child in children:
            assert child.stdout is not None
            assert child.stdout.readline() == b"ready\n", "a writer failed to start"
        go.touch()
        failures = []
        for w, child in enumerate(children):
            _, err = child.communicate(timeout=120)
            if child.returncode != 0:
                failures.append(f"writer {w} exited {child.returncode}: {err.decode(errors='replace')[-500:]}")
        assert failures == []
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    return home


@pytest.mark.slow
def test_concurrent_writers_lose_and_tear_no_ledger_line(concurrent_home: Path) -> None:
    """8 processes recording 2,000 events each leave exactly 16,000 whole JSON lines, each event once."""
    lines = ledger_lines(StateRoot(concurrent_home))
    events = [json.loads(line) for line in lines]
    assert len(events) == WRITERS * EVENTS_EACH
    counts = Counter((e["writer"], e["seq"]) for e in events)
    assert set(counts) == {(w, s) for w in range(WRITERS) for s in range(EVENTS_EACH)}
    assert max(counts.values()) == 1


@pytest.mark.slow
def test_concurrent_writers_lose_and_tear_no_log_line(concurrent_home: Path) -> None:
    """The log of the same run has 16,000 lines, each in the documented format, each event once."""
    lines = log_lines(StateRoot(concurrent_home))
    assert len(lines) == WRITERS * EVENTS_EACH
    bad = [line for line in lines if not LOG_LINE.fullmatch(line)]
    assert bad == []
    pairs = Counter((m[2], m[3]) for m in map(LOG_LINE.fullmatch, lines) if m)
    assert len(pairs) == WRITERS * EVENTS_EACH
