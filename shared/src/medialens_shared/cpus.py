"""How many CPUs this process may use: the fewer of those it may run on and those its cgroup's quota buys.

`os.sched_getaffinity` counts the CPUs the process may be scheduled on, which in a container is every CPU
of the node: a Kubernetes CPU limit is a quota of CPU time (`cpu.max` in cgroup v2, `cpu.cfs_quota_us` over
`cpu.cfs_period_us` in v1), not a set of CPUs. A video service with a limit of 2 CPUs on a 64-core node
started 64 decoders for one `video.scenes` job, throttled to 2 CPUs' time and holding 64 decoders' frames.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

#: Where the quota is read: cgroup v2's unified file, then cgroup v1's pair.
CGROUP_ROOT = Path("/sys/fs/cgroup")


def usable_cpus(root: Path = CGROUP_ROOT) -> int:
    """The CPUs this process may use, at least 1: its affinity, capped by its cgroup's CPU quota (rounded
    up: a quota of 1.5 CPUs keeps two busy half the time)."""
    cpus = len(os.sched_getaffinity(0))
    quota = cpu_quota(root)
    return max(1, min(cpus, math.ceil(quota))) if quota is not None else max(1, cpus)


def cpu_quota(root: Path = CGROUP_ROOT) -> float | None:
    """The cgroup's CPU quota in CPUs, None when there is none (or no cgroup file says)."""
    try:
        quota, _, period = (root / "cpu.max").read_text().partition(" ")
        if quota.strip() == "max":
            return None
        return _ratio(quota, period)
    except (OSError, ValueError):
        pass
    try:
        quota = (root / "cpu" / "cpu.cfs_quota_us").read_text()
        period = (root / "cpu" / "cpu.cfs_period_us").read_text()
        return _ratio(quota, period)
    except (OSError, ValueError):
        return None


def _ratio(quota: str, period: str) -> float | None:
    """`quota` over `period`, in CPUs; None for no quota (cgroup v1 writes -1)."""
    used, every = int(quota), int(period)
    return used / every if used > 0 and every > 0 else None
