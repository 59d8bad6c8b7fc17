"""A throwaway PostgreSQL cluster for the fleet-mode tests: initdb into a temporary folder, a Unix socket only.

The server refuses to run as root, so as root every server command runs as the `postgres` system user
(runuser), in a folder that user owns. SELFHEAL_TEST_DATABASE_URL names an existing server instead. There is
no skip: a test that needs PostgreSQL fails, saying why, when none can be started.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

SERVER_USER = "postgres"


def find_bindir() -> Path:
    """The folder with initdb and pg_ctl: from PATH, else Debian's /usr/lib/postgresql/<version>/bin."""
    on_path = shutil.which("pg_ctl")
    if on_path and shutil.which("initdb"):
        return Path(on_path).parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]))
    if not found:
        raise RuntimeError(
            "fleet-mode tests need PostgreSQL's server programs (initdb, pg_ctl) and none were found:"
            " install them (apt-get install postgresql-15; .ci/run does it) or set SELFHEAL_TEST_DATABASE_URL"
        )
    return Path(found[-1]).parent


class Cluster:
    """A private server on a Unix socket, trusting local connections; `url(db)` names one of its databases."""

    def __init__(self) -> None:
        self.bindir = find_bindir()
        self.as_root = os.geteuid() == 0
        self.user = SERVER_USER if self.as_root else pwd.getpwuid(os.geteuid()).pw_name
        self.base = Path(tempfile.mkdtemp(prefix="selfheal-pg-"))
        self.data = self.base / "data"
        self.socket_dir = self.base / "sock"
        self.socket_dir.mkdir()
        if self.as_root:
            pw = pwd.getpwnam(SERVER_USER)
            for path in (self.base, self.socket_dir):
                os.chown(path, pw.pw_uid, pw.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", self.user, "--auth=trust", "--no-sync", "-E", "UTF8")
        # Small and quick: no TCP, no fsync (a test cluster's data need not survive the machine), few workers.
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(
                f"listen_addresses = ''\nunix_socket_directories = '{self.socket_dir}'\nfsync = off\n"
                "synchronous_commit = off\nfull_page_writes = off\nmax_connections = 100\n"
            )
        self.start()

    def _run(self, program: str, *args: str) -> None:
        argv = [str(self.bindir / program), *args]
        if self.as_root:
            argv = ["runuser", "-u", SERVER_USER, "--", *argv]
        proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120, cwd=self.base)
        if proc.returncode != 0:
            raise RuntimeError(f"{program} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.base / "server.log"), "-w", "-t", "60", "start")

    def stop(self) -> None:
        """Stop the server as an operator's restart does (fast: open sessions are ended, their transactions
        rolled back)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")

    def url(self, db: str = "postgres") -> str:
        return f"postgresql:///{db}?host={self.socket_dir}&user={self.user}"

    def new_database(self) -> str:
        """A fresh empty database; its URL."""
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name} TEMPLATE template0")
        return self.url(name)

    def destroy(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():  # a test may have left it stopped
                self.stop()
        finally:
            shutil.rmtree(self.base, ignore_errors=True)


class External:
    """SELFHEAL_TEST_DATABASE_URL: a server someone else runs; each test gets its own database on it."""

    def __init__(self, url: str) -> None:
        self.base_url = url

    def new_database(self) -> str:
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.base_url, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name} TEMPLATE template0")
        head, sep, query = self.base_url.partition("?")
        return head.rsplit("/", 1)[0] + "/" + name + sep + query

    def destroy(self) -> None:
        pass
