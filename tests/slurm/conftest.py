"""The real local SLURM cluster, started once per test run (it stays up afterwards: the next run finds it warm)."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from slurm.cluster import LocalCluster, missing_requirements


@pytest.fixture(scope="package")
def slurm_cluster() -> LocalCluster:
    reason = missing_requirements()
    if reason:
        pytest.skip(f"local SLURM cluster unavailable: {reason}")
    cluster = LocalCluster()
    seconds = cluster.start()
    print(f"\n[slurm_cluster] up in {seconds:.1f}s: partition {cluster.partition}, {cluster.cpus} CPUs, {cluster.mem_mb} MB")
    return cluster


@pytest.fixture
def job_dir():
    """A folder for one test's sweep and runs, outside pytest's rotating basetemp: other pytest runs
    on this machine prune old basetemps, and a SLURM job must never see its run folder vanish mid-test."""
    path = Path(tempfile.mkdtemp(prefix="fourm-slurm-test-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)
