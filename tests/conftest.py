"""Shared fixtures: every test gets its own state root; nothing touches ~/.openclaw."""

from __future__ import annotations

import contextlib
import os
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

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
        import compileall

        from selfheal.observe import native

        compileall.compile_dir(str(SCRIPTS / "selfheal"), quiet=1)
        native.build()


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
    that stops the shared gateway does so after every other test that uses it."""
    items[:] = sorted(items, key=lambda item: item.get_closest_marker("stops_shared_gateway") is not None)
    if not getattr(config.option, "loadgroup", False):
        return
    from _pytest.nodes import coerce_node_id

    for item in items:
        marks = item.iter_markers("xdist_group")
        names = sorted({str(m.args[0] if m.args else m.kwargs.get("name", "default")) for m in marks})
        if names and "@" not in item.nodeid:
            item._id = coerce_node_id(f"{item.nodeid}@{'_'.join(names)}")  # type: ignore[attr-defined]


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

    def get(self) -> Gateway:
        if not self.started or self.started[-1].proc.poll() is not None:
            home = self.openclaw.sandbox(self.tmp_path_factory.mktemp("shared-gateway"))
            gateway = self.stack.enter_context(self.openclaw.gateway(home))
            gateway.wait_ready()
            self.started.append(gateway)
        return self.started[-1]


@pytest.fixture(scope="session")
def _shared_gateways(openclaw: OpenClaw, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedGateway]:
    shared = SharedGateway(openclaw, tmp_path_factory)
    with shared.stack:
        yield shared
    assert [g.left_behind() for g in shared.started] == [[] for _ in shared.started]


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
