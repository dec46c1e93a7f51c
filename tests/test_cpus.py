"""kt counts the CPUs this process may use, not the machine's: a SLURM job of 2 CPUs on a 64-core node, or a
container given --cpus=2, started 8 workers per group (each holding torch and Triton, about 350 MB) on 2 CPUs."""

import os
import subprocess
import sys

import pytest

from kt.cpus import cgroup_cpu_quota, usable_cpus


@pytest.mark.parametrize(
    "files, quota",
    [
        ({"cpu.max": "150000 100000\n"}, 1.5),  # cgroup v2 (Docker --cpus=1.5)
        ({"cpu.max": "max 100000\n"}, None),  # v2, no limit
        ({"cpu/cpu.cfs_quota_us": "200000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 2.0),  # v1
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),  # v1, no limit
        ({"cpu.max": "garbage"}, None),
        ({}, None),  # none (not Linux)
    ],
)
def test_the_cgroup_cpu_quota_is_read_from_v2_or_v1(tmp_path, files, quota):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cgroup_cpu_quota(str(tmp_path)) == quota


def test_usable_cpus_is_the_affinity_capped_by_the_quota_rounded_up(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    assert usable_cpus(str(tmp_path)) == 64
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert usable_cpus(str(tmp_path)) == 2
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3}, raising=False)
    assert usable_cpus(str(tmp_path)) == 1


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this platform")
def test_the_default_workers_follow_this_processes_affinity():
    """As taskset or a SLURM job's cpuset gives one: os.cpu_count() still says the machine's."""
    script = (
        "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})\n"
        "from kt.autotune.pool import default_workers\n"
        "from kt.costmodel import forest\n"
        "print(os.cpu_count(), default_workers(), forest.THREADS)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    machine, workers, threads = map(int, done.stdout.split())
    assert (workers, threads) == (1, 1) and machine == os.cpu_count()
