"""The health check: is the OpenClaw gateway live, do the skills still report, is anything stuck, is there room.

Each check gives a status (`ok`, `warn`, `fail`, `skip`: not applicable here) and a one-line detail:

  gateway        GET /healthz must answer 200 with OpenClaw's JSON (`{"ok": true, ...}`). The gateway answers
                 any unknown path with its HTML control page and status 200, so the status code alone proves
                 nothing: an HTML page, or anything that is not that JSON, fails.
  gateway_ready  GET /readyz: `{"ready": true}`; warns while the gateway starts, drains or names failing parts.
  status_files   the skill's own status/*.json and other skills' status files (`*.txt` of `key=value` pairs,
                 the third source document's format, and `*.json`): warns when one was not modified within
                 `health.status_max_age_minutes`, cannot be read, or reports a failure (`status=error`).
  runs           running records in runs/ (retry_run.py, workflow steps, task runs): warns when a run's
                 supervisor is gone (dead), or it shows no heartbeat, or no output, for `health.stuck_after_s`.
  tasks          the task tree's PROCESSING tasks that are stuck or whose runner died (`taskrun.find_stuck`);
                 on a full disk or a read-only folder the tree is read without writing, and the detail says so.
  breakers       warns while a circuit breaker is open or half-open.
  disk           warns below `health.disk_min_free_mb` free under the state root.
  gpu            warns below `models.gpu_free_mb_min` free on the roomiest GPU; skipped without nvidia-smi.

The mode, from those:

  down         the gateway is not live, and nothing shows the skills still at work: no status file fresh,
               no run in progress (exit 3);
  degraded     the gateway is not live but the skills still work (the third document's graceful-degradation
               mode), or any check warns (exit 1);
  operational  the gateway is live and no check warns (exit 0).

Every run writes status/health.json (atomically, 0600) and, only when the mode changed (or on the first
run), one `[HEALTH]` ledger event and log line. Nothing else is written, except that a run record or
task file that cannot be parsed is moved aside by the readers shared with the rest of self-heal; no
process is ever signalled, and other skills' status files are only read.

Start-up cost matters: cron runs this every few minutes, and a check that costs more than the failures it
finds is not run. The settings it uses (the `health` section, resolved paths and the gateway URL) are
kept in health.json with the inputs they came from: skill.yaml, the user's config file and openclaw.json
(path, mtime, size, inode) and the environment variables that choose them. While those are unchanged, a
run reads no YAML and imports neither the configuration loader nor PyYAML; any change reloads and
re-validates everything, so a bad value is still reported (exit 2) on the first run after the edit.
Expensive modules are imported only when there is work for them: http.client once something listens on
the gateway's port, psutil once a run is in progress, the task tree once it has tasks.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import socket
import stat
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from ..clock import SYSTEM_CLOCK, Clock, utc_iso
from ..errors import (
    ConfigError,
    CorruptStateError,
    FleetUnavailable,
    NotAttempted,
    SelfHealError,
    StateError,
    StateWriteError,
    UnsafeStateError,
)
from ..models import gpu
from ..state import layout
from ..state.inert import inert
from ..state.layout import SUBDIRS
from ..state.root import (
    NotRegularFile,
    StateRoot,
    json_number,
    open_read,
    open_regular,
    openclaw_state_dir,
    quarantine,
    read_json,
    top_level_is,
    write_json,
)
from ..state.skill_status import STATUS_FILE_NAME, read_status, status_path, update_status

# Not typing's TYPE_CHECKING, NamedTuple: the cron check never imports typing (see selfheal/_typing.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NamedTuple

    from _typeshed import WriteableBuffer

    from ..core.config import Config
    from ..state.breakers import BreakerState
    from ..state.runs import RunState
else:
    from .._typing import NamedTuple

OK, WARN, FAIL, SKIP = "ok", "warn", "fail", "skip"
OPERATIONAL, DEGRADED, DOWN = "operational", "degraded", "down"
MODES = (OPERATIONAL, DEGRADED, DOWN)
EXIT_CODES = {OPERATIONAL: 0, DEGRADED: 1, DOWN: 3}
DEFAULT_GATEWAY_PORT = 18789  # OpenClaw's own default: --port, then OPENCLAW_GATEWAY_PORT, gateway.port, 18789
HEALTH_FILE = "health"  # status/health.json
CRON_MAX_LINES = 5  # OpenClaw's cron posts whatever a command prints: keep the message short
NO_REPLY = "NO_REPLY"  # the token OpenClaw's cron reads as "nothing to post"
STATUS_SUFFIXES = (".txt", ".json")
STATUS_READ_MAX = 65536  # bytes of a status file read; the pairs that matter come first
BODY_READ_MAX = 65536  # bytes of a gateway answer read
GPU_QUERY_TIMEOUT_S = 10.0  # nvidia-smi can take a second or more on a busy machine
NAMES_SHOWN = 3  # names listed in a detail line before "and N more"
# A status or state value that says the skill is failing (compared in lower case).
FAILURE_WORDS = frozenset({"error", "failed", "failure", "fail", "down", "crashed", "dead", "unhealthy"})
_CACHE_VERSION = 2
# The environment variables that choose the files the settings come from, and the gateway port.
_ENV_INPUTS = ("SELFHEAL_CONFIG", "OPENCLAW_CONFIG_PATH", "OPENCLAW_STATE_DIR", "OPENCLAW_GATEWAY_PORT", "HOME")
# The URL forms config.health.gateway_url accepts (config._check_url); a derived URL is always one.
_URL = re.compile(r"(https?)://([^\s/:]+)(?::(\d{1,5}))?(/\S*)?\Z")
# `status=success,timestamp=Sat Mar 1 01:09:00 CST 2026`: pairs split at commas that start another key=.
_PAIR_SPLIT = re.compile(r",(?=\s*[A-Za-z_][\w.-]*=)")


class Check(NamedTuple):
    """One check's verdict: `status` is ok, warn, fail or skip; `data` holds its figures for health.json."""

    name: str
    status: str
    detail: str
    data: Mapping[str, Any] = {}

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "detail": self.detail, **self.data}


class Settings(NamedTuple):
    """What the checks use, resolved from the configuration and the environment. Times in seconds."""

    gateway_url: str
    gateway_source: str  # where the URL or port came from, for the detail line
    timeout_s: float
    status_dirs: tuple[str, ...]  # other skills' status folders, absolute; the skill's own status/ is implied
    status_max_age_s: float
    stuck_after_s: float
    disk_min_free_mb: int
    gpu_min_free_mb: int
    fleet: bool = False  # store.url is set: check the fleet's database too
    live_path: str = "/healthz"  # health.live_path
    ready_path: str | None = "/readyz"  # health.ready_path; None: no readiness probe
    watchdog: bool = False  # health.watchdog.enabled: health_check.py then acts on a gateway that is down
    cron_retry: bool = False  # health.cron_retry.jobs is not empty: health_check.py retries those jobs

    def to_json(self) -> dict[str, Any]:
        data = self._asdict()
        data["status_dirs"] = list(self.status_dirs)
        return data

    @classmethod
    def from_json(cls, data: object) -> Settings | None:
        """Settings kept in an earlier health.json, or None if they do not have exactly this shape."""
        if not isinstance(data, dict) or set(data) != set(cls._fields):
            return None
        try:
            return cls(
                gateway_url=str(data["gateway_url"]),
                gateway_source=str(data["gateway_source"]),
                live_path=str(data["live_path"]),
                ready_path=str(data["ready_path"]) if data["ready_path"] is not None else None,
                watchdog=bool(data["watchdog"]),
                cron_retry=bool(data["cron_retry"]),
                timeout_s=float(data["timeout_s"]),
                status_dirs=tuple(str(d) for d in data["status_dirs"]),
                status_max_age_s=float(data["status_max_age_s"]),
                stuck_after_s=float(data["stuck_after_s"]),
                disk_min_free_mb=int(data["disk_min_free_mb"]),
                gpu_min_free_mb=int(data["gpu_min_free_mb"]),
                fleet=bool(data["fleet"]),
            )
        except (TypeError, ValueError):
            return None


class Report(NamedTuple):
    """The outcome of one health check: the mode, every check, and what health.json records."""

    mode: str
    reason: str
    checks: tuple[Check, ...]
    checked_ts: float
    duration_s: float
    previous_mode: str | None
    mode_since_ts: float
    settings: Settings
    health_file: str

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.mode]

    @property
    def changed(self) -> bool:
        return self.mode != self.previous_mode

    def check(self, name: str) -> Check | None:
        return next((c for c in self.checks if c.name == name), None)

    def problems(self) -> list[Check]:
        """The checks that failed, then those that warn, each group in check order."""
        return [c for c in self.checks if c.status == FAIL] + [c for c in self.checks if c.status == WARN]

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.mode == OPERATIONAL,
            "mode": self.mode,
            "exit_code": self.exit_code,
            "reason": self.reason,
            "checked_at": utc_iso(self.checked_ts),
            "checked_ts": round(self.checked_ts, 3),
            "duration_s": round(self.duration_s, 4),
            "previous_mode": self.previous_mode,
            "changed": self.changed,
            "mode_since": utc_iso(self.mode_since_ts),
            "mode_since_ts": round(self.mode_since_ts, 3),
            "checks": [c.to_json() for c in self.checks],
            "settings": self.settings.to_json(),
        }

    def cron_text(self) -> str:
        """OpenClaw's cron convention: `NO_REPLY` when all is well, else at most CRON_MAX_LINES lines.

        Details quote what others wrote (whatever answers on the gateway's port, other skills' file names): made
        inert, as every report for a terminal is, so cron's mail or a terminal shows their controls, never obeys."""
        if self.mode == OPERATIONAL:
            return NO_REPLY
        since = "" if self.changed else f" since {utc_iso(self.mode_since_ts)}"
        lines = [f"self-heal health: {self.mode.upper()}{since}: {self.reason}"]
        problems = self.problems()
        room = CRON_MAX_LINES - 1
        if len(problems) > room:
            shown = problems[: room - 1]
            rest = [c.name for c in problems[room - 1 :]]
            where = f"see {self.health_file}"
            if any(c.name == "health_file" and c.data.get("written") is False for c in problems):  # a full disk
                where = f"health_check.py shows them ({self.health_file} could not be written)"
            tail = f"and {len(rest)} more ({', '.join(rest)}): {where}"
        else:
            shown, tail = problems, None
        lines += [_one_line(f"{c.name}: {c.detail}") for c in shown]
        if tail:
            lines.append(tail)
        return inert("\n".join(lines))

    def table(self) -> str:
        """For people: the mode, then one line per check (inert, as cron_text)."""
        width = max(len(c.name) for c in self.checks)
        lines = [f"{self.mode}: {self.reason}"]
        lines += [f"  {c.name:<{width}}  {c.status:<4}  {_one_line(c.detail)}" for c in self.checks]
        return inert("\n".join(lines))


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _ago(seconds: float) -> str:
    """`42 s`, `17 min`, `3.5 h`, `2.0 d`."""
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _names(items: list[str]) -> str:
    shown = ", ".join(items[:NAMES_SHOWN])
    return shown + (f" and {len(items) - NAMES_SHOWN} more" if len(items) > NAMES_SHOWN else "")


# -- settings -------------------------------------------------------------------------------------------------


def _port(value: object, *, file: str, key: str) -> int:
    number = int(value.strip()) if isinstance(value, str) and value.strip().isdigit() else value
    if isinstance(number, int) and not isinstance(number, bool) and 1 <= number <= 65535:
        return number
    raise ConfigError(f"must be a TCP port number (1-65535), got {value!r}", file=file, key=key, value=value)


def gateway_url(config: Config, env: Mapping[str, str]) -> tuple[str, str]:
    """The gateway's base URL and where it came from, in OpenClaw's own order of precedence."""
    from ..core.openclaw_config import config_path, read_config  # noqa: PLC0415 - only when the settings are reloaded

    if config.health.gateway_url:
        return config.health.gateway_url.rstrip("/"), "health.gateway_url"
    if env.get("OPENCLAW_GATEWAY_PORT"):
        port = _port(env["OPENCLAW_GATEWAY_PORT"], file="environment", key="OPENCLAW_GATEWAY_PORT")
        return f"http://127.0.0.1:{port}", "OPENCLAW_GATEWAY_PORT"
    gateway = read_config(env).get("gateway")
    if isinstance(gateway, dict) and gateway.get("port") is not None:
        path = str(config_path(env))
        return f"http://127.0.0.1:{_port(gateway['port'], file=path, key='gateway.port')}", f"gateway.port in {path}"
    return f"http://127.0.0.1:{DEFAULT_GATEWAY_PORT}", "OpenClaw's default port"


def settings_from_config(config: Config, env: Mapping[str, str]) -> Settings:
    """The checks' settings from a loaded configuration and the environment (status folders made absolute)."""
    url, source = gateway_url(config, env)
    base = openclaw_state_dir(env)
    dirs = tuple(str(base / Path(d).expanduser()) for d in config.health.status_dirs)
    return Settings(
        gateway_url=url,
        gateway_source=source,
        live_path=config.health.live_path,
        ready_path=config.health.ready_path,
        watchdog=config.health.watchdog.enabled,
        cron_retry=bool(config.health.cron_retry.jobs),
        timeout_s=config.health.timeout_s,
        status_dirs=dirs,
        status_max_age_s=config.health.status_max_age_minutes * 60.0,
        stuck_after_s=config.health.stuck_after_s,
        disk_min_free_mb=config.health.disk_min_free_mb,
        gpu_min_free_mb=config.models.gpu_free_mb_min,
        fleet=config.store.fleet,
    )


def _file_stamp(path: str) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_mtime_ns, st.st_size, st.st_ino]


def _env_stamp(env: Mapping[str, str]) -> dict[str, str | None]:
    stamp = {name: env.get(name) for name in _ENV_INPUTS}
    url = env.get("SELFHEAL_DATABASE_URL")  # it may hold a password: kept as a digest only
    if url:
        import hashlib  # noqa: PLC0415 - fleet mode only: the cron path stays lean

        stamp["SELFHEAL_DATABASE_URL"] = hashlib.sha256(url.encode()).hexdigest()[:16]
    else:
        stamp["SELFHEAL_DATABASE_URL"] = None
    return stamp


def resolve_settings(
    env: Mapping[str, str], previous: Mapping[str, Any] | None
) -> tuple[Settings, dict[str, Any], Config | None]:
    """The settings, reused from the last health.json while their inputs are unchanged, else loaded afresh.

    Returns the settings, the inputs they depend on (kept in health.json), and the loaded Config when it
    was loaded (None when the kept settings were reused). A bad value raises ConfigError.
    """
    if previous is not None:
        inputs = previous.get("config_inputs")
        if (
            isinstance(inputs, dict)
            and inputs.get("version") == _CACHE_VERSION
            and inputs.get("env") == _env_stamp(env)
            and isinstance(inputs.get("files"), dict)
            and all(_file_stamp(str(path)) == stamp for path, stamp in inputs["files"].items())
        ):
            kept = Settings.from_json(previous.get("settings"))
            if kept is not None:
                return kept, inputs, None
    from ..core.config import SKILL_YAML, load_config, user_config_path  # noqa: PLC0415 - PyYAML: only on a change
    from ..core.openclaw_config import config_path  # noqa: PLC0415

    # Stamped before reading: an edit made while loading changes the stamp, so the next run reloads.
    files = {str(p): _file_stamp(str(p)) for p in (SKILL_YAML, user_config_path(env)[0], config_path(env))}
    config = load_config(env=env)
    inputs = {"version": _CACHE_VERSION, "env": _env_stamp(env), "files": files}
    return settings_from_config(config, env), inputs, config


# -- the gateway ------------------------------------------------------------------------------------------------


class _Answer(NamedTuple):
    status: int | None = None
    content_type: str = ""
    body: bytes = b""
    error: str | None = None
    elapsed_ms: float = 0.0


def _why(exc: BaseException, timeout_s: float) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (nothing listens there)"
    if isinstance(exc, TimeoutError):  # socket.timeout is TimeoutError since Python 3.10
        return f"no answer within {timeout_s:g} s"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host ({exc.strerror or exc})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[0].lower() + exc.strerror[1:]
    return f"{type(exc).__name__}: {exc}"


class _Deadline:
    """A connected socket whose every send and read may take only the time left before one deadline for the
    whole request: http.client applies its timeout to each socket operation, so a server that drips a valid
    answer a byte at a time would never trip it. Past the deadline, TimeoutError."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self._sock = sock
        self._deadline = deadline
        self._users = 1  # this connection and each reader made of it: closed when the last one is
        self._closed = False

    def _arm(self) -> None:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request's deadline passed")
        self._sock.settimeout(left)

    def sendall(self, data: bytes) -> None:
        self._arm()
        self._sock.sendall(data)

    def recv_into(self, buffer: WriteableBuffer) -> int:
        self._arm()
        return self._sock.recv_into(buffer)

    def makefile(self, mode: str = "rb", *args: Any, **kwargs: Any) -> io.BufferedReader:
        self._users += 1
        return io.BufferedReader(_DeadlineReader(self))

    def close(self) -> None:
        """http.client closes the connection while its response is still being read (as socket.makefile's
        files keep a socket open, the response's reader keeps this one open until it is closed too)."""
        if not self._closed:
            self._closed = True
            self.release()

    def release(self) -> None:
        self._users -= 1
        if self._users <= 0:
            self._sock.close()


class _DeadlineReader(io.RawIOBase):
    def __init__(self, sock: _Deadline) -> None:
        super().__init__()
        self._sock = sock

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        return self._sock.recv_into(buffer)

    def close(self) -> None:
        if not self.closed:
            self._sock.release()
        super().close()


def http_get(url: str, timeout_s: float, clock: Clock = SYSTEM_CLOCK) -> _Answer:
    """GET `url` once (no retries: a health probe reports what it sees), reading at most BODY_READ_MAX bytes.

    `timeout_s` bounds the whole request (connect, send, and reading the answer), not each step of it."""
    match = _URL.match(url)
    if match is None:
        return _Answer(error=f"not an http:// or https:// URL: {url!r}")
    scheme, host, port_text, path = match.groups()
    port = int(port_text) if port_text else (443 if scheme == "https" else 80)
    started = clock.monotonic()
    deadline = time.monotonic() + timeout_s  # real time: what the sockets wait in

    def left() -> float:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the request's deadline passed")
        return remaining

    # Nothing listening is the usual failure: learn it from a bare socket, so a closed port never pays
    # for importing http.client (about 10 ms, a third of the whole check).
    try:
        # An ASCII host goes as bytes: a str makes getaddrinfo load the idna codec (stringprep, unicodedata).
        address = host.encode() if host.isascii() else host
        socket.create_connection((address, port), timeout=left()).close()  # type: ignore[arg-type]
    except OSError as exc:
        return _Answer(error=_why(exc, timeout_s), elapsed_ms=(clock.monotonic() - started) * 1000)
    import http.client  # noqa: PLC0415

    conn_cls = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
    try:
        conn = conn_cls(host, port, timeout=left())
    except OSError as exc:
        return _Answer(error=_why(exc, timeout_s), elapsed_ms=(clock.monotonic() - started) * 1000)
    resp: http.client.HTTPResponse | None = None
    try:
        conn.connect()
        conn.sock = _Deadline(conn.sock, deadline)
        conn.request("GET", path or "/", headers={"Accept": "application/json", "User-Agent": "self-heal-health"})
        resp = conn.getresponse()
        body = resp.read(BODY_READ_MAX)
        content_type = resp.getheader("Content-Type") or ""
    except (OSError, http.client.HTTPException) as exc:
        return _Answer(error=_why(exc, timeout_s), elapsed_ms=(clock.monotonic() - started) * 1000)
    finally:
        conn.close()
        if resp is not None:
            resp.close()
    return _Answer(resp.status, content_type, body, None, (clock.monotonic() - started) * 1000)


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):  # nested deeper than the parser recurses: not OpenClaw's
        return None
    return data if isinstance(data, dict) else None


def _shape(answer: _Answer) -> str:
    kind = answer.content_type.split(";")[0].strip() or "no content type"
    return f"HTTP {answer.status} with {kind} ({len(answer.body)} bytes)"


def check_gateway(settings: Settings, clock: Clock = SYSTEM_CLOCK) -> list[Check]:
    """Liveness (`health.live_path`, /healthz) and readiness (`health.ready_path`, /readyz) of the gateway."""
    base = settings.gateway_url.rstrip("/")
    live_url, ready_path = base + settings.live_path, settings.ready_path
    data: dict[str, Any] = {"url": base, "source": settings.gateway_source, "live_path": settings.live_path}
    live = http_get(live_url, settings.timeout_s, clock)
    data["elapsed_ms"] = round(live.elapsed_ms, 1)
    body = _json_object(live.body) if live.error is None else None
    if live.error is not None:
        gateway = Check("gateway", FAIL, f"not answering at {base} ({settings.gateway_source}): {live.error}", data)
    elif body is None:
        gateway = Check(
            "gateway",
            FAIL,
            f"{live_url} answered {_shape(live)}, not OpenClaw's JSON health answer: "
            "something else listens on that port, or a proxy answers for it",
            {**data, "http_status": live.status},
        )
    elif live.status != 200 or body.get("ok") is not True:
        gateway = Check(
            "gateway",
            FAIL,
            f"{live_url} answered HTTP {live.status}: {_one_line(json.dumps(body), 200)}",
            {**data, "http_status": live.status, "body": body},
        )
    else:
        gateway = Check("gateway", OK, f"live at {base} ({live.elapsed_ms:.0f} ms)", {**data, "http_status": 200})
    if gateway.status != OK:
        return [gateway, Check("gateway_ready", SKIP, "not asked: the gateway is not live", {"url": base})]

    if ready_path is None:
        return [gateway, Check("gateway_ready", SKIP, "no readiness probe (health.ready_path is null)", {"url": base})]
    ready = http_get(base + ready_path, settings.timeout_s, clock)
    rdata: dict[str, Any] = {"url": base, "http_status": ready.status}
    answer = _json_object(ready.body) if ready.error is None else None
    if ready.error is not None:
        readiness = Check("gateway_ready", WARN, f"{base}{ready_path} did not answer: {ready.error}", rdata)
    elif answer is None:
        readiness = Check("gateway_ready", WARN, f"{base}{ready_path} answered {_shape(ready)}, not JSON", rdata)
    elif answer.get("ready") is True:
        readiness = Check("gateway_ready", OK, "ready", rdata)
    else:
        listed = answer.get("failing")
        failing = [str(f) for f in listed if f is not None] if isinstance(listed, list) else []
        why = f"failing: {', '.join(failing)}" if failing else _one_line(json.dumps(answer), 200)
        readiness = Check(
            "gateway_ready", WARN, f"not ready (HTTP {ready.status}): {why}", {**rdata, "failing": failing}
        )
    return [gateway, readiness]


# -- status files -----------------------------------------------------------------------------------------------


def parse_key_values(text: str) -> dict[str, str]:
    """The third source document's status format: `key=value` pairs, one per line or comma-separated.

    `status=success,timestamp=Sat Mar 1 01:09:00 CST 2026` gives two pairs; a comma not followed by
    another `key=` stays in the value. Blank lines, `#` comments and lines without `=` are skipped.
    """
    pairs: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        for part in _PAIR_SPLIT.split(line):
            key, sep, value = part.partition("=")
            if sep and key.strip():
                pairs[key.strip()] = value.strip()
    return pairs


def read_status_file(path: str, *, own: bool = False) -> tuple[dict[str, Any], str | None]:
    """A status file's values and the problem that made it unreadable (None when it was read). `own`: one of
    self-heal's own (the state root's status/), read as a state file: never through a link planted at it or at a
    folder above it (its target was read, and what it said reported as self-heal's own failure)."""
    try:
        # Checked on the open fd, never waited on: the listing saw a file, but another skill's folder may hold a
        # FIFO there by now, and a plain open() of one waits for a writer, the cron check with it, for good.
        fd = open_read(Path(path)) if own else open_regular(path)[0]
        with os.fdopen(fd, "rb") as fh:
            raw = fh.read(STATUS_READ_MAX)
    except UnsafeStateError as exc:  # `own` only: a link (or a FIFO) at the file, or a link at a folder above it
        return {}, exc.problem if exc.path == Path(path) else str(exc)
    except NotRegularFile as exc:
        return {}, f"is {exc.kind}, not a status file"
    except OSError as exc:
        return {}, f"cannot be read ({exc.strerror or exc})"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return {}, "is not UTF-8 text"
    if path.endswith(".json"):
        try:
            data = json.loads(text)
        except ValueError as exc:
            return {}, f"is not valid JSON ({exc})"
        except RecursionError:  # `[[[[...` past the parser's recursion limit: another skill's file, never a crash
            return {}, "is not valid JSON (nested too deep)"
        if not isinstance(data, dict):
            return {}, f"holds a JSON {type(data).__name__}, not an object"
        return data, None
    pairs = parse_key_values(text)
    if not pairs and text.strip():
        return {}, "has no key=value lines"
    return pairs, None


def _reports_failure(values: Mapping[str, Any]) -> str | None:
    """`status=error` (or state=...), or JSON `"ok": false`: the skill says it is failing."""
    for key in ("status", "state"):
        value = values.get(key)
        if isinstance(value, str) and value.strip().lower() in FAILURE_WORDS:
            return f"{key}={value.strip()}"
    if values.get("ok") is False:
        return "ok=false"
    return None


def check_status_files(own_dir: Path, other_dirs: Iterable[Path], max_age_s: float, now: float) -> tuple[Check, int]:
    """Freshness and content of every status file; also returns how many are fresh (a sign of life).

    Everything under self-heal's own status folder (`own_dir`, the state root's `status/`) is self-heal's
    own bookkeeping (health.json, watchdog.json, cron_retry.json, and any file added there later): it is
    written by self-heal itself when it acts, so it is never a sign of another skill's life, and it is never
    stale (it changes when something happens, not on a schedule). It is still read: a file there that cannot
    be read or that reports a failure warns. Freshness is judged for other skills' folders only.
    """
    folders = [(own_dir, (".json",), True)] + [(Path(d), STATUS_SUFFIXES, False) for d in other_dirs]
    total = fresh = 0
    newest: float | None = None
    stale: list[tuple[str, float]] = []
    failing: list[tuple[str, str]] = []
    unreadable: list[tuple[str, str]] = []
    for folder, suffixes, own in folders:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except FileNotFoundError:
            continue
        except OSError as exc:
            unreadable.append((str(folder), f"cannot be listed ({exc.strerror or exc})"))
            continue
        for entry in entries:
            name = entry.name
            if name.startswith(".") or not name.endswith(suffixes) or (own and name == f"{HEALTH_FILE}.json"):
                continue
            if not own and name == STATUS_FILE_NAME:
                continue  # self-heal's own line for other skills' scripts: the health check itself writes it
            try:
                info = entry.stat()
            except OSError:
                continue  # removed while we looked
            if not stat.S_ISREG(info.st_mode):
                continue
            total += 1
            age = max(0.0, now - info.st_mtime)
            newest = age if newest is None else min(newest, age)
            if own:
                pass  # self-heal's own bookkeeping: see check_status_files
            elif age <= max_age_s:
                fresh += 1
            else:
                stale.append((entry.path, age))
            values, problem = read_status_file(entry.path, own=own)
            if problem is not None:
                unreadable.append((entry.path, problem))
            elif (said := _reports_failure(values)) is not None:
                failing.append((entry.path, said))
    data: dict[str, Any] = {
        "dirs": [str(own_dir), *map(str, other_dirs)],
        "files": total,
        "fresh": fresh,
        "max_age_s": max_age_s,
        "stale": [{"file": f, "age_s": round(a, 1)} for f, a in stale],
        "failing": [{"file": f, "says": s} for f, s in failing],
        "unreadable": [{"file": f, "problem": p} for f, p in unreadable],
    }
    if total == 0 and not unreadable:
        return Check("status_files", SKIP, f"no status files in {', '.join(data['dirs'])}", data), 0
    parts = []
    if stale:
        oldest = sorted(stale, key=lambda s: -s[1])
        named = [f"{Path(f).name} ({_ago(a)})" for f, a in oldest]
        parts.append(f"{len(stale)} of {total} stale (not updated for over {_ago(max_age_s)}): {_names(named)}")
    if failing:
        parts.append("failure reported by " + _names([f"{Path(f).name} ({s})" for f, s in failing]))
    if unreadable:
        parts.append("unreadable: " + _names([f"{f} {p}" for f, p in unreadable]))
    if parts:
        return Check("status_files", WARN, "; ".join(parts), data), fresh
    detail = f"{total} status file(s), all updated within {_ago(max_age_s)} (newest {_ago(newest or 0.0)} ago)"
    return Check("status_files", OK, detail, data), fresh


# -- runs, tasks, breakers ---------------------------------------------------------------------------------------


def judge_run(record: RunState, now: float, limit_s: float, gone: Callable[[RunState], bool]) -> str | None:
    """Why a running record is not really running (dead or stuck), or None when it looks alive.

    `gone(record)` says whether its supervisor is known to have died (RunState.supervisor_gone, the one
    liveness rule). A retry wait writes no heartbeats (the record says when the wait ends), so a waiting
    run is judged by that time.
    """
    if record.supervisor is not None and gone(record):
        return f"dead: its supervisor (pid {record.supervisor.pid}) is gone and the run never finished"
    started = record.started_ts or 0.0
    if record.phase == "waiting" and record.next_attempt_ts is not None:
        overdue = now - record.next_attempt_ts
        if overdue > limit_s:
            return f"stuck: its retry wait ended {_ago(overdue)} ago and no attempt started"
        return None
    beat_age = now - max(record.last_heartbeat_ts or 0.0, started)
    if beat_age > limit_s:
        return f"stuck: no heartbeat for {_ago(beat_age)}"
    if record.phase == "running":
        child = record.child
        since = max(record.last_output_ts or 0.0, started, (child.create_time or 0.0) if child else 0.0)
        idle = now - since
        if idle > limit_s:
            pid = f", pid {child.pid}" if child is not None and child.pid else ""
            return f"stuck: no output for {_ago(idle)} (attempt {record.attempt}{pid})"
    return None


# A finished run record's status (state/runs.py's FINISHED, not imported: that module is what is spared).
_FINISHED = "finished"


def _may_be_running(folder: Path) -> bool:
    """Whether runs/ holds a record that is not finished by its bytes. Every task run and retry_run.py
    leaves its finished record there for days (process.keep_finished_runs_days): looking at their bytes
    spares the cron check the record module's imports (dataclasses, inspect, typing, logging: a quarter of
    its cost). The same test of the bytes as list_runs makes (state.root.top_level_is). Stops at the first
    record that may be running; any trouble reading one counts as that, and list_runs, which reads it
    properly, deals with it."""
    try:
        entries = [e.path for e in os.scandir(folder) if e.name.endswith(".json")]
    except OSError:  # missing (nothing has run yet), or not a folder: list_runs finds no record either
        return False
    return not all(top_level_is(Path(path), "status", _FINISHED) for path in entries)


def check_runs(
    state: StateRoot,
    limit_s: float,
    now: float,
    *,
    gone: Callable[[RunState], bool] | None = None,
) -> tuple[Check, int]:
    """Runs in progress (runs/*.json): dead or stuck ones warn; also returns how many look alive."""
    folder = state.sub(layout.RUNS)
    if not _may_be_running(folder):
        return Check("runs", OK, "no run in progress", {"running": 0, "limit_s": limit_s, "problems": []}), 0
    from ..core.runs import list_runs  # noqa: PLC0415 - only when a record may be running

    host = socket.gethostname()
    running = list_runs(state, running_only=True)
    problems = []
    for record in running:
        why = judge_run(record, now, limit_s, gone or (lambda r: r.supervisor_gone(host)))
        if why is not None:
            name = record.task or record.run_id
            problems.append({"run_id": record.run_id, "task": record.task, "why": why, "name": name})
    data = {"running": len(running), "limit_s": limit_s, "problems": problems}
    live = len(running) - len(problems)
    if problems:
        detail = f"{len(problems)} of {len(running)} run(s) in progress not moving: " + _names(
            [f"{p['name']} {p['why']}" for p in problems]
        )
        return Check("runs", WARN, detail, data), live
    if not running:
        return Check("runs", OK, "no run in progress", data), 0
    return Check("runs", OK, f"{len(running)} run(s) in progress, all moving", data), live


def check_tasks(
    state: StateRoot, config: Callable[[], Config], clock: Clock, now: float, *, fleet: bool = False
) -> Check:
    """The task tree's stuck or orphaned PROCESSING tasks (read-only: run-next and check-stuck act on them).
    In fleet mode, this host's runs in the shared tree; with its database down, a warning that this host
    claims nothing from it. On a full disk or a read-only folder the tree is read without writing
    (TaskDB.open_to_read), and the detail says so: a full disk at night is when a stuck task most needs
    reporting."""
    db_path = state.task_db
    if fleet:  # the shared tree: read through the task store below
        pass
    elif db_path.exists():
        # The common case, read cheaply from the state layer: no task is running, so none can be stuck.
        from ..state.taskdb import READ_WAIT_S, TaskDB  # noqa: PLC0415 - only when there is a task tree
        from ..state.taskstates import PROCESSING  # noqa: PLC0415

        try:
            db = TaskDB(db_path, busy_timeout_s=READ_WAIT_S).open_to_read()
            try:
                running = db.in_state(PROCESSING)
                full = db.unwritable
            finally:
                db.close()
        except SelfHealError as exc:  # an unreadable or too new database
            return Check("tasks", WARN, f"the task tree cannot be read: {exc}", {"stuck": [], "error": str(exc)})
        if not running:
            return _tasks_check([], [], full, [])
    else:
        try:
            has_tasks = any(
                e.name.endswith(".json") and not e.name.startswith(".") for e in os.scandir(state.sub(layout.TASKS))
            )
        except (FileNotFoundError, NotADirectoryError):  # none yet; a root that is no folder: state_root says so
            has_tasks = False
        except OSError as exc:
            why = f"cannot read {state.sub(layout.TASKS)}: {exc.strerror or exc}"
            return Check("tasks", WARN, f"the task tree cannot be read: {why}", {"stuck": [], "error": why})
        if not has_tasks:
            return Check("tasks", OK, "no tasks", {"stuck": []})
    from ..tasks.run import find_stuck  # noqa: PLC0415 - the task tree's code: only when there are tasks
    from ..tasks.tree import TaskStore  # noqa: PLC0415

    store = TaskStore(state, config(), clock)
    try:
        store.open_to_read()
        full = store.db.unwritable
        found = find_stuck(store, now=now)
    except NotAttempted as exc:  # fleet mode, the database down (FleetTreeDown)
        return Check("tasks", WARN, _one_line(str(exc)), {"stuck": [], "error": str(exc), "reachable": False})
    except SelfHealError as exc:  # an unreadable or too new database, a JSON tree that cannot be imported
        return Check("tasks", WARN, f"the task tree cannot be read: {exc}", {"stuck": [], "error": str(exc)})
    finally:
        store.close()
    described = [
        f"{f.task} (runner gone)" if f.kind == "dead" else f"{f.task} (no output for {_ago(f.idle_s)})" for f in found
    ]
    return _tasks_check([f.to_json() for f in found], described, full, list(store.problems))


def _tasks_check(
    stuck: list[dict[str, Any]], described: list[str], full: StateWriteError | None, unreadable: list[str]
) -> Check:
    """The tasks check from what was found: the stuck tasks (as JSON, and as the detail names them), the task
    files that could not be read, and why the tree was read without writing (a full disk, a read-only folder;
    None: it was not)."""
    data: dict[str, Any] = {"stuck": stuck, "unreadable": unreadable}
    parts = []
    if described:
        parts.append(f"{len(described)} stuck: {_names(described)}")
    if unreadable:
        parts.append(f"{len(unreadable)} unreadable task file(s): {_names(unreadable)}")
    detail = "; ".join(parts) or "no task is stuck"
    if full is not None:
        data["unwritable"] = str(full)
        detail += f"; the task tree was read without writing ({full.path}: {full.reason})"
    return Check("tasks", WARN if parts else OK, detail, data)


def check_breakers(state: StateRoot, now: float, fleet: list[dict[str, Any]] | None = None) -> Check:
    """Open and half-open circuit breakers, read from breakers/*.json under their shared lock, never writing;
    in fleet mode, the fleet's rows (`fleet`: their records, as check_fleet read them).

    (Breakers.status() takes each breaker's exclusive lock and may save expired entries; a health check only
    looks, and does not import the breaker module.)
    """
    records: list[BreakerState] = []
    unreadable: list[str] = []
    paths: list[Path] = []
    if fleet is None:  # this host's files (in fleet mode the rows come read)
        with contextlib.suppress(FileNotFoundError):
            folder = state.sub(layout.BREAKERS)
            paths = sorted(Path(e.path) for e in os.scandir(folder) if e.name.endswith(".json") and e.name[0] != ".")
        if not paths:  # nothing to read: the record (a dataclass: 10 ms of imports) is not loaded
            return Check("breakers", OK, "no breakers", {"breakers": 0, "not_closed": [], "unreadable": []})
    from ..state.breakers import CLOSED, OPEN, read_breaker  # noqa: PLC0415

    if fleet is not None:
        for row in fleet:
            if row.get("record") is not None:
                records.append(row["record"])
            else:
                unreadable.append(f"{row.get('target')} ({row.get('unreadable')})")
    else:
        for path in paths:
            try:
                found = read_breaker(path)  # rewritten in place: read under a shared lock
            except (OSError, StateError) as exc:  # a planted link is refused, not read; check_state_root names it
                unreadable.append(f"{path.name} ({getattr(exc, 'detail', exc)})")
            else:
                if found is not None:
                    records.append(found)
    not_closed: list[dict[str, Any]] = []
    lines: list[str] = []  # `vendor-api open until 2026-11-21T03:13:00Z (5 consecutive failures (transient))`
    for data in records:
        state_now = data.effective_state(now)
        if state_now != CLOSED:
            target, reason, open_until = data.target, data.reason, data.open_until
            not_closed.append({"target": target, "state": state_now, "open_until": open_until, "reason": reason})
            until = f" until {utc_iso(open_until)}" if state_now == OPEN and open_until else ""
            lines.append(f"{target} {state_now.replace('_', '-')}{until}" + (f" ({reason})" if reason else ""))
    result = {"breakers": len(records) + len(unreadable), "not_closed": not_closed, "unreadable": unreadable}
    if fleet is not None:
        result["fleet"] = True
    parts = []
    if not_closed:
        parts.append(_names(lines))
    if unreadable:
        parts.append("unreadable: " + _names(unreadable))
    if parts:
        return Check("breakers", WARN, "; ".join(parts), result)
    count = result["breakers"]
    where = " in the fleet" if fleet is not None else ""
    return Check("breakers", OK, f"{count} breaker(s){where}, all closed" if count else "no breakers" + where, result)


# -- the state root ---------------------------------------------------------------------------------------------

_LINKS_SHOWN = 5
_OTHERS_WRITE = 0o022  # what lets someone else plant a link


def check_state_root(root: Path) -> Check:
    """Whether the state root is safe to write: this user's own, writable by nobody else, with no symbolic
    link in it (which self-heal refuses to write through; someone may have planted it). Looks only: modes
    are tightened to 0700 by the next writer, links are left for a person. Another user's root fails
    (nothing can be recorded); folders others may write to, and links, warn."""
    me = os.geteuid() if hasattr(os, "geteuid") else None
    try:
        info = os.stat(root)  # the root itself may be reached through a link the user chose
    except FileNotFoundError:
        return Check("state_root", OK, f"{root} not created yet", {"root": str(root)})
    except OSError as exc:
        return Check("state_root", FAIL, f"cannot look at {root}: {exc.strerror or exc}", {"root": str(root)})
    if not stat.S_ISDIR(info.st_mode):
        return Check("state_root", FAIL, f"{root} is not a folder", {"root": str(root)})
    if me is not None and info.st_uid != me:
        return Check(
            "state_root",
            FAIL,
            f"{root} is owned by another user (uid {info.st_uid}, not {me}): self-heal refuses to use it",
            {"root": str(root), "owner": info.st_uid},
        )
    loose: list[str] = []
    links: list[str] = []
    foreign: list[str] = []
    if stat.S_IMODE(info.st_mode) & _OTHERS_WRITE:
        loose.append(f"{root} ({stat.S_IMODE(info.st_mode):04o})")
    # With the folders made on first use (fleet mode, the watchdog's copies, the model cache): a link in them is
    # refused by their writers all the same, and is as much a sign of a plant.
    for name in (*SUBDIRS, layout.FLEET, layout.OPENCLAW_CONFIGS, layout.MODEL_CACHE):
        folder = root / name
        try:
            sub = os.lstat(folder)
        except OSError:
            continue
        if stat.S_ISLNK(sub.st_mode):
            links.append(f"{folder} -> {os.readlink(folder)}")
            continue
        if me is not None and sub.st_uid != me:
            foreign.append(f"{folder} (uid {sub.st_uid})")
            continue
        if stat.S_IMODE(sub.st_mode) & _OTHERS_WRITE:
            loose.append(f"{folder} ({stat.S_IMODE(sub.st_mode):04o})")
        try:
            with os.scandir(folder) as entries:  # d_type: no stat per file
                links.extend(f"{e.path} -> {os.readlink(e.path)}" for e in entries if e.is_symlink())
        except OSError:
            continue
    data = {"root": str(root), "links": links, "loose": loose, "foreign": foreign}
    if foreign:
        return Check("state_root", FAIL, f"folders owned by another user: {_names(foreign)}", data)
    parts = []
    if links:
        shown = links[:_LINKS_SHOWN] + ([f"{len(links) - _LINKS_SHOWN} more"] if len(links) > _LINKS_SHOWN else [])
        parts.append(f"{len(links)} symbolic link(s), refused by every writer (planted?): {', '.join(shown)}")
    if loose:
        parts.append(f"writable by other users (the next write makes them 0700): {', '.join(loose)}")
    if parts:
        return Check("state_root", WARN, "; ".join(parts), data)
    return Check("state_root", OK, f"{root} is private (0700) and holds no links", data)


# -- disk and GPU ------------------------------------------------------------------------------------------------


def _size(n_bytes: float) -> str:
    for unit, scale in (("GB", 2**30), ("MB", 2**20)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.1f} {unit}"
    return f"{n_bytes / 1024:.0f} KB"


def check_disk(root: Path, min_free_mb: int) -> Check:
    """Free space (for an unprivileged user) on the filesystem that holds the state root."""
    probe = root
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        fs = os.statvfs(probe)
    except OSError as exc:
        return Check("disk", WARN, f"cannot read the free space of {probe}: {exc.strerror or exc}", {"path": str(root)})
    free = fs.f_bavail * fs.f_frsize
    total = fs.f_blocks * fs.f_frsize
    data = {
        "path": str(root),
        "free_mb": round(free / 2**20, 1),
        "total_mb": round(total / 2**20, 1),
        "min_free_mb": min_free_mb,
    }
    if free < min_free_mb * 2**20:
        detail = f"only {_size(free)} free under {root}, below health.disk_min_free_mb ({min_free_mb} MB)"
        return Check("disk", WARN, detail, data)
    return Check("disk", OK, f"{_size(free)} free of {_size(total)} under {root}", data)


def check_gpu(min_free_mb: int, env: Mapping[str, str]) -> Check:
    """Free memory on the roomiest GPU, read by the model chain's own reader (models.gpu); skipped where there is
    no nvidia-smi."""
    answer = gpu.query(timeout_s=GPU_QUERY_TIMEOUT_S, env=env)
    if answer.tool is None:
        return Check("gpu", SKIP, answer.problem, {})
    best = gpu.select(answer.gpus, None)
    if best is None:
        return Check("gpu", WARN, answer.problem, {"tool": answer.tool})
    data = {"gpus": [g._asdict() for g in answer.gpus], "free_mb": best.free_mb, "min_free_mb": min_free_mb}
    where = f"the roomiest of {len(answer.gpus)} GPUs" if len(answer.gpus) > 1 else "the GPU"
    if best.free_mb < min_free_mb:
        detail = f"only {best.free_mb} MiB free on {where}, below models.gpu_free_mb_min ({min_free_mb} MiB)"
        return Check("gpu", WARN, detail, data)
    return Check("gpu", OK, f"{best.free_mb} MiB free on {where}", data)


def check_fleet(state: StateRoot, config: Config) -> tuple[Check, list[dict[str, Any]] | None]:
    """Fleet mode: whether the shared database answers (else this host runs degraded on its own files),
    and the fleet's breaker records when it does."""
    from ..core.fleet import NO_DRIVER, host_id, mark_down, spooled_events  # noqa: PLC0415 - fleet mode only: psycopg

    try:
        from ..state.pg import Database, fleet_status  # noqa: PLC0415
    except ImportError:
        return Check("fleet", WARN, f"{NO_DRIVER}; degraded: this host uses its own files", {"reachable": False}), None

    # Never through a link planted at the spool, never waiting on a FIFO there (the cron check hung for good).
    waiting, spool_problem = spooled_events(state.fleet_spool)
    unsafe = f"; the spool cannot be counted: {spool_problem}" if spool_problem else ""
    db = Database(str(config.store.url), host_id(config.store), config.store.connect_timeout_s)
    try:
        status = fleet_status(db)
    except StateError as exc:
        if isinstance(exc, FleetUnavailable):  # the checks after this one need not wait for it again
            mark_down(config.store, exc)
        detail = (
            f"fleet database unreachable: degraded; this host uses its own breaker files, spools its ledger"
            f" ({waiting} event(s) waiting) and claims no task from the shared task tree: {_one_line(str(exc))}"
        )
        return Check("fleet", WARN, detail + unsafe, {"reachable": False, "spooled": waiting}), None
    finally:
        db.close()
    hosts = [h["host"] for h in status["hosts"]]
    data = {"reachable": True, "spooled": waiting, "schema_version": status["schema_version"], "hosts": hosts}
    detail = f"fleet database reachable: {len(hosts)} host(s) ({_names(hosts)}), schema {status['schema_version']}"
    # Each row read once by fleet_status: its typed record, or why it does not read; a row not yet written, neither.
    breakers = [b for b in status["breakers"] if b.get("record") is not None or b.get("unreadable")]
    if waiting:
        detail += f"; {waiting} spooled ledger event(s) not yet replayed"
    if waiting or unsafe:
        return Check("fleet", WARN, detail + unsafe, data), breakers
    return Check("fleet", OK, detail, data), breakers


# -- the mode and the run ----------------------------------------------------------------------------------------


def decide(checks: Iterable[Check], signs_of_life: int) -> tuple[str, str]:
    """The mode and a one-line reason (the rules in this module's docstring)."""
    checks = list(checks)
    gateway_down = any(c.name == "gateway" and c.status == FAIL for c in checks)
    others = [c.name for c in checks if c.name != "gateway" and c.status in (WARN, FAIL)]
    warned = f"; {', '.join(others)} also warn" if others else ""
    unsafe = next((c for c in checks if c.name == "state_root" and c.status == FAIL), None)
    if unsafe is not None:  # nothing self-heal does can be recorded, whatever the gateway says
        return DOWN, f"the state root cannot be used: {unsafe.detail}"
    if gateway_down and not signs_of_life:
        return DOWN, "the gateway is not live and no skill shows signs of work (no fresh status file, no live run)"
    if gateway_down:
        return DEGRADED, (
            f"the gateway is not live but skills still work ({signs_of_life} fresh status file(s) or live run(s)): "
            f"graceful degradation{warned}"
        )
    if others:
        return DEGRADED, f"{len(others)} check(s) warn: {', '.join(others)}"
    return OPERATIONAL, "the gateway is live and every check passed"


def _set_aside(path: Path, exc: StateError) -> str:
    """health.json could not be read: why, for the health_file check. One that does not parse was moved aside
    by read_json; a folder or a file over the size cap is moved aside here, so the next run reads what this
    one writes instead of starting afresh (and logging its mode anew) every few minutes. A link or a FIFO
    planted there is left for a person (check_state_root names it), never written through."""
    if isinstance(exc, (CorruptStateError, UnsafeStateError)):
        return str(exc)
    try:
        moved = quarantine(path)
    except StateError as failed:
        return f"{exc}; not moved aside: {failed}"
    return f"{exc}: moved aside to {moved}" if moved is not None else str(exc)


def _kept_mode(env: Mapping[str, str]) -> dict[str, Any] | None:
    """The mode, and since when, from self-heal's own status line (skill_status.py, written by every run) for a
    run that could not read health.json: a mode that did not change is not logged again, and still says since
    when it holds. None when the line holds no mode."""
    pairs = read_status(status_path(env))
    if pairs.get("health") not in MODES:
        return None
    import calendar  # noqa: PLC0415 - only when health.json could not be read

    try:
        since = float(calendar.timegm(time.strptime(pairs.get("health_since", ""), "%Y-%m-%dT%H:%M:%SZ")))
    except ValueError:
        return {"mode": pairs["health"]}
    return {"mode": pairs["health"], "mode_since_ts": since}


def _unwritten(path: Path, exc: OSError | StateError) -> str:
    """Why `path` was not written: the state layer's words name the file; an OS error's get its name here."""
    return str(exc) if isinstance(exc, StateError) else f"cannot write {path}: {exc.strerror or exc}"


def run_health_check(
    state: StateRoot,
    *,
    env: Mapping[str, str] | None = None,
    clock: Clock = SYSTEM_CLOCK,
    write: bool = True,
) -> Report:
    """Run every check, decide the mode, write status/health.json, and log the mode when it changed."""
    env = os.environ if env is None else env
    started = clock.monotonic()
    now = clock.time()
    health_path = state.status_file(HEALTH_FILE)
    root_check = check_state_root(state.root)  # first: reading any state file walks (and tightens) folders
    extra: list[Check] = []
    try:
        previous = read_json(health_path)
        unreadable = False
    except StateError as exc:  # this run starts afresh; the mode it had comes from self-heal's status line
        previous, unreadable = None, True
        extra.append(Check("health_file", WARN, _set_aside(health_path, exc), {"file": str(health_path)}))
    settings, inputs, loaded = resolve_settings(env, previous)

    def config() -> Config:
        nonlocal loaded
        if loaded is None:
            from ..core.config import load_config  # noqa: PLC0415

            loaded = load_config(env=env)
        return loaded

    status_check, fresh = check_status_files(
        state.sub(layout.STATUS), [Path(d) for d in settings.status_dirs], settings.status_max_age_s, now
    )
    if root_check.status == FAIL:
        # Not a folder, another user's, or not to be looked at: what is in it is not read (state_root says why,
        # and makes the mode down).
        unread = "not read: the state root cannot be used (state_root)"
        runs_check, live = Check("runs", SKIP, unread, {}), 0
        tasks_check, breakers_check = Check("tasks", SKIP, unread, {"stuck": []}), Check("breakers", SKIP, unread, {})
        fleet_check = None
    else:
        runs_check, live = check_runs(state, settings.stuck_after_s, now)
        fleet_check, fleet_breakers = check_fleet(state, config()) if settings.fleet else (None, None)
        tasks_check = check_tasks(state, config, clock, now, fleet=settings.fleet)
        breakers_check = check_breakers(state, now, fleet_breakers)
    checks = [
        *check_gateway(settings, clock),
        status_check,
        runs_check,
        tasks_check,
        breakers_check,
        root_check,
        check_disk(state.root, settings.disk_min_free_mb),
        check_gpu(settings.gpu_min_free_mb, env),
        *([fleet_check] if fleet_check is not None else []),
        *extra,
    ]
    mode, reason = decide(checks, fresh + live)
    if unreadable:
        previous = _kept_mode(env)
    previous_mode = previous.get("mode") if previous and previous.get("mode") in MODES else None
    since = now
    kept_since = json_number(previous.get("mode_since_ts")) if previous else None
    if previous_mode == mode and kept_since is not None and kept_since <= now:  # a mode begun later is no guide
        since = kept_since
    report = Report(
        mode=mode,
        reason=reason,
        checks=tuple(checks),
        checked_ts=now,
        duration_s=clock.monotonic() - started,
        previous_mode=previous_mode,
        mode_since_ts=since,
        settings=settings,
        health_file=str(health_path),
    )
    if not write:
        return report
    try:
        # Not fsync'd: it is rewritten on every run, and losing the last one to a power cut costs nothing.
        write_json(health_path, {**report.to_json(), "config_inputs": inputs}, durable=False)
    except (OSError, StateError) as exc:
        unwritten = Check(
            "health_file", WARN, _unwritten(health_path, exc), {"file": str(health_path), "written": False}
        )
        # The read's warning said the same (a root that is no folder): one line, marked as not written.
        checks = [c for c in checks if not (c.name == "health_file" and c.detail == unwritten.detail)]
        checks.append(unwritten)
        mode, reason = decide(checks, fresh + live)
        report = report._replace(mode=mode, reason=reason, checks=tuple(checks))
    try:
        # health_since: what a run that cannot read health.json takes the mode's start from (_kept_mode).
        kept = {"health": mode, "health_at": utc_iso(now), "health_since": utc_iso(report.mode_since_ts)}
        update_status(kept, now=now, env=env)
    except (OSError, StateError) as exc:
        checks.append(Check("skill_status", WARN, f"self-heal's status file: {_unwritten(status_path(env), exc)}", {}))
        report = report._replace(checks=tuple(checks))
    if report.changed:
        from ..core.ledger import Ledger  # noqa: PLC0415 - only when the mode changed

        Ledger(state, config(), clock=clock).record(
            "health",
            status=mode,
            reason=reason,
            was=previous_mode,
            checks=",".join(f"{c.name}:{c.status}" for c in report.problems()) or None,
        )
    return report
