"""The local one-node SLURM cluster (slurm/cluster/start.sh, stop.sh) seen from Python, for tests and laptops."""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent / "cluster"
DAEMONS = ("munged", "mysqld_safe", "slurmdbd", "slurmctld", "slurmd")
DEBIAN_PACKAGES = ("slurm-wlm", "slurmdbd", "munge", "mariadb-server")


def missing_requirements() -> str | None:
    """Why the local cluster cannot be started here (not root, packages missing), or None when it can."""
    if os.geteuid() != 0:
        return "the local SLURM cluster needs root (it starts munge, MariaDB and the SLURM daemons)"
    missing = [d for d in DAEMONS if shutil.which(d, path="/usr/sbin:/usr/bin") is None]
    if missing:
        return (f"{', '.join(missing)} not installed: apt-get install {' '.join(DEBIAN_PACKAGES)} "
                "(or `make setup` as root)")
    return None


class LocalCluster:
    """One node, one default partition. ``start()``/``stop()`` are idempotent and return the seconds they took."""

    def __init__(self, partition: str = "dev", name: str = "fourm", requeue_delay_s: int = 20):
        self.partition = partition
        self.name = name
        self.requeue_delay_s = requeue_delay_s

    def _script(self, script: str, timeout: float) -> float:
        env = dict(os.environ, FOURM_SLURM_PARTITION=self.partition, FOURM_SLURM_CLUSTER=self.name,
                   FOURM_SLURM_REQUEUE_DELAY=str(self.requeue_delay_s))
        t0 = time.perf_counter()
        proc = subprocess.run(["bash", str(SCRIPTS / script)], env=env, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"slurm/cluster/{script} failed (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}")
        return time.perf_counter() - t0

    def start(self) -> float:
        reason = missing_requirements()
        if reason:
            raise RuntimeError(reason)
        return self._script("start.sh", timeout=600)

    def stop(self) -> float:
        return self._script("stop.sh", timeout=300)

    def is_up(self) -> bool:
        """The node takes jobs and accounting answers (what start.sh waits for)."""
        try:
            state = subprocess.run(["sinfo", "-h", "-p", self.partition, "-o", "%t"], capture_output=True,
                                   text=True, timeout=10).stdout.split()
            acct = subprocess.run(["sacct", "-n", "-X", "-S", "now-1minutes"], capture_output=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return False
        return bool(state) and state[0] in ("idle", "mix", "alloc", "comp") and acct.returncode == 0

    def _node(self) -> dict[str, str]:
        out = subprocess.run(["scontrol", "show", "node", "-o"], capture_output=True, text=True, timeout=10, check=True)
        return dict(kv.split("=", 1) for kv in out.stdout.split() if "=" in kv)

    @property
    def cpus(self) -> int:
        return int(self._node()["CPUTot"])

    @property
    def mem_mb(self) -> int:
        return int(self._node()["RealMemory"])
