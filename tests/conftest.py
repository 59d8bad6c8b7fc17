"""Shared fixtures: every test gets its own state root; nothing touches ~/.openclaw."""

from __future__ import annotations

import contextlib
import os
import re
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from helpers.openclaw import Gateway, OpenClaw
    from helpers.postgres import Cluster, External

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
PYTHON = sys.executable

from helpers.scripts import call_script, imported_by, run_script, script_env  # noqa: E402

from selfheal import _testing  # noqa: E402
from selfheal.core.config import Config, load_config  # noqa: E402
from selfheal.state.root import StateRoot  # noqa: E402
from selfheal.testing import FakeClock, FakeModelServer  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    """The library's bytecode and the native log scanner up to date before any script runs, as install.sh
    leaves them: the suite starts a Python about a thousand times, and where PYTHONDONTWRITEBYTECODE is set (or
    after an edit) each start would compile the changed modules again; an edited `_logscan.c` is built again
    (a build that fails fails the tests that read with it, loudly). Once, in the controlling process."""
    if not hasattr(config, "workerinput"):
        global _measured
        _measured = {}
        import compileall

        from selfheal.observe import native

        compileall.compile_dir(str(SCRIPTS / "selfheal"), quiet=1)
        compileall.compile_dir(str(ROOT / "tests" / "helpers"), quiet=1)  # imported by the workers' processes
        native.build()
        _rewrite_test_modules_once(config)


def _rewrite_test_modules_once(config: pytest.Config) -> None:
    """pytest's assertion rewriting of every test module, written to its cache (`__pycache__/*-pytest-*.pyc`,
    checked by source hash) once, here, before the workers start. Under PYTHONDONTWRITEBYTECODE pytest writes no
    such cache, so each of the four workers parsed and rewrote all hundred modules again at collection: about
    3 s of CPU each, at the start, when the workers compete for two cores. A worker still checks the hash and
    rewrites a module itself where the cache is stale or missing (this is only a head start: any failure here
    leaves it to them)."""
    if config.getoption("assertmode") != "rewrite":
        return
    from fnmatch import fnmatch

    from _pytest.assertion import rewrite

    patterns = [*config.getini("python_files"), "conftest.py"]
    try:
        state = config.stash[rewrite.assertstate_key]
        for source in sorted((ROOT / "tests").rglob("*.py")):
            if not any(fnmatch(source.name, pattern) for pattern in patterns):
                continue
            pyc = rewrite.get_cache_dir(source) / (source.name[:-3] + rewrite.PYC_TAIL)
            if rewrite._read_pyc(source, pyc) is None:
                pyc.parent.mkdir(exist_ok=True)
                source_hash, code = rewrite._rewrite_test(source, config)
                rewrite._write_pyc(state, code, source_hash, pyc)
    except (AttributeError, KeyError, TypeError, OSError, SyntaxError):  # another pytest's internals; a read-only tree
        return


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private SELFHEAL_HOME for each test, no inherited SELFHEAL_* settings, and a private OpenClaw state
    folder (OPENCLAW_STATE_DIR), so nothing reads or writes the real ~/.openclaw (self-heal's status file there)."""
    for key in list(os.environ):
        if key.startswith("SELFHEAL_") or key == "OPENCLAW_STATE_DIR":
            monkeypatch.delenv(key, raising=False)
    state = tmp_path / "state"
    monkeypatch.setenv("SELFHEAL_HOME", str(state))
    monkeypatch.setenv("OPENCLAW_STATE_DIR", str(tmp_path / "openclaw-state"))
    return state


@pytest.fixture(autouse=True)
def _testing_switch_off() -> Iterator[None]:
    saved = (_testing._switch.enabled, _testing._switch.attempts)
    _testing.set_testing(False)
    yield
    _testing._switch.enabled, _testing._switch.attempts = saved


@pytest.fixture
def state(home: Path) -> StateRoot:
    return StateRoot(home).ensure()


@pytest.fixture
def smi_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder first on PATH (this process's, which the model chain reads) for a stand-in nvidia-smi
    (helpers/nvidia.py), with the model chain's cached GPU readings cleared around the test."""
    from selfheal.models import gpu

    folder = tmp_path / "bin"
    folder.mkdir()
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ.get('PATH', '')}")
    gpu.clear()
    yield folder
    gpu.clear()


@pytest.fixture
def write_config(home: Path) -> Callable[[str], Path]:
    """Write the user's config.yaml (dedented) and return its path."""

    def write(text: str) -> Path:
        home.mkdir(parents=True, exist_ok=True, mode=0o700)  # as self-heal makes it: a looser one is warned about
        path = home / "config.yaml"
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return path

    return write


@pytest.fixture
def config() -> Config:
    return load_config()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="session")
def openclaw() -> OpenClaw:
    """The pinned real OpenClaw (tests/helpers/openclaw.py): installed on first use into a cache shared by
    later runs, never skipped; run it with `openclaw.sandbox(tmp_path)` as HOME."""
    from helpers.openclaw import ensure_openclaw

    return ensure_openclaw()


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`--dist loadgroup` for pytest 9: pytest-xdist 3.8 writes a test's group into `item._nodeid`, which pytest 9
    no longer reads (its node ids live in `_id`), so every group was scattered over the workers. The group goes
    into the node id here, as xdist means it to (`path::test@group`); a test in the group then runs on one worker.

    Tests marked `stops_shared_gateway` go last (a group runs in collection order on its worker), so the one
    that stops the shared gateway does so after every other test that uses it.

    Longest first: `--dist loadgroup` hands out the work one test (or group) at a time in this order, so the long
    ones start early, beside one another, and the short ones fill in at the end; in collection order a 20-30 s
    test drawn late ran on alone while the other workers had finished (about 15 s with one or two of the four
    busy), and the tests that mostly wait (real timeouts, stuck runners) came last together, leaving the CPU
    idle. "Long" is what the test took in the last run (pytest's cache, `_durations`), else its `slow` mark;
    tests under half a second keep their collection order."""
    if config.getoption("failedfirst", False) or config.getoption("newfirst", False):  # --ff, --nf: their order
        items[:] = sorted(items, key=_shared_gateway_order)
    else:
        items[:] = sorted(items, key=lambda item: (_shared_gateway_order(item), -_weight(item, config)))
    if not getattr(config.option, "loadgroup", False):
        return
    from _pytest.nodes import coerce_node_id

    for item in items:
        marks = item.iter_markers("xdist_group")
        names = sorted({str(m.args[0] if m.args else m.kwargs.get("name", "default")) for m in marks})
        if names and "@" not in item.nodeid:
            item._id = coerce_node_id(f"{item.nodeid}@{'_'.join(names)}")  # type: ignore[attr-defined]


def _weight(item: pytest.Item, config: pytest.Config) -> float:
    """How long a test is taken to be, for the order: its seconds in the last run, 0 under half a second."""
    known = _durations(config).get(item.nodeid)
    if known is None:
        return LONG_S if item.get_closest_marker("slow") is not None else 0.0
    return known if known >= 0.5 else 0.0


DURATIONS_KEY = "self-heal/durations"
_DURATIONS_STASH = pytest.StashKey[dict[str, float]]()
LONG_S = 5.0  # the weight of a `slow` test the cache has no figure for


def _durations(config: pytest.Config) -> dict[str, float]:
    """Each test's seconds (setup, call, teardown) in the runs before, from pytest's cache: read once by the
    controlling process and handed to every worker (`pytest_configure_node`), so that all of them order the
    tests the same way (xdist refuses collections that differ) even if another session rewrites the cache."""
    if _DURATIONS_STASH not in config.stash:
        if hasattr(config, "workerinput"):
            found = config.workerinput.get(DURATIONS_KEY, {})
        else:
            cache = getattr(config, "cache", None)
            found = cache.get(DURATIONS_KEY, {}) if cache is not None else {}
        config.stash[_DURATIONS_STASH] = dict(found) if isinstance(found, dict) else {}
    return config.stash[_DURATIONS_STASH]


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    node.workerinput[DURATIONS_KEY] = _durations(node.config)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """The controlling process adds up each test's phases, for the next run's order."""
    if _measured is not None:
        nodeid = re.sub(r"@[\w-]+$", "", report.nodeid)  # the group `pytest_collection_modifyitems` appended
        _measured[nodeid] = _measured.get(nodeid, 0.0) + report.duration


def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    cache = getattr(config, "cache", None)
    if hasattr(config, "workerinput") or cache is None or not _measured:
        return
    durations = {**_durations(config), **{k: round(v, 2) for k, v in _measured.items()}}
    cache.set(DURATIONS_KEY, durations)


_measured: dict[str, float] | None = None  # in the controlling process only (set by pytest_configure)


def _shared_gateway_order(item: pytest.Item) -> int:
    """Within the shared gateway's group: the tests that only use it, then the one that kills it and puts a new
    one in its place (`replaces_shared_gateway`), then the one that stops it (`stops_shared_gateway`)."""
    if item.get_closest_marker("stops_shared_gateway") is not None:
        return 2
    return 1 if item.get_closest_marker("replaces_shared_gateway") is not None else 0


# Tests that share one real gateway carry this mark: pytest-xdist (--dist loadgroup) runs them on one worker,
# so the gateway starts once for all of them (a start costs about 14 s of CPU: `openclaw onboard` and the
# gateway until ready).
SHARED_GATEWAY = pytest.mark.xdist_group("openclaw-gateway")


class SharedGateway:
    """The shared gateway, started on first use; started again (in a fresh HOME) if a test stopped it."""

    def __init__(self, openclaw: OpenClaw, tmp_path_factory: pytest.TempPathFactory) -> None:
        self.openclaw, self.tmp_path_factory = openclaw, tmp_path_factory
        self.stack = contextlib.ExitStack()
        self.started: list[Gateway] = []
        self.unconfirmed = False

    def get(self) -> Gateway:
        if not self.started or self.started[-1].proc.poll() is not None:
            home = self.openclaw.sandbox(self.tmp_path_factory.mktemp("shared-gateway"))
            gateway = self.stack.enter_context(self.openclaw.gateway(home))
            gateway.wait_ready()
            self.started.append(gateway)
        elif self.unconfirmed:  # handed over by `replace`: ready, as a started one is, before the next test has it
            self.started[-1].wait_ready()
        self.unconfirmed = False
        return self.started[-1]

    def replace(self, gateway: Gateway) -> None:
        """`gateway` (started by a test in the shared gateway's HOME, on its port, after it killed that one) is
        the shared gateway from now on; it is stopped at the end of the session like the others."""
        self.stack.callback(gateway.stop)
        self.started.append(gateway)
        self.unconfirmed = True


@pytest.fixture(scope="session")
def _shared_gateways(openclaw: OpenClaw, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedGateway]:
    shared = SharedGateway(openclaw, tmp_path_factory)
    with shared.stack:
        yield shared
    assert [g.left_behind() for g in shared.started] == [[] for _ in shared.started]


@pytest.fixture
def shared_gateways(_shared_gateways: SharedGateway) -> SharedGateway:
    """The shared gateway's keeper, for the test that kills the gateway and hands over the one it started
    in its place (`SharedGateway.replace`; mark it `replaces_shared_gateway` too)."""
    return _shared_gateways


@pytest.fixture
def shared_gateway(_shared_gateways: SharedGateway) -> Gateway:
    """One real gateway for the tests that only talk to it (mark them SHARED_GATEWAY; never kill it). Its HOME
    is `gateway.home`; each test removes the cron jobs and status files it adds. A test that stops it carries
    `stops_shared_gateway` too, which runs it after the others."""
    return _shared_gateways.get()


@pytest.fixture(scope="session")
def postgres() -> Iterator[Cluster | External]:
    """One throwaway PostgreSQL for the whole session (tests/helpers/postgres.py), or the server named by
    SELFHEAL_TEST_DATABASE_URL; never skipped: when none can be started, the tests that need it fail."""
    from helpers.postgres import Cluster, External

    url = os.environ.get("SELFHEAL_TEST_DATABASE_URL")
    server: Cluster | External = External(url) if url else Cluster()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture
def fleet_url(postgres: Cluster | External, monkeypatch: pytest.MonkeyPatch) -> str:
    """Fleet mode on: a fresh database of the session's server, named by SELFHEAL_DATABASE_URL."""
    url = postgres.new_database()
    monkeypatch.setenv("SELFHEAL_DATABASE_URL", url)
    return url


__all__ = ["PYTHON", "ROOT", "SCRIPTS", "call_script", "imported_by", "run_script", "script_env"]


@pytest.fixture
def analyst(write_config: Callable[[str], Path]) -> Iterator[FakeModelServer]:
    """A chain of one model endpoint, `analyst`, on the package's fake server (for the healer's model step)."""
    with FakeModelServer() as srv:
        write_config(
            f"""
            retry: {{jitter: none}}
            models:
              read_timeout_base_s: 2.0
              timeout_per_1k_tokens_s: 0.0
              connect_timeout_s: 0.5
              deadline_s: 20
              chain:
                - {{name: analyst, base_url: "{srv.url("analyst")}", model: analyst-7b}}
            """
        )
        yield srv
