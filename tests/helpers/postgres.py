"""A throwaway PostgreSQL cluster for tests: Debian's postgresql, started and stopped here.

PostgreSQL refuses to run as root, so as root (CI) the cluster belongs to the ``postgres`` user
that Debian's package creates, and every server command runs as that user (``setpriv``, as
tests/helpers/slurm.py starts munged). Its folder is made outside pytest's root-only temp
folders, which that user could not enter, and removed at the end. The server listens on a free
loopback port and trusts local connections: it lives as long as one test module.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

USER = "cesynth"
DATABASE = "mlflow"


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server programs here, or no user to run them as."""


def server_program(name: str) -> str:
    """``initdb``/``pg_ctl``: on PATH, else in Debian's /usr/lib/postgresql/<version>/bin."""
    found = shutil.which(name) or next(iter(sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if found is None:
        raise PostgresUnavailable(f"no {name}: install Debian's postgresql package")
    return found


def _as_server_user(root: Path) -> list[str]:
    """The command prefix that runs a program as the cluster's owner (none unless root)."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError as err:
        raise PostgresUnavailable("running as root and there is no postgres user") from err
    shutil.chown(root, "postgres", "postgres")
    return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups"]


def _run(command: list[str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        raise PostgresUnavailable(f"{' '.join(command)} failed: "
                                  f"{(result.stdout + result.stderr)[-1000:]}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def temporary_cluster() -> Iterator[str]:
    """A fresh cluster with an empty database; yields its ``postgresql://`` URI.

    Raises:
        PostgresUnavailable: no server programs, no user to run them as, or one failed.
    """
    initdb, pg_ctl = server_program("initdb"), server_program("pg_ctl")
    root = Path(tempfile.mkdtemp(prefix="cesynth-postgres-"))
    data, port = root / "data", _free_port()
    started = False
    try:
        as_owner = _as_server_user(root)
        _run([*as_owner, initdb, "--pgdata", str(data), "--username", USER, "--auth", "trust",
              "--encoding", "UTF8", "--no-sync"])
        _run([*as_owner, pg_ctl, "--pgdata", str(data), "--log", str(root / "server.log"),
              "--wait", "--options", f"-p {port} -h 127.0.0.1 -k {root}", "start"])
        started = True
        createdb = server_program("createdb")
        _run([*as_owner, createdb, "--host", "127.0.0.1", "--port", str(port),
              "--username", USER, DATABASE])
        yield f"postgresql://{USER}@127.0.0.1:{port}/{DATABASE}"
    finally:
        if started:
            subprocess.run([*_as_server_user(root), pg_ctl, "--pgdata", str(data), "--mode",
                            "fast", "--wait", "stop"], capture_output=True, timeout=120)
        shutil.rmtree(root, ignore_errors=True)
