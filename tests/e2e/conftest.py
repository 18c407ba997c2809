"""End-to-end tests: a failing test that ran against real processes shows the tail of their logs."""

from __future__ import annotations

from collections.abc import Generator

import pytest


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    processes = getattr(item, "funcargs", {}).get("processes")
    if report.failed and processes is not None:
        report.sections.append(("medialens processes (log tails)", processes.log_tails()))
    return report
