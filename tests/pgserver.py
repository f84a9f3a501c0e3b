"""A throwaway PostgreSQL server for tests: ``initdb`` in a temp folder, ``pg_ctl start`` on
127.0.0.1 at a free port (and a unix socket in that folder), stopped and removed at the end.

PostgreSQL refuses to run as root; these machines and CI run as root, so the server runs as
the ``postgres`` system user that Debian's package creates (``runuser -u postgres --``), from a
folder that user owns. Without the binaries (``apt-get install postgresql``) or the driver
(``pip install -e '.[cluster]'``) the tests that need it skip and say which is missing.
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path


def binaries() -> Path | None:
    """The folder holding initdb and pg_ctl: on PATH, else Debian's /usr/lib/postgresql/N/bin."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).resolve().parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    return Path(found[-1]).parent if found else None


def missing() -> str | None:
    """Why a PostgreSQL server cannot be started here, or None."""
    if binaries() is None:
        return "needs PostgreSQL's initdb and pg_ctl (Debian: apt-get install postgresql)"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "needs the PostgreSQL driver (pip install -e '.[cluster]')"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "PostgreSQL refuses to run as root and there is no postgres user to run it as"
        if not shutil.which("runuser"):
            return "PostgreSQL refuses to run as root and runuser is missing"
    return None


class PostgresServer:
    """``start()``, ``database(name)`` -> a postgresql:// URL of a new database, ``stop()``.
    ``user`` is the server's superuser; every connection gives its password (scram-sha-256),
    as the README's recipe sets it up; the commands are the recipe's."""

    user, password = "sr_ablate", "pg-secret"

    def __init__(self):
        self.bin = binaries()
        self.folder = Path(tempfile.mkdtemp(prefix="sr_ablate-pg-"))
        from conftest import free_port
        self.data, self.port, self.running = self.folder / "data", free_port(), False
        if os.geteuid() == 0:  # the server's user must own its folder
            entry = pwd.getpwnam("postgres")
            os.chown(self.folder, entry.pw_uid, entry.pw_gid)
        self.folder.chmod(0o755)

    def _run(self, *args: str, server: bool = True) -> None:
        """Run a PostgreSQL program: the server's as its user (``server``), clients as we are."""
        cmd = [str(self.bin / args[0]), *args[1:]]
        if os.geteuid() == 0 and server:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        env = {**os.environ, "PGPASSWORD": self.password}
        out = subprocess.run(cmd, cwd=self.folder, capture_output=True, text=True, timeout=120,
                             env=env)
        if out.returncode:
            raise RuntimeError(f"{args[0]} failed: {out.stderr.strip()[-2000:]}")

    def start(self) -> PostgresServer:
        if not self.data.exists():
            pwfile = self.folder / "pwfile"
            pwfile.write_text(self.password + "\n")
            if os.geteuid() == 0:
                os.chown(pwfile, self.folder.stat().st_uid, self.folder.stat().st_gid)
            self._run("initdb", "-D", str(self.data), "-U", self.user, "--auth=scram-sha-256",
                      f"--pwfile={pwfile}", "-E", "UTF8", "--no-instructions")
            pwfile.unlink()
        # fsync off: a test's database need not survive a power cut, and it is 10x faster
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.folder / "server.log"), "-w",
                  "-o", f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 "
                        "-c fsync=off -c max_connections=200", "start")
        self.running = True
        return self

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}:{self.password}@127.0.0.1:{self.port}/{database}"

    def database(self, name: str) -> str:
        """A new, empty database (``createdb``); its URL."""
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, name,
                  server=False)
        return self.url(name)

    def log(self) -> str:
        path = self.folder / "server.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def stop(self) -> None:
        if self.running:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
            self.running = False

    def remove(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)

