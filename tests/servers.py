"""Real servers for the scale-out tests: a throwaway PostgreSQL cluster and a Dask cluster.

- :class:`PostgresServer`: ``initdb`` + ``pg_ctl`` in a temporary folder, listening on a free
  port of 127.0.0.1 only, password authentication (``md5``) for the user ``m2k``. PostgreSQL
  refuses to run as root, so as root the cluster belongs to ``nobody`` and every server
  command runs through ``runuser -u nobody``. ``fsync=off``: the data is thrown away.
- :class:`DaskCluster`: ``dask scheduler`` and N ``dask worker`` processes on 127.0.0.1, each
  one process with one thread, started with ``tests/`` on ``PYTHONPATH`` so that they can
  import the test's backtest function.

Nothing here is a mock: the tests talk to the real programs. Found neither binary? The tests
that need it are skipped with the reason (CI installs PostgreSQL, see ``.ci/run``).
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
PASSWORD = "pw-Secret-42"  # a throwaway cluster's password; the tests check it is masked


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pg_bin(name: str) -> str | None:
    """``initdb``/``pg_ctl``: on PATH, else the newest ``/usr/lib/postgresql/*/bin``."""
    found = shutil.which(name)
    if found:
        return found
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.access(os.path.join(d, name), os.X_OK):
            return os.path.join(d, name)
    return None


def child_env(**extra) -> dict:
    """The environment of a child process: this checkout and tests/ first on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), str(TESTS)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    )
    env.update({k: str(v) for k, v in extra.items()})
    return env


class PostgresServer:
    """One throwaway PostgreSQL cluster; :meth:`url` of a fresh database per test."""

    def __init__(self):
        self.initdb, self.pg_ctl = pg_bin("initdb"), pg_bin("pg_ctl")
        if not (self.initdb and self.pg_ctl):
            raise FileNotFoundError("PostgreSQL's initdb/pg_ctl not found")
        self.dir = Path(tempfile.mkdtemp(prefix="m2k-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.user = "m2k"
        self._as = ["runuser", "-u", "nobody", "--"] if os.geteuid() == 0 else []
        self._n = 0
        os.chmod(self.dir, 0o755)
        pw = self.dir / "pw"
        pw.write_text(PASSWORD + "\n")
        if self._as:
            shutil.chown(self.dir, "nobody")
            shutil.chown(pw, "nobody")
        self._run([self.initdb, "-D", str(self.data), "-U", self.user, "--auth=md5",
                   f"--pwfile={pw}", "-E", "UTF8", "--no-sync"])  # fmt: skip
        self.start()

    def _run(self, cmd: list[str]) -> None:
        r = subprocess.run(self._as + cmd, capture_output=True, text=True, cwd=self.dir)
        if r.returncode:
            raise RuntimeError(f"{cmd[0]} failed: {r.stderr.strip() or r.stdout.strip()}")

    def start(self) -> None:
        opts = f"-p {self.port} -h 127.0.0.1 -k {self.dir} -c fsync=off -c max_connections=60"
        self._run([self.pg_ctl, "-D", str(self.data), "-o", opts, "-l", str(self.dir / "log"),
                   "-w", "-t", "30", "start"])  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        self._run([self.pg_ctl, "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop"])

    def url(self, password: str = PASSWORD, db: str = "postgres") -> str:
        return f"postgresql://{self.user}:{password}@127.0.0.1:{self.port}/{db}"

    def fresh_db(self) -> str:
        """Create a new empty database; returns its URL (``postgresql://`` as a user types it)."""
        import psycopg

        self._n += 1
        name = f"t{os.getpid()}_{self._n}"
        with psycopg.connect(
            host="127.0.0.1", port=self.port, user=self.user, password=PASSWORD,
            dbname="postgres", autocommit=True,
        ) as conn:  # fmt: skip
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(db=name)

    def close(self) -> None:
        try:
            self.stop("immediate")
        except RuntimeError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)


class DaskCluster:
    """``dask scheduler`` + ``n`` single-threaded ``dask worker`` processes on 127.0.0.1."""

    def __init__(self, n_workers: int = 2, env: dict | None = None):
        dask = shutil.which("dask") or str(Path(sys.executable).with_name("dask"))
        self.port = free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.env = child_env(**(env or {}))
        self.log = Path(tempfile.mkdtemp(prefix="m2k-dask-"))
        self.scheduler = self._spawn(
            [dask, "scheduler", "--host", "127.0.0.1", "--port", str(self.port),
             "--no-dashboard"], "scheduler"
        )  # fmt: skip
        self.workers = [
            self._spawn(
                [dask, "worker", self.address, "--nthreads", "1", "--nworkers", "1",
                 "--no-dashboard", "--host", "127.0.0.1", "--name", f"w{i}"], f"worker{i}"
            )  # fmt: skip
            for i in range(n_workers)
        ]
        self._wait_for_workers(n_workers)

    def _spawn(self, cmd, name):
        fh = open(self.log / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
        return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=self.env,
                                start_new_session=True)  # fmt: skip

    def _wait_for_workers(self, n: int, timeout: float = 60) -> None:
        from distributed import Client

        deadline = time.monotonic() + timeout
        while True:
            try:
                with Client(self.address, timeout="5s") as c:
                    c.wait_for_workers(n, timeout=max(1, deadline - time.monotonic()))
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)

    def kill_worker(self, i: int = 0) -> None:
        """SIGKILL worker ``i`` (its whole process group: the nanny and its child)."""
        p = self.workers[i]
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(10)

    def close(self) -> None:
        for p in [*self.workers, self.scheduler]:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                    p.wait(10)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait(5)
        shutil.rmtree(self.log, ignore_errors=True)
