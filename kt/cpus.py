"""How many CPUs kt may use: os.cpu_count() counts every core of the machine, where a SLURM job, taskset or a
container (Docker's --cpus, a Kubernetes CPU limit) gives this process fewer."""

from __future__ import annotations

import math
import os

CGROUP = "/sys/fs/cgroup"
# torch's threads in a CPU worker, its share of the CPUs (kt.autotune.pool sets it, the worker reads it): each took
# one per core, so 2 workers on 2 cores ran 4 threads, and a tune's interpreter checks took 50 s where one
# thread each took 33 s (examples/monarch.yaml, --budget 8 --workers 2, 2026-12-07)
WORKER_THREADS_ENV = "KT_WORKER_THREADS"


def usable_cpus(cgroup: str = CGROUP) -> int:
    """The CPUs this process may run on (its affinity: taskset, a SLURM job's cpuset), capped by the cgroup's CPU
    quota rounded up (cgroup v2's cpu.max, v1's cpu.cfs_quota_us over cpu.cfs_period_us, as a container sees
    its own at the root of `cgroup`); at least 1."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        count = os.cpu_count() or 1
    quota = cgroup_cpu_quota(cgroup)
    return max(1, min(count, math.ceil(quota)) if quota else count)


def cgroup_cpu_quota(cgroup: str = CGROUP) -> float | None:
    """The CPUs the cgroup's bandwidth limit allows (1.5 for a quota of 150000 per 100000 us), None where none is
    set or none can be read."""
    for quota_file, period_file in (("cpu.max", None), ("cpu/cpu.cfs_quota_us", "cpu/cpu.cfs_period_us")):
        try:
            with open(os.path.join(cgroup, quota_file)) as handle:
                fields = handle.read().split()
            if period_file:
                with open(os.path.join(cgroup, period_file)) as handle:
                    fields += handle.read().split()
        except OSError:
            continue
        try:
            quota, period = int(fields[0]), int(fields[1])
        except (ValueError, IndexError):  # "max": no limit
            return None
        return quota / period if quota > 0 and period > 0 else None  # -1 (v1): no limit
    return None
