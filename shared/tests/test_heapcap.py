"""The heap cap: its size from the container's limit, and what it does to a process (in a child of its
own, as the cap is for the process's whole life)."""

from __future__ import annotations

import resource
import subprocess
import sys

from medialens_shared.heapcap import cap_heap, heap_cap_bytes


def test_the_cap_is_a_share_of_the_containers_limit() -> None:
    assert heap_cap_bytes(0.9, 1000 * 2**20) == 900 * 2**20
    assert heap_cap_bytes(0.9, None) is None  # no limit on the container: no cap
    assert heap_cap_bytes(0.0, 1000 * 2**20) is None  # the setting at 0: none


def test_a_capped_process_fails_an_allocation_past_the_cap_and_goes_on() -> None:
    """In a process capped at 600 MB, 1 GB fails as a MemoryError, the process stays up, and a cap
    already lower is kept."""
    script = (
        "import resource\n"
        "from medialens_shared.heapcap import cap_heap\n"
        "assert cap_heap(0.6, limit=1000 * 2**20) == 600 * 2**20\n"
        "assert resource.getrlimit(resource.RLIMIT_DATA)[0] == 600 * 2**20\n"
        "try:\n"
        "    bytearray(2**30)\n"
        "except MemoryError:\n"
        "    print('refused')\n"
        "assert cap_heap(0.9, limit=1000 * 2**20) == 600 * 2**20\n"
        "print(len(bytearray(100 * 2**20)))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["refused", str(100 * 2**20)]
    assert resource.getrlimit(resource.RLIMIT_DATA)[0] == resource.RLIM_INFINITY  # this process untouched
    assert cap_heap(0.9, limit=None) is None
