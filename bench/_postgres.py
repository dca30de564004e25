"""Throw-away PostgreSQL 15 clusters on loopback, for bench/peers.py.

    bin_dir, why_not = ensure_postgres()          # installs postgresql-15 when root
    a = Cluster(bin_dir, work / "pg-a", port)     # initdb; wal_level=logical
    a.start()
    with a.connect() as conn: ...                 # psycopg 3, autocommit
    a.stop()

Each cluster lives in its own folder (data directory, socket directory, log) and is
reached over TCP on 127.0.0.1 as the superuser ``bench`` with ``trust`` authentication.
Apart from ``wal_level = logical`` every setting is initdb's default, durability too
(``fsync = on``, ``synchronous_commit = on``). As root, the server programs run as the
``postgres`` user (through ``runuser``), since PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from _nodes import BenchError, log

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PACKAGE = "postgresql-15"
USER = "bench"
START_TIMEOUT_S = 60.0
RUN_AS = "postgres"


def ensure_postgres() -> tuple[Path | None, str]:
    """PostgreSQL 15's program folder, installing the Debian package if it is missing
    and this process may; else None and why not."""
    if (PG_BIN / "initdb").exists():
        return PG_BIN, ""
    if os.geteuid() != 0:
        return None, f"{PG_BIN / 'initdb'} is missing and only root may install {PACKAGE}"
    if shutil.which("apt-get") is None:
        return None, f"{PG_BIN / 'initdb'} is missing and there is no apt-get"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", PACKAGE]
    log(f"installing {PACKAGE} (apt-get) ...")
    done = subprocess.run(install, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        # A machine whose package lists were never fetched knows no package at all.
        subprocess.run(["apt-get", "update"], capture_output=True, env=env, check=False)
        done = subprocess.run(install, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0 or not (PG_BIN / "initdb").exists():
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return None, f"apt-get install {PACKAGE} failed: {' / '.join(tail)}"
    return PG_BIN, ""


def _as_server_user(argv: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return argv
    return ["runuser", "-u", RUN_AS, "--", *argv]


def _own(path: Path) -> None:
    if os.geteuid() == 0:
        entry = pwd.getpwnam(RUN_AS)
        os.chown(path, entry.pw_uid, entry.pw_gid)


class Cluster:
    """One PostgreSQL cluster in ``folder``, listening on ``127.0.0.1:port``."""

    def __init__(self, bin_dir: Path, folder: Path, port: int) -> None:
        self.bin = bin_dir
        self.folder = folder
        self.data = folder / "data"
        self.log_path = folder / "server.log"
        self.port = port
        folder.mkdir(parents=True)
        folder.chmod(0o755)
        _own(folder)
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            USER,
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-instructions",
        )
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(
                "\n# bench/peers.py: loopback only, socket in our folder; logical decoding\n"
                "listen_addresses = '127.0.0.1'\n"
                f"port = {port}\n"
                f"unix_socket_directories = '{folder}'\n"
                "wal_level = logical\n"
            )

    def _run(self, program: str, *args: str, timeout: float = 120.0) -> str:
        argv = _as_server_user([str(self.bin / program), *args])
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise BenchError(f"{program} {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
        return done.stdout

    def launch(self) -> None:
        """``pg_ctl start`` without waiting: the caller sees when connections are taken."""
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log_path), "-W", "start")

    def start(self) -> None:
        self.launch()
        self.wait_accepting(START_TIMEOUT_S)

    def wait_accepting(self, timeout: float, poll_s: float = 0.002) -> int:
        """Try to connect until one succeeds; returns ``time.time_ns()`` right after it."""
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            try:
                conn = psycopg.connect(**self.params(), connect_timeout=2)
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise BenchError(
                        f"PostgreSQL on port {self.port} did not start:\n"
                        f"{self.log_path.read_text(errors='replace')[-2000:]}"
                    ) from None
                time.sleep(poll_s)
                continue
            stamp = time.time_ns()
            conn.close()
            return stamp

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def params(self) -> dict[str, Any]:
        return {"host": "127.0.0.1", "port": self.port, "user": USER, "dbname": "postgres"}

    @property
    def conninfo(self) -> str:
        return f"host=127.0.0.1 port={self.port} user={USER} dbname=postgres"

    def connect(self) -> Any:
        """A psycopg 3 connection in autocommit mode: each statement its own transaction."""
        import psycopg

        return psycopg.connect(**self.params(), autocommit=True)

    def version(self) -> str:
        with self.connect() as conn:
            return str(conn.execute("SHOW server_version").fetchone()[0])

    def setting(self, name: str) -> str:
        with self.connect() as conn:
            return str(conn.execute("SELECT current_setting(%s)", (name,)).fetchone()[0])

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
