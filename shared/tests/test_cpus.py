"""The CPUs a process may use: its affinity capped by its cgroup's quota, read from files laid out as the
kernel lays them out (cgroup v2's `cpu.max`, v1's `cpu.cfs_quota_us` and `cpu.cfs_period_us`)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from medialens_shared.cpus import cpu_quota, usable_cpus


def v2(root: Path, text: str) -> Path:
    root.mkdir(exist_ok=True)
    (root / "cpu.max").write_text(text)
    return root


def v1(root: Path, quota: str, period: str = "100000\n") -> Path:
    (root / "cpu").mkdir(parents=True)
    (root / "cpu" / "cpu.cfs_quota_us").write_text(quota)
    (root / "cpu" / "cpu.cfs_period_us").write_text(period)
    return root


@pytest.mark.parametrize(
    ("layout", "quota"),
    [
        (lambda root: v2(root, "max 100000\n"), None),
        (lambda root: v2(root, "150000 100000\n"), 1.5),
        (lambda root: v2(root, "200000 100000\n"), 2.0),
        (lambda root: v1(root, "-1\n"), None),
        (lambda root: v1(root, "50000\n"), 0.5),
        (lambda root: v1(root, "400000\n", "200000\n"), 2.0),
        (lambda root: root, None),  # no cgroup file at all (not Linux, or not mounted)
        (lambda root: v2(root, "garbage\n"), None),
    ],
)
def test_the_quota_is_read_from_either_cgroup_version(
    tmp_path: Path, layout: Callable[[Path], Path], quota: float | None
) -> None:
    assert cpu_quota(layout(tmp_path)) == quota


def test_usable_cpus_are_the_affinity_capped_by_the_quota_rounded_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """64 CPUs of a node under a quota of 1.5 are 2 usable; a quota above the affinity leaves the affinity;
    half a CPU is still one."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(64)))
    assert usable_cpus(v2(tmp_path / "a", "150000 100000")) == 2
    assert usable_cpus(v2(tmp_path / "b", "max 100000")) == 64
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1})
    assert usable_cpus(v2(tmp_path / "c", "800000 100000")) == 2
    assert usable_cpus(v1(tmp_path / "d", "50000")) == 1
