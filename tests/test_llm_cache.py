"""models.cache (the second document's section 6.3: cache LLM responses), through the real openai client
against the package's fake endpoint: what is a hit, what is asked anew, what is never stored."""

from __future__ import annotations

import json
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import ROOT, call_script
from selfheal.core.config import Config, load_config
from selfheal.models.llm import ModelCallFailed, complete
from selfheal.models.output import schema_problems
from selfheal.state.root import StateRoot
from selfheal.testing import FakeClock, FakeModelServer, Fault

SECRET = "sk-proj-Abcdefghijklmnopqrstuvwxyz0123456789"
SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}


@pytest.fixture
def server() -> Iterator[FakeModelServer]:
    with FakeModelServer() as srv:
        yield srv


@pytest.fixture
def cached(server: FakeModelServer, write_config: Callable[[str], Path]) -> Callable[..., Config]:
    """A one-entry chain (`primary` on the fake server), with models.cache as given (None: left off)."""

    def make(cache: str | None = "{ttl_s: 60, max_entries: 10}") -> Config:
        write_config(
            "models:\n  read_timeout_base_s: 2\n  timeout_per_1k_tokens_s: 0\n  deadline_s: 20\n"
            + (f"  cache: {cache}\n" if cache else "")
            + f'  chain:\n    - {{name: primary, base_url: "{server.url("primary")}", model: qwen}}\n'
        )
        return load_config()

    return make


def cache_files(home: Path) -> list[Path]:
    folder = home / "model-cache"
    return sorted(folder.glob("*.json")) if folder.is_dir() else []


def ledger(home: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for f in (home / "ledger").glob("*.jsonl") for line in f.read_text().splitlines()]


def test_off_by_default_every_call_asks(cached: Callable[..., Config], server: FakeModelServer, home: Path) -> None:
    config = cached(None)
    assert config.models.cache is None
    first = complete("Summarise the night.", config=config, clock=FakeClock())
    second = complete("Summarise the night.", config=config, clock=FakeClock())
    assert not first.cached and not second.cached and server.requests("primary") == 2
    assert cache_files(home) == []


def test_an_entry_with_other_headers_does_not_get_the_answer_another_was_given(
    cached: Callable[..., Config], server: FakeModelServer, write_config: Callable[[str], Path]
) -> None:
    """Headers choose who answers behind one address (a tenant, an organisation, a project): the key left them
    out, so once the entry's headers changed it was still served the answer given under the old ones."""
    config, clock = cached(), FakeClock()
    complete("Summarise the night.", config=config, clock=clock)
    write_config(
        "models:\n  read_timeout_base_s: 2\n  timeout_per_1k_tokens_s: 0\n  deadline_s: 20\n"
        "  cache: {ttl_s: 60, max_entries: 10}\n"
        f'  chain:\n    - {{name: primary, base_url: "{server.url("primary")}", model: qwen,'
        " headers: {X-Tenant: shop-b}}\n"
    )
    again = complete("Summarise the night.", config=load_config(), clock=clock)
    assert not again.cached and server.requests("primary") == 2


def test_a_second_identical_call_sends_no_request_and_says_so(
    cached: Callable[..., Config], server: FakeModelServer, home: Path
) -> None:
    config, clock = cached(), FakeClock()
    first = complete("Summarise the night.", config=config, clock=clock, task="nightly")
    second = complete("Summarise the night.", config=config, clock=clock, task="nightly")
    assert server.requests("primary") == 1
    assert not first.cached and second.cached and second.to_json()["cached"] is True
    assert (second.content, second.endpoint, second.model) == (first.content, "primary", first.model)
    hits = [e for e in ledger(home) if e["event"] == "cache_hit"]
    assert len(hits) == 1 and hits[0]["task"] == "nightly" and hits[0]["target"] == "primary"
    # A call for a task ends in one [SUCCESS], answered from the cache too: the task's second run is counted.
    ends = [(e["event"], e.get("status")) for e in ledger(home) if e["event"] in ("success", "failed")]
    assert ends == [("success", "succeeded"), ("success", "cached")], ends
    schema = json.loads((ROOT / "status" / "ledger-event.schema.json").read_text())
    assert all(schema_problems(event, schema) == [] for event in ledger(home))
    (path,) = cache_files(home)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_what_changes_the_answer_is_asked_anew(
    cached: Callable[..., Config], server: FakeModelServer, home: Path
) -> None:
    config, clock = cached(), FakeClock()
    complete("Summarise the night.", config=config, clock=clock, temperature=0.2)
    assert complete("Summarise the night.", config=config, clock=clock, temperature=0.9).cached is False
    assert complete("Summarise the night.", config=config, clock=clock, temperature=0.2, max_tokens=50).cached is False
    assert complete("Summarise the day.", config=config, clock=clock, temperature=0.2).cached is False
    assert server.requests("primary") == 4
    assert complete("Summarise the night.", config=config, clock=clock, temperature=0.9).cached is True
    assert server.requests("primary") == 4 and len(cache_files(home)) == 4


def test_an_expired_entry_is_asked_anew(cached: Callable[..., Config], server: FakeModelServer, home: Path) -> None:
    config, clock = cached("{ttl_s: 60, max_entries: 10}"), FakeClock()
    complete("Summarise the night.", config=config, clock=clock)
    clock.advance(59)
    assert complete("Summarise the night.", config=config, clock=clock).cached is True
    clock.advance(2)  # 61 s after it was stored
    again = complete("Summarise the night.", config=config, clock=clock)
    assert not again.cached and server.requests("primary") == 2
    assert complete("Summarise the night.", config=config, clock=clock).cached is True  # stored anew


def test_a_wrong_shape_answer_is_never_cached(
    cached: Callable[..., Config], server: FakeModelServer, home: Path
) -> None:
    """Two answers of the wrong shape fail the call: nothing is stored, and the next call asks again;
    the right shape then is stored, the parsed object with it."""
    config, clock = cached(), FakeClock()
    server.script("primary", Fault.reply('{"b": 1}'), Fault.reply('{"b": 2}'))
    with pytest.raises(ModelCallFailed):
        complete("Count.", config=config, clock=clock, json_output=True, schema=SCHEMA)
    assert cache_files(home) == []
    server.script("primary", Fault.reply('{"a": 3}'))
    right = complete("Count.", config=config, clock=clock, json_output=True, schema=SCHEMA)
    assert not right.cached and right.data == {"a": 3} and server.requests("primary") == 3
    hit = complete("Count.", config=config, clock=clock, json_output=True, schema=SCHEMA)
    assert hit.cached and hit.data == {"a": 3} and server.requests("primary") == 3


def test_the_cache_holds_no_secret(cached: Callable[..., Config], server: FakeModelServer, home: Path) -> None:
    """The prompt is never stored (only its hash), and an answer that holds a secret is not stored at all
    (a hit would otherwise return a masked copy): it is asked again each time."""
    config, clock = cached(), FakeClock()
    complete(f"Check the key {SECRET} for me.", config=config, clock=clock)
    (path,) = cache_files(home)
    assert SECRET not in path.read_text() and "Check the key" not in path.read_text()
    server.set_default("primary", Fault.reply(f"Your key is {SECRET}"))
    first = complete("Which key?", config=config, clock=clock)
    second = complete("Which key?", config=config, clock=clock)
    assert SECRET in first.content and not second.cached and server.requests("primary") == 3
    assert len(cache_files(home)) == 1
    assert all(SECRET not in p.read_text() for p in cache_files(home))


def test_the_oldest_entries_go_first_past_max_entries(
    cached: Callable[..., Config], server: FakeModelServer, home: Path
) -> None:
    config, clock = cached("{ttl_s: 600, max_entries: 2}"), FakeClock()
    for prompt in ("one", "two", "three"):
        complete(prompt, config=config, clock=clock)
    assert len(cache_files(home)) == 2 and server.requests("primary") == 3
    assert complete("three", config=config, clock=clock).cached is True
    assert complete("two", config=config, clock=clock).cached is True
    assert complete("one", config=config, clock=clock).cached is False  # evicted, asked again
    assert server.requests("primary") == 4


def test_streams_and_no_cache_calls_always_ask(
    cached: Callable[..., Config], server: FakeModelServer, home: Path
) -> None:
    config, clock = cached(), FakeClock()
    for _ in range(2):
        assert complete("Stream it.", config=config, clock=clock, stream=True, on_text=lambda t: None).cached is False
    assert cache_files(home) == [] and server.requests("primary") == 2
    complete("Once.", config=config, clock=clock)
    assert complete("Once.", config=config, clock=clock, cache=False).cached is False
    assert server.requests("primary") == 4


def test_llm_call_no_cache(cached: Callable[..., Config], server: FakeModelServer, home: Path) -> None:
    cached()
    first = json.loads(call_script("llm_call.py", "--json", "--prompt", "hi", home=home).stdout)
    hit = call_script("llm_call.py", "--json", "--prompt", "hi", home=home)
    fresh = json.loads(call_script("llm_call.py", "--json", "--no-cache", "--prompt", "hi", home=home).stdout)
    assert not first["cached"] and json.loads(hit.stdout)["cached"] and not fresh["cached"]
    assert "answered from models.cache" in hit.stderr and server.requests("primary") == 2


def test_an_unreadable_entry_is_a_miss(cached: Callable[..., Config], server: FakeModelServer, home: Path) -> None:
    config, clock = cached(), FakeClock()
    complete("Summarise the night.", config=config, clock=clock)
    (path,) = cache_files(home)
    path.write_text("{torn")
    assert complete("Summarise the night.", config=config, clock=clock).cached is False
    assert server.requests("primary") == 2
    assert [p.name for p in (home / "model-cache").iterdir()] == [path.name]  # the torn one is gone, not kept
    assert StateRoot(home).model_cache_file(path.stem) == path


def test_a_bad_cache_setting_names_the_key(cached: Callable[..., Config]) -> None:
    from selfheal.errors import ConfigError

    with pytest.raises(ConfigError, match=r"models\.cache\.max_entries"):
        cached("{ttl_s: 60, max_entries: 0}")


def test_an_entry_stored_while_the_clock_was_ahead_is_a_miss_once_it_is_corrected(
    cached: Callable[..., Config], server: FakeModelServer, home: Path
) -> None:
    """Stored while the wall clock ran a day ahead (a bad RTC before NTP): once the clock is set right, the
    entry is not taken as fresh for a day and a ttl more; it is a miss, asked anew and stored again."""
    config = cached("{ttl_s: 60, max_entries: 10}")
    complete("Summarise the night.", config=config, clock=FakeClock(wall=1_800_086_400.0))
    right = FakeClock(wall=1_800_000_000.0)
    assert complete("Summarise the night.", config=config, clock=right).cached is False
    assert server.requests("primary") == 2
    assert complete("Summarise the night.", config=config, clock=right).cached is True


@pytest.mark.parametrize("plant", ["symlink", "fifo", "folder-symlink"])
def test_a_planted_entry_is_a_miss_and_nothing_outside_the_state_root_is_read_or_written(
    cached: Callable[..., Config], server: FakeModelServer, home: Path, tmp_path: Path, plant: str
) -> None:
    """An entry that is a link to an answer elsewhere, a FIFO, or a model-cache folder that is a link: the
    call asks the model (no hang, no answer taken from outside the state root) and writes nothing there."""
    import os

    config, clock = cached(), FakeClock()
    complete("Summarise the night.", config=config, clock=clock)
    (path,) = cache_files(home)
    record = json.loads(path.read_text())
    outside = tmp_path / "outside"
    outside.mkdir()
    poisoned = dict(record, content="rm -rf / # from elsewhere")
    (outside / path.name).write_text(json.dumps(poisoned))
    if plant == "symlink":
        path.unlink()
        path.symlink_to(outside / path.name)
    elif plant == "fifo":
        path.unlink()
        os.mkfifo(path)
    else:
        folder = home / "model-cache"
        for item in folder.iterdir():
            item.unlink()
        folder.rmdir()
        folder.symlink_to(outside)
    before = sorted(p.name for p in outside.iterdir())
    again = complete("Summarise the night.", config=config, clock=clock)
    assert not again.cached and again.content != poisoned["content"] and server.requests("primary") == 2
    assert sorted(p.name for p in outside.iterdir()) == before
    assert json.loads((outside / path.name).read_text()) == poisoned


def test_an_entry_removed_by_another_process_during_the_trim_is_no_failure(
    cached: Callable[..., Config],
    server: FakeModelServer,
    home: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Another process deletes an expired entry between the trim's listing and its look at the file: the
    answer is stored all the same, with no warning that it could not be, and the trim still keeps the cap."""
    import os

    config, clock = cached("{ttl_s: 60, max_entries: 2}"), FakeClock()
    for prompt in ("one", "two"):
        complete(prompt, config=config, clock=clock)
    listing, raced = os.scandir, list[str]()

    class Listing(list):  # type: ignore[type-arg]
        def __enter__(self) -> Listing:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

    def racing(fd: int) -> Listing:
        with listing(fd) as found:
            entries = Listing(found)
        if not raced and len(entries) > 2:  # the trim's listing: the oldest entry goes, as a get() elsewhere
            oldest = min(entries, key=lambda e: e.stat(follow_symlinks=False).st_mtime_ns)  # deletes an expired one
            raced.append(oldest.name)
            os.unlink(oldest.name, dir_fd=fd)
        return entries

    monkeypatch.setattr(os, "scandir", racing)  # the trim's listing (the cache module's only one)
    with caplog.at_level("WARNING"):
        complete("three", config=config, clock=clock)
    assert raced and "could not store" not in caplog.text
    assert len(cache_files(home)) <= 2
    assert complete("three", config=config, clock=clock).cached is True
