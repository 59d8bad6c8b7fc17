"""health_check.py against what answers on the gateway's port, other skills' status files, and a health.json
that cannot be kept: as cron runs it, every few minutes.

- A gateway port answering JSON nested 30,000 deep (well within the 64 KiB read), or another skill's
  status file holding it, crashed the check with a RecursionError traceback and the "internal error" exit.
- Whatever listens on the gateway's port, and what other skills name their files, reached the terminal (and
  the mail cron sends) with its control sequences: a window title, a screen clear, BEL.
- A health.json that could not be read (a folder, a file over the size cap) was never moved aside, so every
  run wrote it afresh or failed to, took itself for the first run, and wrote one more [HEALTH] event: one
  every five minutes all night for a mode that never changed. A link planted there (left for a person, never
  written through) did the same.

Each case runs the real script as a user's cron would.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from helpers.fake_gateway import LIVE, FakeGateway
from helpers.openclaw import free_port

from conftest import call_script

DEEP = b"[" * 30_000 + b"]" * 30_000
CONTROLS = ("\x1b", "\x07", "\x9b")


@pytest.fixture
def openclaw_dir(home: Path) -> Path:
    folder = Path(os.environ["OPENCLAW_STATE_DIR"])
    (folder / "skills" / "status").mkdir(parents=True)
    return folder


def check(home: Path, *args: str, url: str | None = None) -> tuple[int, str, str]:
    env = {"OPENCLAW_GATEWAY_PORT": str(free_port())} if url is None else {}
    if url is not None:
        home.mkdir(mode=0o700, exist_ok=True)
        (home / "config.yaml").write_text(f"health: {{gateway_url: '{url}', disk_min_free_mb: 0}}\n")
    proc = call_script("health_check.py", *args, home=home, env=env, drop=("OPENCLAW_CONFIG_PATH",))
    return proc.returncode, proc.stdout, proc.stderr


def health_events(home: Path) -> list[str]:
    log = home / "logs" / "selfheal.log"
    return [line for line in log.read_text().splitlines() if "[HEALTH]" in line] if log.exists() else []


def test_a_gateway_answering_json_nested_too_deep_is_not_live_and_no_traceback(home: Path, openclaw_dir: Path) -> None:
    with FakeGateway({"/healthz": (200, "application/json", DEEP)}) as gw:
        code, out, err = check(home, "--cron", url=gw.url)
    assert (code, err) == (3, "")
    assert "/healthz answered HTTP 200 with application/json (60000 bytes), not OpenClaw's JSON" in out


def test_a_status_file_nested_too_deep_is_named_unreadable_and_no_traceback(home: Path, openclaw_dir: Path) -> None:
    status = openclaw_dir / "skills" / "status"
    (status / "deep.json").write_bytes(DEEP)
    (status / "daily.txt").write_text("status=success\n")
    code, out, err = check(home, "--json")
    assert (code, err) == (1, "")
    (files,) = [c for c in json.loads(out)["checks"] if c["name"] == "status_files"]
    assert files["status"] == "warn"
    assert files["unreadable"] == [
        {"file": str(status / "deep.json"), "problem": "is not valid JSON (nested too deep)"}
    ]


def test_control_sequences_from_the_gateway_or_a_file_name_never_reach_the_terminal(
    home: Path, openclaw_dir: Path
) -> None:
    """A readiness answer naming a part `ESC ] 0 ; title BEL ESC [ 2 J`, and a status file so named: shown, not
    obeyed, in the cron summary and in the table; --json escapes them as JSON does."""
    attack = "\x1b]0;pwned\x07\x1b[2J\x9b31m"
    (openclaw_dir / "skills" / "status" / f"evil{attack}.txt").write_text("status=error\n")
    ready = (503, "application/json", json.dumps({"ready": False, "failing": [attack]}).encode())
    with FakeGateway({"/healthz": LIVE, "/readyz": ready}) as gw:
        for args in (("--cron",), ()):
            code, out, _ = check(home, *args, url=gw.url)
            assert code == 1 and "pwned" in out
            assert not any(c in out for c in CONTROLS), repr(out)
            assert "␛]0;pwned␇␛[2J" in out
        code, out, _ = check(home, "--json", url=gw.url)
    assert code == 1 and json.loads(out)["checks"][1]["failing"] == [attack]


@pytest.mark.parametrize("plant", ["folder", "too big"])
def test_an_unreadable_health_json_is_moved_aside_and_the_mode_logged_once(
    plant: str, home: Path, openclaw_dir: Path
) -> None:
    assert check(home, "--cron")[0] == 3
    health = home / "status" / "health.json"
    health.unlink()
    if plant == "folder":
        health.mkdir()
    else:
        with health.open("wb") as fh:
            fh.truncate(64 * 1024 * 1024 + 1)  # sparse: over the state files' size cap
    code, out, _ = check(home, "--cron")
    assert code == 3 and "moved aside" in out, out
    assert [p.name.split(".corrupt-")[0] for p in health.parent.glob("health.json.corrupt-*")] == ["health.json"]
    for _ in range(2):
        code, out, _ = check(home, "--cron")
        assert code == 3 and out.startswith("self-heal health: DOWN since ") and "health_file" not in out, out
    assert json.loads(health.read_text())["mode"] == "down"
    assert len(health_events(home)) == 1  # the first run's: the mode never changed


def test_a_link_planted_at_health_json_is_left_and_the_mode_is_not_logged_again_every_run(
    home: Path, openclaw_dir: Path, tmp_path: Path
) -> None:
    """health.json cannot be kept while the link is there: the mode, and since when, come from self-heal's own
    status line (written every run), so an unchanged mode is not a new [HEALTH] event every five minutes."""
    assert check(home, "--cron")[0] == 3
    since = json.loads((home / "status" / "health.json").read_text())["mode_since"]
    victim = tmp_path / "victim.json"
    victim.write_text("{}")
    (home / "status" / "health.json").unlink()
    (home / "status" / "health.json").symlink_to(victim)
    for _ in range(3):
        code, out, _ = check(home, "--cron")
        assert code == 3 and out.startswith(f"self-heal health: DOWN since {since}: "), out
    assert victim.read_text() == "{}" and (home / "status" / "health.json").is_symlink()
    assert len(health_events(home)) == 1
