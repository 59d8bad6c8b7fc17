"""The gateway watchdog (opt-in, `health.watchdog.enabled`): restart a gateway the health check finds down.

It acts only on what the health check found: the gateway not live (liveness probe failed). A gateway that
is starting is left alone: one that answers but is not ready yet is not down at all, and one whose latest
lifecycle line in OpenClaw's own log is a start (`starting...`, no `gateway ready` or shutdown after it) or
a restart (`received SIGUSR2; restarting`, the `shutdown completed` after it, `restart mode: ...`: what
`openclaw gateway restart` logs) younger than `startup_grace_s` is given that long. A restart of our own is
also given that long. Before restarting, the gateway is probed once more `CONFIRM_AFTER_S` (2.5 s) later: a
gateway live again by then, or one that logged a start or restart meanwhile, is not restarted.

A restart runs `restart_argv` (OpenClaw's supported way: `openclaw gateway restart`, which restarts the
service-installed gateway), never a signal to a process found by name; it is done when that command exits. Its
output goes to a file, `logs/gateway-restart.out` (emptied at each restart), never to a pipe: a gateway it starts
in the background inherits that output and goes on printing there after the command is done. At most
`max_restarts_per_hour` restarts in any hour, the n-th waiting at least `backoff_s * 2**(n-1)` after the one before.
Every restart goes to the ledger (`watchdog` events). The restart history (`status/watchdog.json`) is what keeps
that cap: when it cannot be read (a link or FIFO planted there, a file moved aside as corrupt) nothing is restarted
that check ("blocked", the file named), never a restart on an empty history. A restart time later than now (by more
than `CLOCK_STEP_S`) is from before the wall clock was stepped back: it is dropped, not taken as "restarted just
now" for as long as the step. One health check at a time decides (a lock under `locks/`): a second one that finds
the first deciding or restarting is "busy" and does nothing. When the hour's restarts are spent and the gateway is
still down, a fix record says so, with OpenClaw's own output and, when `openclaw.json` changed since the last
healthy check, the last-known-good copy to restore (a person's decision: `self_heal.py --apply FIX-ID`).

While the gateway is live, the current `openclaw.json` is kept as last-known-good (a copy when its bytes
changed, the newest `keep_configs` kept, under the state root's `openclaw-config/`): the user's own file byte
for byte, its secrets included (0600, never printed), so that a restore gives back the real gateway token.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import re
import stat
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..clock import SYSTEM_CLOCK, Clock, utc_iso
from ..core import openclaw_config
from ..core.config import Config
from ..core.ledger import Ledger
from ..errors import ConfigError, LockBusy, StateError
from ..observe import openclaw_logs
from ..observe.health import OK, Check, Report, check_gateway
from ..state import layout
from ..state.breakers import CLOCK_STEP_S
from ..state.fixes import READY
from ..state.root import (
    StateRoot,
    ensure_dir,
    file_lock,
    json_number,
    open_append,
    open_dir,
    open_file,
    open_regular,
    read_bytes,
    read_json,
    unlink,
    write_bytes_atomic,
    write_json,
)
from .diagnose import Evidence, Healer

logger = logging.getLogger(__name__)

WATCHDOG_FILE = "watchdog"  # status/watchdog.json: the restarts of the last hour
CONFIG_FOLDER = layout.OPENCLAW_CONFIGS
TAIL_BYTES = 256 * 1024  # of OpenClaw's newest log, read for its latest lifecycle line
_LIFECYCLE = {"starting...": "starting", "gateway ready": "ready", "received SIGTERM; shutting down": "stopping"}
# OpenClaw's restart (`openclaw gateway restart`, SIGUSR2/SIGUSR1) logs `received SIGUSR2; restarting`, then
# `shutdown completed ...`, then `restart mode: in-process restart (...)` (or another restart mode), and no
# `starting...`: a restart under way until `gateway ready`.
_RESTARTING = re.compile(r"received \S+; restarting\b")
_RESTART_STOPPED = "leaving Gateway stopped"  # `restart mode: fresh process unavailable; leaving Gateway stopped`
# Before a restart the gateway is probed once more after this wait: a stall of a second or two, or a restart
# that began just now, is not restarted on top.
CONFIRM_AFTER_S = 2.5
RESTART_OUTPUT_KEEP = 2000  # characters of the restart command's output kept (watchdog.json, the fix record)
# Bytes past which logs/gateway-restart.out is emptied when a check next looks: a gateway the restart left running
# prints there for as long as it runs (weeks, on a quiet host), and the file is for what a restart said, not a log
# of its own (OpenClaw keeps one). Emptying it under running writers is safe: every writer appends (O_APPEND), so
# their next line lands at the start, with no hole of zeros before it.
RESTART_OUTPUT_CAP = 16 * 1024 * 1024

Runner = Callable[..., "subprocess.CompletedProcess[str]"]


@dataclass(frozen=True)
class Outcome:
    """What the watchdog did: healthy | starting | restarted | restart_failed | waiting | gave_up | busy | blocked,
    and why."""

    action: str
    detail: str
    fix_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"action": self.action, "detail": self.detail, "fix_id": self.fix_id}


# -- last-known-good openclaw.json ------------------------------------------------------------------------------


def good_configs(state: StateRoot) -> list[Path]:
    """The kept copies, newest first: the plain files of openclaw-config/, listed through the folder reached as
    every state folder is (a link planted at it: UnsafeStateError). A link or a folder planted among them is no
    copy: never read nor pruned (a folder there ended every healthy check in a traceback), left for a person."""
    folder = state.sub(CONFIG_FOLDER)
    try:
        dir_fd = open_dir(folder, create=False)
    except FileNotFoundError:
        return []
    try:
        with os.scandir(dir_fd) as entries:
            names = [
                e.name
                for e in entries
                if e.name.startswith("openclaw-") and e.name.endswith(".json") and e.is_file(follow_symlinks=False)
            ]
    finally:
        os.close(dir_fd)
    return sorted((folder / name for name in names), reverse=True)


def keep_good_config(state: StateRoot, env: Mapping[str, str], *, keep: int, now: float) -> Path | None:
    """Copy openclaw.json as last-known-good when its bytes differ from the newest copy; prune to `keep`.

    The copy is the user's own file byte for byte, secrets included (a restore must give back the real
    gateway token, not a mask): it is written unredacted, 0600 under the state root, and never printed.
    """
    data = _config_bytes(openclaw_config.config_path(env))
    if data is None:
        return None
    kept = good_configs(state)
    if kept and _read(kept[0]) == data:
        return kept[0]
    # Named so it sorts newest: after the newest kept copy even when the wall clock was stepped back since (a
    # copy named by the clock alone would sort oldest and be pruned at once, leaving an older file as "good").
    newest = _stamp_of(kept[0]) if kept else None
    when = now if newest is None else max(now, newest + 1)
    target = state.sub(CONFIG_FOLDER) / f"openclaw-{utc_iso(when).replace(':', '')}.json"
    ensure_dir(target.parent)
    write_bytes_atomic(target, data, redacted=True)  # not redacted: the user's own file, kept as it is
    for old in good_configs(state)[keep:]:
        with contextlib.suppress(FileNotFoundError):  # another check pruned it first
            unlink(old)  # in the folder's fd: never a file outside the state root
    return target


def config_changed_since_good(state: StateRoot, env: Mapping[str, str]) -> Path | None:
    """The newest good copy when openclaw.json differs from it now (a config change may have broken the start)."""
    kept = good_configs(state)
    current = _config_bytes(openclaw_config.config_path(env))
    if current is None:
        return kept[0] if kept else None
    return kept[0] if kept and _read(kept[0]) != current else None


def _stamp_of(path: Path) -> float | None:
    """The time in a kept copy's name (`openclaw-2026-06-10T031218Z.json`), or None."""
    try:
        found = datetime.datetime.strptime(path.stem.removeprefix("openclaw-"), "%Y-%m-%dT%H%M%SZ")
    except ValueError:
        return None
    return found.replace(tzinfo=datetime.timezone.utc).timestamp()


def _read(path: Path) -> bytes | None:
    """A kept copy (under the state root: never through a link, never a FIFO), or None."""
    try:
        return read_bytes(path)
    except (OSError, StateError):
        return None


def _config_bytes(path: Path) -> bytes | None:
    """openclaw.json's bytes, or None when it cannot be read or is no configuration file, read as every reader
    of it reads it (openclaw_config.read_raw): a FIFO there hung every healthy check for good, and a link to
    /dev/zero read until memory ran out."""
    try:
        return openclaw_config.read_raw(path)
    except ConfigError:
        if openclaw_config.not_a_file(path):
            logger.warning("%s is no regular file: not kept as last-known-good", path)
        return None


# -- is it starting? ----------------------------------------------------------------------------------------------


def _lifecycle_of(message: str) -> str | None:
    what = _LIFECYCLE.get(message)
    if what is not None:
        return what
    if message.startswith("shutdown completed"):
        return "stopped"
    if _RESTARTING.match(message):
        return "restarting"
    if message.startswith("restart mode:"):
        return "stopped" if _RESTART_STOPPED in message else "restarting"
    return None


def latest_lifecycle(env: Mapping[str, str]) -> tuple[str, float] | None:
    """The gateway's latest start, restart, ready or stop line in OpenClaw's newest log: (what, when).

    A `shutdown completed` that follows a restart line is part of that restart: "restarting", at its time.
    """
    stamped = []
    for path in openclaw_logs.discover(env):
        if path.suffix != ".gz":
            with contextlib.suppress(OSError):  # rotated away since it was listed: not the newest
                stamped.append((path.stat().st_mtime, path))
    if not stamped:
        return None
    newest = max(stamped)[1]
    try:  # without blocking, and only a regular file: a FIFO named like a log would hang the check
        fd, info = open_regular(newest)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as fh:
        try:
            fh.seek(max(0, info.st_size - TAIL_BYTES))
            lines = fh.read(TAIL_BYTES).splitlines()
        except OSError:
            return None
    found: tuple[str, float] | None = None
    for raw in reversed(lines):
        record = openclaw_logs.parse_line(raw)
        if record is None or record.subsystem not in ("gateway", "gateway/shutdown"):
            continue
        what = _lifecycle_of(record.message)
        ts = openclaw_logs.timestamp(record.time)
        if not what or ts is None:
            continue
        if found is None:
            found = (what, ts)
            if what != "stopped":
                return found
            continue  # a shutdown: a restart's, when a restart line comes before it
        return ("restarting", found[1]) if what == "restarting" else found
    return found


# -- the watchdog ----------------------------------------------------------------------------------------------------


def _history(state: StateRoot, now: float) -> list[float]:
    """The restarts of the last hour, oldest first. StateError when the history cannot be read: it is what keeps
    the hourly cap, so an unreadable one is never taken as "no restarts yet" (a link planted there would
    otherwise mean a restart at every check). A time more than CLOCK_STEP_S after now is from before the wall
    clock was stepped back: dropped, or "restarted just now" would hold every restart off for the whole step."""
    data = read_json(state.status_file(WATCHDOG_FILE)) or {}
    restarts = data.get("restarts")
    times = [json_number(t) for t in (restarts if isinstance(restarts, list) else [])]
    return sorted(t for t in times if t is not None and now - 3600 < t <= now + CLOCK_STEP_S)


def watch(
    report: Report,
    state: StateRoot,
    config: Config,
    *,
    env: Mapping[str, str],
    clock: Clock = SYSTEM_CLOCK,
    run: Runner | None = None,
    confirm_after_s: float = CONFIRM_AFTER_S,
) -> Outcome:
    """Act on one health report: keep a good config while live, restart a gateway that is down.

    Before a restart the gateway is probed once more, `confirm_after_s` later: a restart is run only when it
    is still not live and OpenClaw has not logged a start or restart meanwhile.
    """
    settings = config.health.watchdog
    now = clock.time()
    _bound_restart_output(state)
    gateway = report.check("gateway")
    if gateway is None or gateway.status == OK:
        keep_good_config(state, env, keep=settings.keep_configs, now=now)
        return Outcome("healthy", "the gateway is live")
    with contextlib.ExitStack() as held:
        try:  # one check at a time: two that both found it down would restart it twice, one on top of the other
            held.enter_context(file_lock(state.lock_file("watchdog", "gateway"), timeout=0, what="the watchdog"))
        except LockBusy:
            return Outcome("busy", "another health check is deciding on or restarting the gateway; left to it")
        except StateError as exc:
            return Outcome("blocked", f"not restarted: the watchdog's lock cannot be taken ({exc})")
        try:
            restarts = _history(state, now)
        except StateError as exc:
            return Outcome("blocked", f"not restarted: the restart history cannot be read ({exc})")
        return _act(
            report,
            state,
            config,
            env=env,
            clock=clock,
            run=run_restart if run is None else run,
            confirm_after_s=confirm_after_s,
            restarts=restarts,
            gateway=gateway,
        )
    raise AssertionError("unreachable")  # pragma: no cover - mypy: ExitStack may swallow


def _act(
    report: Report,
    state: StateRoot,
    config: Config,
    *,
    env: Mapping[str, str],
    clock: Clock,
    run: Runner,
    confirm_after_s: float,
    restarts: list[float],
    gateway: Check,
) -> Outcome:
    """The gateway is not live: leave it starting, wait, restart it, or give up (under the watchdog's lock)."""
    settings = config.health.watchdog
    now = clock.time()
    if restarts and now - restarts[-1] < settings.startup_grace_s:
        return Outcome("starting", f"restarted {now - restarts[-1]:.0f}s ago; given {settings.startup_grace_s:g}s")
    starting = _starting(env, now, settings.startup_grace_s)
    if starting is not None:
        return starting
    ledger = Ledger(state, config, clock=clock)
    if len(restarts) >= settings.max_restarts_per_hour:
        return _give_up(report, state, config=config, env=env, clock=clock, restarts=restarts, ledger=ledger)
    if restarts:
        wait = settings.backoff_s * 2 ** (len(restarts) - 1)
        if now - restarts[-1] < wait:
            return Outcome("waiting", f"next restart not before {utc_iso(restarts[-1] + wait)} (backoff)")
    second = _probe_again(report, env, clock, confirm_after_s, settings.startup_grace_s)
    if second is not None:
        return second
    now = clock.time()
    argv = list(settings.restart_argv)
    out_fd, not_kept = _open_restart_output(state)
    try:
        done = run(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL if out_fd is None else out_fd,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=settings.restart_timeout_s,
            check=False,
            start_new_session=True,  # what it starts outlives this check
            env=dict(env),
        )
        code, output = done.returncode, _printed(out_fd, done.stdout, done.stderr)
        said = f"exit {code}" + (f": {_last_line(output)}" if code != 0 and output else "")
    except OSError as exc:
        code, output = None, str(exc)
        said = f"could not be started: {exc.strerror or exc}"
    except subprocess.TimeoutExpired as exc:
        code, output = None, _printed(out_fd) or str(exc)
        said = f"stopped after {settings.restart_timeout_s:g}s (health.watchdog.restart_timeout_s): it did not finish"
    finally:
        if out_fd is not None:
            os.close(out_fd)
    restarts.append(now)
    write_json(state.status_file(WATCHDOG_FILE), {"restarts": restarts, "last_output": output, "last_exit": code})
    ledger.record(
        "watchdog",
        task="openclaw-gateway",
        status="restarted" if code == 0 else "restart_failed",
        reason=f"the gateway was down ({gateway.detail}); ran {' '.join(argv)}: {said}",
        attempt=len(restarts),
    )
    action = "restarted" if code == 0 else "restart_failed"
    detail = f"ran {' '.join(argv)} ({said}), restart {len(restarts)} this hour"
    return Outcome(action, detail + (f"; its output was thrown away: {not_kept}" if not_kept else ""))


def restart_output_file(state: StateRoot) -> Path:
    """logs/gateway-restart.out: the restart command's stdout and stderr, then whatever the processes it left
    running (a gateway started in the background) print."""
    return state.sub(layout.LOGS) / layout.RESTART_OUTPUT


def _open_restart_output(state: StateRoot) -> tuple[int | None, str | None]:
    """The restart output file, emptied, for the next restart's output: (its fd, None). When it cannot be used (a
    link, FIFO or folder planted there, a read-only disk): (None, why), and the restart runs with its output thrown
    away; a planted file never blocks a restart, and is never written through."""
    path = restart_output_file(state)
    try:
        fd = open_append(path)  # never through a link; O_APPEND: see RESTART_OUTPUT_CAP
    except (OSError, StateError) as exc:
        return None, str(exc)
    try:
        os.ftruncate(fd, 0)  # this restart's output only, and what it leaves running prints after
    except OSError as exc:
        os.close(fd)
        return None, f"cannot empty {path}: {exc.strerror or exc}"
    return fd, None


def _printed(fd: int | None, *returned: str | None) -> str:
    """What the restart command printed: the end of the output file (read from its end: a gateway may have filled
    it), then any text the runner returned (a runner of the `subprocess.run` kind that captured it)."""
    text = ""
    if fd is not None:
        want = RESTART_OUTPUT_KEEP * 4  # characters of up to 4 bytes each
        with contextlib.suppress(OSError):
            text = os.pread(fd, want, max(0, os.fstat(fd).st_size - want)).decode("utf-8", errors="replace")
    text += "".join(part for part in returned if part)
    return text.strip()[-RESTART_OUTPUT_KEEP:]


def _bound_restart_output(state: StateRoot) -> None:
    """Empty the restart output file when it is past RESTART_OUTPUT_CAP (one lstat when it is not). Only the plain
    file itself: a link planted there is left alone, never followed (open_file refuses it, and a hard link)."""
    path = restart_output_file(state)
    try:
        info = os.lstat(path)
    except OSError:
        return
    if not stat.S_ISREG(info.st_mode) or info.st_size <= RESTART_OUTPUT_CAP:
        return
    try:
        fd = open_file(path, os.O_WRONLY, doing="empty")
    except (OSError, StateError) as exc:
        logger.warning("%s is past %d MiB and was not emptied: %s", path, RESTART_OUTPUT_CAP >> 20, exc)
        return
    try:
        os.ftruncate(fd, 0)
    except OSError as exc:
        logger.warning("%s is past %d MiB and was not emptied: %s", path, RESTART_OUTPUT_CAP >> 20, exc)
    finally:
        os.close(fd)


def _last_line(output: str, limit: int = 200) -> str:
    """The last line a command printed, on one line and at most `limit` characters (its error, as a rule)."""
    lines = [line for line in output.splitlines() if line.strip()]
    last = " ".join(lines[-1].split()) if lines else ""
    return last if len(last) <= limit else last[: limit - 1] + "…"


def run_restart(
    argv: Sequence[str],
    *,
    timeout: float,
    env: Mapping[str, str] | None = None,
    stdout: int | None = None,
    **_: Any,
) -> subprocess.CompletedProcess[str]:
    """Run the restart command until it exits, its stdout and stderr both to the fd `stdout` (the watchdog's: the
    restart output file; /dev/null when None); TimeoutExpired (the command killed) after `timeout` seconds.

    Never a pipe: a command that starts the gateway in the background (`nohup openclaw gateway run &`, a
    supervisor's start script) leaves the gateway holding its output, and a pipe closed once the command exited
    killed that gateway at its next line (SIGPIPE, or EPIPE, which Node dies of). A file takes its lines for as
    long as it runs, and nothing waits on them: this is done when the command exits. It runs in a session of its
    own, so what it starts outlives this check. The other keyword arguments `subprocess.run` takes are accepted,
    as the watchdog's `run` is either; no output is returned (it is in the file)."""
    proc = subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL if stdout is None else stdout,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env=None if env is None else dict(env),
    )
    try:
        code = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()  # the command alone: a gateway it started is in its session, and may be coming up
        proc.wait()
        raise subprocess.TimeoutExpired(list(argv), timeout) from None
    return subprocess.CompletedProcess(list(argv), code, "", "")


def _starting(env: Mapping[str, str], now: float, grace_s: float) -> Outcome | None:
    """ "starting" when OpenClaw's latest lifecycle line is a start or restart younger than `grace_s`."""
    lifecycle = latest_lifecycle(env)
    if lifecycle and lifecycle[0] in ("starting", "restarting") and now - lifecycle[1] < grace_s:
        what = "a start" if lifecycle[0] == "starting" else "a restart"
        return Outcome("starting", f"OpenClaw logged {what} {now - lifecycle[1]:.0f}s ago; left alone")
    return None


def _probe_again(report: Report, env: Mapping[str, str], clock: Clock, wait_s: float, grace_s: float) -> Outcome | None:
    """Wait `wait_s`, then look again: an Outcome when the gateway is live or (re)starting now, else None."""
    clock.sleep(wait_s)
    live = check_gateway(report.settings, clock)[0]
    if live.status == OK:
        return Outcome("healthy", f"live again on a second probe {wait_s:g}s later; not restarted")
    return _starting(env, clock.time(), grace_s)


def _give_up(
    report: Report,
    state: StateRoot,
    *,
    config: Config,
    env: Mapping[str, str],
    clock: Clock,
    restarts: Sequence[float],
    ledger: Ledger,
) -> Outcome:
    """The hour's restarts are spent and the gateway is still down: a fix record for a person."""
    try:
        data = read_json(state.status_file(WATCHDOG_FILE)) or {}
    except StateError:
        data = {}
    output = str(data.get("last_output") or "") if isinstance(data, dict) else ""
    good = config_changed_since_good(state, env)
    current = openclaw_config.config_path(env)
    gateway = report.check("gateway")
    error = f"the OpenClaw gateway stayed down after {len(restarts)} restart(s) within the hour"
    tail = [f"health check: {gateway.detail if gateway else 'gateway not live'}"]
    if output:
        tail.append(f"last restart said: {output}")
    if good is not None:
        tail.append(f"{current} changed since the last healthy check; last-known-good copy: {good}")
    evidence = Evidence(
        task="openclaw-gateway",
        kind="task",
        error=error + (f": {output.splitlines()[-1]}" if output else ""),
        error_class="fatal",
        occurrence=f"watchdog:{int(restarts[0])}" if restarts else "watchdog",
        failures=len(restarts),
        log_tail=tail,
        target="openclaw-gateway",
        detail={"restarts": [utc_iso(t) for t in restarts], "good_config": str(good) if good else None},
    )
    healer = Healer(config=config, state=state, clock=clock, use_model=False, env=env)
    result = healer.heal(evidence)
    record = result.record
    steps = [
        "read the gateway's own log and `openclaw gateway status --deep` for why it does not start",
        "run `openclaw doctor --lint --json` (read-only) for configuration findings",
    ]
    if good is not None:
        steps.insert(
            0,
            f"openclaw.json changed since the gateway was last healthy: compare {current} with {good}; "
            f"`self_heal.py --apply {record.id}` puts that copy back (the current file is kept beside it)",
        )
        record.actions = ["restore_openclaw_config"]
    record.root_cause = error
    record.problems = [error]
    record.fix_steps = steps
    record.success_criteria = "the health check finds the gateway live again"
    record.source, record.confidence, record.area = "watchdog", 0.7, "infra"
    record.review = {"verdict": READY, "objections": [], "by": "the gateway watchdog"}
    record.evidence = {**record.evidence, "good_config": str(good) if good else None, "config": str(current)}
    healer.store.save(record)
    if result.counted:
        ledger.record("watchdog", task="openclaw-gateway", status="gave_up", reason=f"{record.id}: {error}")
    return Outcome("gave_up", f"{error}; see {record.id}", record.id)
