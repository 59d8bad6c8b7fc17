"""Conversation snapshots: what is kept, what is refused, corruption, listing, interruption, the script, processes."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import SCRIPTS, call_script, script_env
from selfheal.durable import snapshot
from selfheal.errors import CorruptStateError, InvalidIdError, LockBusy, UsageError
from selfheal.state import root as store
from selfheal.state.root import StateRoot
from selfheal.testing import FakeClock


def chat(n: int, tag: str = "m") -> list[dict[str, Any]]:
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": f"{tag}{i}"} for i in range(n)]


# -- saving and restoring -----------------------------------------------------------------------------------------


def test_save_keeps_the_last_n_messages_and_counts_them_all(state: StateRoot, clock: FakeClock) -> None:
    """A long conversation keeps its last `keep` messages; message_count still says how long it was."""
    snapshot.save("s1", chat(250), keep=30, clock=clock, root=state)
    restored = snapshot.restore("s1", root=state)
    assert restored is not None
    assert restored.messages == chat(250)[-30:]
    assert restored.message_count == 250 and restored.saved == clock.time() and not restored.interrupted


@pytest.mark.parametrize(("keep", "kept"), [(None, 100), (0, 0), (500, 250)])
def test_keep_defaults_to_100_and_0_keeps_none(state: StateRoot, keep: int | None, kept: int) -> None:
    """Without `keep` the last 100 are kept; keep=0 keeps no messages (not all of them); a large keep keeps all."""
    saved = snapshot.save("s1", chat(250), keep=keep, root=state)
    assert len(saved.messages) == kept and saved.messages == chat(250)[250 - kept :]


def test_state_and_rich_messages_round_trip(state: StateRoot) -> None:
    """State, list contents and tool-call messages with null content come back exactly as saved."""
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": [{"type": "text", "text": "你好"}]},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "function": {"name": "f"}}]},
    ]
    extra = {"model": "qwen3-4b", "step": 3, "plan": ["a", "b"], "nested": {"ok": True, "none": None}}
    snapshot.save("s1", messages, state=extra, root=state)
    restored = snapshot.restore("s1", root=state)
    assert restored is not None and restored.messages == messages and restored.state == extra


@pytest.mark.parametrize(
    ("messages", "where"),
    [
        ({"role": "user", "content": "x"}, "messages must be a list"),
        ([{"role": "user", "content": "x"}, "hello"], r"messages\[1\] must be an object"),
        ([{"content": "x"}], r"messages\[0\]\['role'\]"),
        ([{"role": "user", "content": "ok"}, {"role": "user"}], r"messages\[1\]\['content'\]"),
        ([{"role": "user", "content": 42}], r"messages\[0\]\['content'\]"),
        ([{"role": "user", "content": "x", "meta": {1, 2}}], r"messages\[0\]\['meta'\]"),
    ],
)
def test_bad_messages_are_refused_by_index_and_key(state: StateRoot, messages: Any, where: str) -> None:
    """A malformed message is refused with its index and key, and nothing is written."""
    with pytest.raises(UsageError, match=where):
        snapshot.save("s1", messages, root=state)
    assert snapshot.restore("s1", root=state) is None


@pytest.mark.parametrize(
    ("extra", "where"),
    [
        ({"model": "q", "when": object()}, r"state\['when'\]"),
        ({"loss": math.nan}, r"state\['loss'\]"),
        ({1: "x"}, "not a string: 1"),
        (["not", "a", "dict"], "state must be a JSON object"),
    ],
)
def test_state_that_is_not_json_is_refused_by_key(state: StateRoot, extra: Any, where: str) -> None:
    """State that JSON cannot hold is refused naming the key, instead of being silently turned into text."""
    with pytest.raises(UsageError, match=where):
        snapshot.save("s1", chat(2), state=extra, root=state)


@pytest.mark.parametrize(
    "call",
    [
        lambda root: snapshot.save("../x", chat(1), root=root),
        lambda root: snapshot.restore("a/b", root=root),
        lambda root: snapshot.mark_interrupted(".hidden", root=root),
        lambda root: snapshot.delete("", root=root),
    ],
)
def test_unsafe_session_ids_are_refused(state: StateRoot, call: Callable[[StateRoot], object]) -> None:
    """A session id is a file name: ../x, a/b, .hidden and empty ids are refused before any file is touched."""
    with pytest.raises(InvalidIdError, match="invalid session id"):
        call(state)
    assert not (state.root / "x.json").exists()


def test_restore_of_a_session_never_saved_is_none(state: StateRoot) -> None:
    """Restoring a session that was never saved gives None, not an error."""
    assert snapshot.restore("never", root=state) is None


@pytest.mark.parametrize("raw", ['{"saved": 17', '{"saved_at": 1, "messages": []}', "[]"])
def test_a_corrupt_snapshot_is_moved_aside_and_reported(state: StateRoot, raw: str) -> None:
    """Truncated JSON or a file that is not a snapshot raises CorruptStateError and is kept as .corrupt-*."""
    path = state.sub("sessions") / "s1.json"
    path.write_text(raw)
    with pytest.raises(CorruptStateError) as info:
        snapshot.restore("s1", root=state)
    assert info.value.quarantined_to is not None and info.value.quarantined_to.read_text() == raw
    assert not path.exists() and [p.name.split(".corrupt-")[0] for p in path.parent.iterdir()] == ["s1.json"]


def test_snapshot_files_are_private(state: StateRoot) -> None:
    """Conversations can hold secrets: snapshot files are readable by their owner only (0600)."""
    snapshot.save("s1", chat(3), root=state)
    snapshot.mark_interrupted("s1", root=state)
    assert (state.sub("sessions") / "s1.json").stat().st_mode & 0o777 == 0o600


def test_delete_forgets_a_session(state: StateRoot) -> None:
    """After delete, restore finds nothing and a second delete reports there was nothing to delete."""
    snapshot.save("s1", chat(3), root=state)
    assert snapshot.delete("s1", root=state) is True
    assert snapshot.restore("s1", root=state) is None
    assert snapshot.delete("s1", root=state) is False


# -- interruption and listing -------------------------------------------------------------------------------------


def test_list_is_newest_first_with_ages_from_the_clock(state: StateRoot, clock: FakeClock) -> None:
    """An interruption counts from when it was marked, a live session from its last save; newest comes first."""
    start = clock.time()
    snapshot.save("old", chat(4), clock=clock, root=state)
    clock.advance(60)
    snapshot.save("live", chat(6), clock=clock, root=state)
    clock.advance(30)
    snapshot.mark_interrupted("old", reason="OOM", clock=clock, root=state)
    clock.advance(10)
    listed = snapshot.list_snapshots(clock=clock, root=state)
    assert [(i.session_id, i.age_s, i.message_count) for i in listed] == [("old", 10.0, 4), ("live", 40.0, 6)]
    old = listed[0]
    assert old.interrupted and old.interrupted_at == start + 90 and old.saved == start and old.reason == "OOM"
    assert listed.skipped == []


def test_interrupted_only_lists_just_the_interrupted(state: StateRoot, clock: FakeClock) -> None:
    """With interrupted_only, sessions that are still live are left out."""
    for name in ("a", "b", "c"):
        snapshot.save(name, chat(2), clock=clock, root=state)
    snapshot.mark_interrupted("b", clock=clock, root=state)
    assert [i.session_id for i in snapshot.list_snapshots(interrupted_only=True, clock=clock, root=state)] == ["b"]


def test_saving_again_makes_an_interrupted_session_live(state: StateRoot, clock: FakeClock) -> None:
    """A session saved after it was marked interrupted is live again, its reason gone."""
    snapshot.save("s1", chat(2), clock=clock, root=state)
    snapshot.mark_interrupted("s1", reason="crash", clock=clock, root=state)
    clock.advance(5)
    again = snapshot.save("s1", chat(3), clock=clock, root=state)
    assert (again.interrupted, again.interrupted_at, again.reason) == (False, None, "")
    assert snapshot.list_snapshots(interrupted_only=True, clock=clock, root=state) == []


def test_saving_with_interrupted_keeps_the_first_mark(state: StateRoot, clock: FakeClock) -> None:
    """save(interrupted=True) keeps an earlier interruption's time and reason, or marks it now if there was none."""
    snapshot.save("s1", chat(2), clock=clock, root=state)
    marked = snapshot.mark_interrupted("s1", reason="crash", clock=clock, root=state)
    clock.advance(5)
    kept = snapshot.save("s1", chat(3), interrupted=True, clock=clock, root=state)
    assert (kept.interrupted, kept.interrupted_at, kept.reason) == (True, marked.interrupted_at, "crash")
    fresh = snapshot.save("s2", chat(3), interrupted=True, clock=clock, root=state)
    assert (fresh.interrupted, fresh.interrupted_at, fresh.reason) == (True, clock.time(), "")


def test_marking_a_session_never_saved_is_refused(state: StateRoot) -> None:
    """mark_interrupted on an unknown session raises a UsageError naming it, and creates no file."""
    with pytest.raises(UsageError, match="no snapshot for session 'ghost'"):
        snapshot.mark_interrupted("ghost", root=state)
    assert not (state.sub("sessions") / "ghost.json").exists()


def test_list_skips_unreadable_files_and_counts_them(state: StateRoot, clock: FakeClock) -> None:
    """One corrupt snapshot does not hide the others: it is skipped, named in `skipped`, and moved aside."""
    snapshot.save("good", chat(2), clock=clock, root=state)
    (state.sub("sessions") / "bad.json").write_text("{")
    (state.sub("sessions") / "folder.json").mkdir()
    listed = snapshot.list_snapshots(clock=clock, root=state)
    assert [i.session_id for i in listed] == ["good"]
    assert len(listed.skipped) == 2 and "bad.json" in listed.skipped[0] and "folder.json" in listed.skipped[1]
    assert list(state.sub("sessions").glob("bad.json.corrupt-*"))


def test_reads_and_writes_happen_under_the_session_lock(state: StateRoot, monkeypatch: pytest.MonkeyPatch) -> None:
    """mark_interrupted reads and writes while holding the session's lock, so no concurrent save is lost."""
    snapshot.save("s1", chat(2), root=state)
    lock = state.lock_file("session", "s1")
    seen: list[tuple[str, bool]] = []

    def held() -> bool:
        try:
            with store.file_lock(lock, timeout=0):
                return False
        except LockBusy:
            return True

    def spy(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            seen.append((name, held()))
            return real(*args, **kwargs)

        return call

    monkeypatch.setattr(snapshot, "read_json", spy("read", store.read_json))
    monkeypatch.setattr(snapshot, "write_json", spy("write", store.write_json))
    snapshot.mark_interrupted("s1", root=state)
    snapshot.save("s1", chat(2), root=state)
    assert seen == [("read", True), ("write", True), ("write", True)]


# -- the script ---------------------------------------------------------------------------------------------------


def run(home: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return call_script("snapshot.py", *args, home=home, stdin=stdin)


def one_object(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, f"stdout must hold exactly one JSON object, got: {proc.stdout!r}"
    obj = json.loads(lines[0])
    assert isinstance(obj, dict)
    return obj


def test_script_saves_from_a_file_and_stdin_and_restores_the_same(home: Path, tmp_path: Path) -> None:
    """snapshot.py save reads messages from a file or stdin; restore prints them and the state back."""
    (tmp_path / "m.json").write_text(json.dumps(chat(5)))
    (tmp_path / "s.json").write_text(json.dumps({"model": "qwen3-4b"}))
    files = ["--messages-file", str(tmp_path / "m.json"), "--state-file", str(tmp_path / "s.json")]
    saved = run(home, "save", "from-file", *files, "--keep", "3")
    assert saved.returncode == 0, saved.stderr
    assert run(home, "save", "from-stdin", "--messages-file", "-", stdin=json.dumps(chat(2, "x"))).returncode == 0
    from_file = json.loads(run(home, "restore", "from-file").stdout)
    assert from_file["messages"] == chat(5)[-3:] and from_file["state"] == {"model": "qwen3-4b"}
    assert from_file["message_count"] == 5
    assert json.loads(run(home, "restore", "from-stdin").stdout)["messages"] == chat(2, "x")


@pytest.mark.parametrize(
    ("messages", "state", "words"),
    [
        ({"role": "user", "content": "x"}, None, "m.json: messages must be a list"),
        ([{"role": 1, "content": "x"}], None, "m.json: messages[0]['role'] must be a string"),
        ([], ["not", "an", "object"], "s.json: state must be a JSON object"),
    ],
)
def test_script_names_the_file_whose_content_has_the_wrong_shape(
    home: Path, tmp_path: Path, messages: object, state: object, words: str
) -> None:
    """A shape error in what `save` read names the file it came from, exit 2, and nothing is saved."""
    (tmp_path / "m.json").write_text(json.dumps(messages))
    args = ["save", "s1", "--messages-file", str(tmp_path / "m.json")]
    if state is not None:
        (tmp_path / "s.json").write_text(json.dumps(state))
        args += ["--state-file", str(tmp_path / "s.json")]
    proc = run(home, *args)
    assert proc.returncode == 2 and f"{tmp_path}/{words}" in proc.stderr
    assert run(home, "restore", "s1").returncode != 0


def test_script_lists_interrupted_sessions_after_a_mark(home: Path) -> None:
    """After mark-interrupted, list --interrupted shows that session with its reason, and not the live one."""
    for name in ("live-one", "crashed-one"):
        run(home, "save", name, "--messages-file", "-", stdin=json.dumps(chat(4)))
    assert run(home, "mark-interrupted", "crashed-one", "--reason", "gateway restart").returncode == 0
    listing = run(home, "list", "--interrupted")
    assert listing.returncode == 0
    header, *rows = listing.stdout.splitlines()
    assert header.split() == ["SESSION", "STATE", "SINCE", "AGE", "MESSAGES", "REASON"]
    assert len(rows) == 1 and rows[0].startswith("crashed-one  interrupted  ")
    assert rows[0].endswith("  4         gateway restart")


def test_script_list_shows_a_reason_as_one_line_with_its_controls_inert(home: Path) -> None:
    """A reason copied from a log (an OSC title sequence, a bell, a newline) cannot retitle or rewrite the
    terminal of whoever lists, nor add a row of its own: it shows as visible characters on its session's row."""
    run(home, "save", "crashed", "--messages-file", "-", stdin=json.dumps(chat(2)))
    reason = "gateway\x1b]0;owned\x07 restart\nforged-row  interrupted  2026-01-01T00:00:00Z"
    assert run(home, "mark-interrupted", "crashed", "--reason", reason).returncode == 0
    listing = run(home, "list")
    assert listing.returncode == 0
    assert "\x1b" not in listing.stdout and "\x07" not in listing.stdout
    _header, *rows = listing.stdout.splitlines()
    assert len(rows) == 1 and rows[0].endswith(
        "gateway\u241b]0;owned\u2407 restart forged-row  interrupted  2026-01-01T00:00:00Z"
    )
    assert run(home, "restore", "crashed", "--json").stdout.count("forged-row") == 1  # the reason itself is kept


def test_script_restore_prints_no_raw_terminal_control_and_reads_back_the_same(home: Path) -> None:
    """restore writes the snapshot for a terminal or a file: a C1 control in a message (the one-byte CSI,
    U+009B) is written as its JSON escape, which a terminal does not obey and any JSON reader reads back as it was."""
    messages = [{"role": "assistant", "content": "before\x9b2Jafter \x7f"}]
    run(home, "save", "c1", "--messages-file", "-", stdin=json.dumps(messages))
    proc = run(home, "restore", "c1")
    assert proc.returncode == 0 and "\x9b" not in proc.stdout and "\x7f" not in proc.stdout
    assert json.loads(proc.stdout)["messages"] == messages


@pytest.mark.parametrize(
    "args",
    [
        ("save", "s1", "--messages-file", "-"),
        ("restore", "s1"),
        ("list",),
        ("list", "--interrupted"),
        ("mark-interrupted", "s1", "--reason", "x"),
        ("delete", "s1"),
        ("restore", "missing"),
        ("save", "../x", "--messages-file", "-"),
    ],
)
def test_script_json_output_is_exactly_one_object(home: Path, args: tuple[str, ...]) -> None:
    """With --json every subcommand, failing ones included, prints exactly one JSON object on stdout."""
    run(home, "save", "s1", "--messages-file", "-", stdin=json.dumps(chat(3)))
    proc = run(home, *args, "--json", stdin=json.dumps(chat(3)))
    obj = one_object(proc)
    assert obj["ok"] is (proc.returncode == 0)


def test_script_names_a_file_that_is_not_json(home: Path, tmp_path: Path) -> None:
    """A messages or state file that is not JSON exits 2 naming that file; nothing is saved."""
    good, bad = tmp_path / "good.json", tmp_path / "broken.json"
    good.write_text(json.dumps(chat(2)))
    bad.write_text('[{"role": "user", "content": "unfinished')
    for args in (["--messages-file", str(bad)], ["--messages-file", str(good), "--state-file", str(bad)]):
        proc = run(home, "save", "s1", *args)
        assert proc.returncode == 2 and f"{bad} is not valid JSON" in proc.stderr
    assert run(home, "save", "s1", "--messages-file", "-", stdin="nope").stderr.startswith("self-heal: stdin is not")
    assert run(home, "restore", "s1").returncode == 2


def test_script_refuses_text_utf_8_cannot_hold_naming_where_it_is(home: Path, tmp_path: Path) -> None:
    """A message holding half an emoji (a lone surrogate, as a JavaScript client that cut a string writes)
    exits 2 naming the message and key, no traceback; a state value and a --reason in another encoding
    likewise; nothing is saved or marked."""
    messages, state_file = tmp_path / "messages.json", tmp_path / "state.json"
    messages.write_text('[{"role": "user", "content": "ok"}, {"role": "user", "content": "cut \\ud83d"}]')
    proc = run(home, "save", "s1", "--messages-file", str(messages))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "messages[1]['content']" in proc.stderr and "UTF-8" in proc.stderr
    messages.write_text(json.dumps(chat(2)))
    state_file.write_text('{"draft": "cut \\udc80"}')
    proc = run(home, "save", "s1", "--messages-file", str(messages), "--state-file", str(state_file))
    assert proc.returncode == 2 and "state['draft']" in proc.stderr
    assert run(home, "restore", "s1").returncode == 2
    # A reason in another encoding on the command line (Python keeps its byte as a surrogate escape).
    assert run(home, "save", "s1", "--messages-file", str(messages)).returncode == 0
    proc = run(home, "mark-interrupted", "s1", "--reason", "gateway \udcff restart")
    assert proc.returncode == 2 and "reason holds \\udcff" in proc.stderr and "Traceback" not in proc.stderr
    restored = snapshot.restore("s1", root=StateRoot(home))
    assert restored is not None and not restored.interrupted


def test_a_snapshot_too_big_to_read_back_is_refused_and_the_last_one_kept(state: StateRoot) -> None:
    """70 messages of 1 MiB (each input under the limit): the save is refused naming the size and the limit,
    and the earlier snapshot stays restorable; it used to be written, and then every restore refused it."""
    snapshot.save("s1", chat(3), root=state)
    with pytest.raises(UsageError, match=rf"over the {store.MAX_STATE_FILE_BYTES} .* keep fewer messages"):
        snapshot.save("s1", [{"role": "user", "content": "x" * (1 << 20)} for _ in range(70)], root=state)
    restored = snapshot.restore("s1", root=state)
    assert restored is not None and restored.messages == chat(3)


def test_a_mark_that_would_make_a_snapshot_too_big_to_read_back_is_refused(
    state: StateRoot, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A snapshot near the size limit marked with a long reason (an error text pasted whole): the mark is refused
    naming the size, and the snapshot stays restorable; it used to be written, and then every restore refused it."""
    limit = 8192
    monkeypatch.setattr(store, "MAX_STATE_FILE_BYTES", limit)
    monkeypatch.setattr(snapshot, "MAX_STATE_FILE_BYTES", limit)
    snapshot.save("s1", [{"role": "user", "content": "x" * 7000}], root=state)
    with pytest.raises(UsageError, match=rf"over the {limit} .* a shorter reason"):
        snapshot.mark_interrupted("s1", reason="r" * 2000, root=state)
    restored = snapshot.restore("s1", root=state)
    assert restored is not None and not restored.interrupted and restored.messages[0]["content"] == "x" * 7000


def test_script_exits_2_for_an_unknown_session(home: Path) -> None:
    """restore and mark-interrupted of a session never saved exit 2 (as an unknown task does everywhere)."""
    for action in ("restore", "mark-interrupted"):
        proc = run(home, action, "ghost")
        assert proc.returncode == 2 and "no snapshot for session 'ghost'" in proc.stderr and proc.stdout == ""


# -- across processes ---------------------------------------------------------------------------------------------

WRITER = """
import sys, time
from pathlib import Path
from selfheal.durable import snapshot
name, go = sys.argv[1], Path(sys.argv[2])
while not go.exists():
    time.sleep(0.001)
went_back = 0
for n in range(200):
    messages = [{"role": "user", "content": f"{name}-{n}-{i}"} for i in range(30)]
    snapshot.save("shared", messages, state={"writer": name, "n": n}, keep=20)
    seen = snapshot.restore("shared")  # a mark that wrote back an older read would show an older save of ours
    went_back += seen.state["writer"] == name and seen.state["n"] < n
print(went_back)
"""

MARKER = """
import json, sys, time
from pathlib import Path
from selfheal.durable import snapshot
from selfheal.errors import CorruptStateError
go, done = Path(sys.argv[1]), Path(sys.argv[2])
marks, reads, bad = 0, 0, []
while not go.exists():
    time.sleep(0.001)
while not done.exists():
    try:
        snapshot.mark_interrupted("shared", reason="watchdog")
        marks += 1
    except snapshot.NoSnapshot:
        pass
    try:  # a read without the lock must still see a whole snapshot
        seen = snapshot.restore("shared")
        reads += 1
        if seen is not None and len(seen.messages) != 20:
            bad.append(len(seen.messages))
    except CorruptStateError as exc:
        bad.append(str(exc))
    time.sleep(0.001)
print(json.dumps({"marks": marks, "reads": reads, "bad": bad}))
"""


@pytest.mark.slow
def test_concurrent_saves_and_a_mark_leave_a_whole_snapshot(home: Path, tmp_path: Path) -> None:
    """Two processes saving one session 200 times while a third marks it: every read and the final file are whole."""
    go, done = tmp_path / "go", tmp_path / "done"
    env = script_env(home, PYTHONPATH=str(SCRIPTS))
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, name, str(go)], env=env, stdout=subprocess.PIPE, text=True)
        for name in ("w1", "w2")
    ]
    marker = subprocess.Popen([sys.executable, "-c", MARKER, str(go), str(done)], env=env, stdout=subprocess.PIPE)
    go.write_text("go")
    went_back = [w.communicate(timeout=120)[0] for w in writers]
    done.write_text("done")
    out = marker.communicate(timeout=60)[0]
    assert [w.returncode for w in writers] == [0, 0] and marker.returncode == 0
    assert went_back == ["0\n", "0\n"]  # no mark wrote back a snapshot older than a save
    report = json.loads(out)
    assert report["marks"] > 0 and report["reads"] > 0 and report["bad"] == []

    final = snapshot.restore("shared", root=StateRoot(home))
    assert final is not None and final.state["n"] == 199  # no mark wrote back an older save
    writer = final.state["writer"]
    assert final.messages == [{"role": "user", "content": f"{writer}-199-{i}"} for i in range(10, 30)]
    assert final.message_count == 30 and final.reason == ("watchdog" if final.interrupted else "")
    assert [p.name for p in (home / "sessions").iterdir()] == ["shared.json"]  # no temp or quarantined files


def test_keep_comes_from_the_settings(state: StateRoot, write_config: Any) -> None:
    """snapshots.keep in config.yaml sets how many messages a save keeps."""
    write_config("snapshots: {keep: 10}\n")
    assert len(snapshot.save("s1", chat(50), root=state).messages) == 10


# -- the saved record (state/snapshots.py) --------------------------------------------------------------------

# A snapshot exactly as the previous version writes it: marked interrupted after two messages.
TODAYS_SNAPSHOT = {
    "session_id": "s1",
    "saved": 1800000000.0,
    "message_count": 2,
    "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None}],
    "state": {"step": 3},
    "interrupted": True,
    "interrupted_at": 1800000005.5,
    "reason": "gateway restarted",
}


def test_a_snapshot_in_todays_shape_is_restored(state: StateRoot) -> None:
    """The previous version's file reads as the same snapshot, and its document is the same."""
    (state.sub("sessions") / "s1.json").write_text(json.dumps(TODAYS_SNAPSHOT))
    restored = snapshot.restore("s1", root=state)
    assert restored is not None and restored.to_json() == TODAYS_SNAPSHOT
    assert (restored.message_count, restored.interrupted_at, restored.reason) == (2, 1800000005.5, "gateway restarted")


def test_a_newer_versions_keys_survive_marking_a_snapshot_interrupted(state: StateRoot, clock: FakeClock) -> None:
    """mark_interrupted reads, changes and writes back the file: keys it does not know are kept."""
    path = state.sub("sessions") / "s1.json"
    path.write_text(json.dumps({**TODAYS_SNAPSHOT, "interrupted": False, "model": {"name": "qwen3"}}))
    snapshot.mark_interrupted("s1", reason="crash", clock=clock, root=state)
    saved = json.loads(path.read_text())
    assert (saved["interrupted"], saved["reason"], saved["model"]) == (True, "crash", {"name": "qwen3"})


@pytest.mark.parametrize(
    ("key", "value"), [("saved", "yesterday"), ("message_count", -1), ("interrupted", "no"), ("state", [])]
)
def test_a_snapshot_with_a_wrong_field_names_the_file_the_key_and_the_value(
    state: StateRoot, key: str, value: Any
) -> None:
    path = state.sub("sessions") / "s1.json"
    path.write_text(json.dumps({**TODAYS_SNAPSHOT, key: value}))
    with pytest.raises(CorruptStateError) as info:
        snapshot.restore("s1", root=state)
    message = str(info.value)
    assert str(path) in message and f"{key}: " in message and repr(value) in message
