"""A throwaway PostgreSQL server for the registry tests and benchmarks: initdb, a loopback port, removed after.

:func:`start_postgres` runs Debian's PostgreSQL server binaries (``/usr/lib/postgresql/<v>/bin``,
or ``SAFEFLAVOR_PG_BIN``) on a fresh cluster in a new temporary directory, listening on
127.0.0.1 only, on a free port, with password (SCRAM) authentication over TCP. PostgreSQL refuses
to run as root: when this process is root the binaries run as the ``postgres`` user through
``runuser`` and the directory is handed to that user. ``stop``/``start`` stop and restart the same
cluster (the fault the load test injects); :meth:`PostgresServer.remove` stops it and deletes the
directory. Nothing here imports pytest, so the benchmarks use it too.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from serverproc import free_port

PG_USER = "postgres"


class PostgresUnavailable(RuntimeError):
    """The PostgreSQL server binaries are missing or the cluster could not be started."""


def pg_bin_dir() -> Path:
    """Where ``initdb``/``pg_ctl`` live: ``SAFEFLAVOR_PG_BIN`` or the newest ``/usr/lib/postgresql/*/bin``."""
    configured = os.environ.get("SAFEFLAVOR_PG_BIN")
    candidates = [configured] if configured else sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0
    )
    for candidate in reversed(candidates):
        if candidate and (Path(candidate) / "initdb").is_file():
            return Path(candidate)
    raise PostgresUnavailable(
        "PostgreSQL's server binaries (initdb, pg_ctl) were not found under /usr/lib/postgresql/*/bin: "
        "run `make sysdeps` (or `apt-get install -y postgresql`), or set SAFEFLAVOR_PG_BIN to their directory."
    )


@dataclass
class PostgresServer:
    """One running cluster: its data directory, port, superuser password and log."""

    root: Path
    port: int
    password: str
    bin_dir: Path
    as_user: str | None  # run the binaries as this user (when we are root)

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "postgres.log"

    def uri(self, database: str) -> str:
        """The SQLAlchemy URI MLflow takes as ``--backend-store-uri`` for ``database``.

        SQLAlchemy 2.1 reads a bare ``postgresql://`` as psycopg 3 (``psycopg[binary]``); name the
        driver (``postgresql+psycopg2://``) to use psycopg2 instead.
        """
        return f"postgresql://{PG_USER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        cmd = [str(self.bin_dir / args[0]), *args[1:]]
        if self.as_user:
            cmd = ["runuser", "-u", self.as_user, "--", *cmd]
        return subprocess.run(cmd, cwd=self.root, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)

    def start(self) -> None:
        """Start the cluster and wait until it accepts connections (``pg_ctl start -w``)."""
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c max_connections=200"
        result = self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60", "start")
        if result.returncode != 0:
            raise PostgresUnavailable(f"pg_ctl start failed ({result.returncode}): {result.stderr.strip()}\n{self.log_tail()}")

    def stop(self) -> None:
        """Stop the cluster (fast shutdown: open sessions are disconnected) and wait for it."""
        result = self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")
        if result.returncode != 0:
            raise PostgresUnavailable(f"pg_ctl stop failed ({result.returncode}): {result.stderr.strip()}")

    def running(self) -> bool:
        """Whether the cluster's postmaster is up (``pg_ctl status``)."""
        return self._run("pg_ctl", "-D", str(self.data), "status").returncode == 0

    def create_database(self, name: str) -> str:
        """Create an empty database and return its URI."""
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user=PG_USER, password=self.password,
                             dbname="postgres", connect_timeout=10, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.uri(name)

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "<no postgres log>"

    def remove(self) -> None:
        """Stop the cluster if it runs (immediate shutdown) and delete its directory."""
        if self.data.is_dir() and self.running():
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "-t", "60", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


def start_postgres(prefix: str = "safeflavor-pg-") -> PostgresServer:
    """initdb a new cluster in a new temporary directory and start it on a free 127.0.0.1 port.

    Raises PostgresUnavailable (naming the fix) when the binaries are missing or the cluster does
    not start; the directory is removed then.
    """
    bin_dir = pg_bin_dir()
    as_user = None
    root = Path(tempfile.mkdtemp(prefix=prefix))
    if os.geteuid() == 0:
        try:
            entry = pwd.getpwnam(PG_USER)
        except KeyError:
            shutil.rmtree(root, ignore_errors=True)
            raise PostgresUnavailable(
                "running as root, PostgreSQL must run as the 'postgres' user, which does not exist: "
                "install Debian's postgresql package (it creates the user) or run the tests as a non-root user."
            ) from None
        os.chown(root, entry.pw_uid, entry.pw_gid)
        as_user = PG_USER
    server = PostgresServer(root=root, port=free_port(), password=secrets.token_hex(12), bin_dir=bin_dir, as_user=as_user)
    try:
        pwfile = root / "pwfile"
        pwfile.write_text(server.password + "\n")
        if as_user:
            os.chown(pwfile, entry.pw_uid, entry.pw_gid)
        pwfile.chmod(0o600)
        result = server._run("initdb", "-D", str(server.data), "-U", PG_USER, "--pwfile", str(pwfile),
                             "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8",
                             "--locale=C", "--no-sync")
        pwfile.unlink()
        if result.returncode != 0:
            raise PostgresUnavailable(f"initdb failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
        server.start()
    except BaseException:
        server.remove()
        raise
    return server
