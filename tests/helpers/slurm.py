"""A single-node SLURM cluster for tests: Debian's slurm-wlm and munge, started and stopped here.

Traps (shared FIELD-NOTES): the config must be at /etc/slurm/slurm.conf (job steps do not see
SLURM_CONF); /run/munge and munge's folders must belong to the munge user, and munged must be
up before slurmd; without slurmdbd there is no sacct, so jobs are polled with squeue and
MinJobAge keeps finished jobs visible. The daemons run in the foreground as child processes and
are stopped by their PIDs; a slurm.conf that was there before is put back.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

PACKAGES = ("slurm-wlm", "munge")
CONF = Path("/etc/slurm/slurm.conf")
PARTITION = "normal"  # the partition profiles/slurm asks for, so the profile runs unedited


class ClusterUnavailable(RuntimeError):
    """SLURM cannot be installed or started here (not root, no apt-get, a daemon failed)."""


def ensure_packages() -> None:
    """Install slurm-wlm and munge from the Debian packages when their daemons are missing."""
    if all(shutil.which(tool) for tool in ("slurmctld", "slurmd", "munged", "sbatch", "squeue")):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise ClusterUnavailable("slurm-wlm is not installed and cannot be (needs root and apt)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"],
                    ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES]):
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
        if result.returncode != 0:
            raise ClusterUnavailable(f"{' '.join(command)} failed: {result.stderr[-500:]}")


def _node_line() -> str:
    """This machine's NodeName line as ``slurmd -C`` reports it (CPUs, memory)."""
    probe = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True)
    return probe.stdout.splitlines()[0]


def _write_conf(host: str, spool: Path) -> None:
    CONF.parent.mkdir(parents=True, exist_ok=True)
    CONF.write_text(f"""\
ClusterName=cesynth-test
SlurmctldHost={host}
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SlurmUser=root
SlurmdUser=root
SlurmctldPidFile={spool}/slurmctld.pid
SlurmdPidFile={spool}/slurmd.pid
SlurmdSpoolDir={spool}/slurmd
StateSaveLocation={spool}/slurmctld
SlurmctldLogFile={spool}/slurmctld.log
SlurmdLogFile={spool}/slurmd.log
ReturnToService=2
MinJobAge=600
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
{_node_line()} State=UNKNOWN
PartitionName={PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")


def _start_munge() -> subprocess.Popen:
    for folder in (Path("/run/munge"), Path("/var/log/munge"), Path("/var/lib/munge"),
                   Path("/etc/munge")):
        folder.mkdir(parents=True, exist_ok=True)
        shutil.chown(folder, "munge", "munge")
    as_munge = ["setpriv", "--reuid=munge", "--regid=munge", "--init-groups"]  # exec, no fork
    if not Path("/etc/munge/munge.key").exists():
        subprocess.run([*as_munge, "/usr/sbin/mungekey", "--create"], check=True,
                       capture_output=True)
    socket_path = Path("/run/munge/munge.socket.2")
    socket_path.unlink(missing_ok=True)
    daemon = subprocess.Popen([*as_munge, "/usr/sbin/munged", "--foreground", "--force"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(socket_path.exists, "munged")
    return daemon


def _wait_for(ready, what: str, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(0.5)
    raise ClusterUnavailable(f"{what} did not start within {seconds:.0f} s")


def _node_idle() -> bool:
    result = subprocess.run(["sinfo", "--noheader", "--format=%t"], capture_output=True,
                            text=True)
    return result.returncode == 0 and result.stdout.strip() in ("idle", "mix", "alloc")


@contextlib.contextmanager
def single_node_cluster(spool: Path) -> Iterator[str]:
    """Start munged, slurmctld and slurmd on this machine; yield the partition; stop them.

    Args:
        spool: a fresh folder for the daemons' state, PID files and logs.
    """
    ensure_packages()
    spool.mkdir(parents=True, exist_ok=True)
    for sub in ("slurmd", "slurmctld"):
        (spool / sub).mkdir(exist_ok=True)
    saved = CONF.read_bytes() if CONF.exists() else None
    daemons: list[subprocess.Popen] = []
    try:
        _write_conf(socket.gethostname().split(".")[0], spool)
        daemons.append(_start_munge())
        daemons.append(subprocess.Popen(["slurmctld", "-D", "-i"], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL))
        daemons.append(subprocess.Popen(["slurmd", "-D"], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL))
        _wait_for(_node_idle, "the SLURM node", seconds=60)
        yield PARTITION
    finally:
        for daemon in reversed(daemons):
            daemon.terminate()
        for daemon in reversed(daemons):
            try:
                daemon.wait(timeout=20)
            except subprocess.TimeoutExpired:
                daemon.kill()
        if saved is None:
            CONF.unlink(missing_ok=True)
        else:
            CONF.write_bytes(saved)
