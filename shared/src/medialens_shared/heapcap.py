"""A cap on a process's heap, below its container's memory limit, so that running out is an error.

DuckDB bounds the memory of its operators (`memory_limit`), but not all of it: a list or a string that one
function builds is allocated whole (`SELECT list_sum(range(300000000))` took 15 GB, a Damerau-Levenshtein
distance of two 40,000-character strings 13 GB), and the query's interrupt is only looked at between
chunks. In a container of 1.5 GiB the kernel killed the data service for one short query, with every job
it ran. With the process's data segment capped (`RLIMIT_DATA`, which since Linux 4.7 counts every private
writable mapping, where large allocations go), the allocation fails instead: DuckDB raises its "Out of
Memory Error", which the job reports as its query's fault (INVALID_PARAMS), and the service goes on.

The cap counts address space, not resident memory: what a process has mapped writable, touched or not
(thread stacks are 8 MB each), so it sits at a share of the limit, not at the limit itself.
"""

from __future__ import annotations

import logging
import resource

from medialens_shared.metrics import memory_limit_bytes

log = logging.getLogger(__name__)


def heap_cap_bytes(share: float, limit: int | None) -> int | None:
    """`share` of the container's memory `limit`; None when either is none (no cap)."""
    if not share or limit is None:
        return None
    return int(limit * share)


def cap_heap(share: float, *, limit: int | None = None) -> int | None:
    """Cap this process's data segment at `share` of `limit` (the container's memory limit when not
    given); the cap set, or None when there is none to set. A cap already lower is kept."""
    cap = heap_cap_bytes(share, memory_limit_bytes() if limit is None else limit)
    if cap is None:
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    if soft != resource.RLIM_INFINITY and soft <= cap:
        return soft
    resource.setrlimit(resource.RLIMIT_DATA, (cap, hard))
    log.info("heap capped at %d MB (%.0f%% of the container's memory limit)", cap // 2**20, share * 100)
    return cap
