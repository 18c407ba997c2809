"""The harness's guard for threads started under coverage on CPython 3.11 (tests/fixtures/threads.py)."""

from __future__ import annotations

import sys
import threading
from types import FrameType
from typing import Any

import pytest

from tests.fixtures.threads import REFUSAL


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="the guard is only installed on 3.11")
def test_a_thread_refused_its_trace_function_at_start_still_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    def hook(frame: FrameType, event: str, arg: Any) -> None:
        return None

    refusals = 3
    installed = []

    def settrace(function: Any) -> None:
        nonlocal refusals
        if threading.current_thread() is not starter and refusals:
            refusals -= 1
            raise RuntimeError(f"Cannot install a trace function while {REFUSAL}")
        installed.append(function)

    starter = threading.current_thread()
    monkeypatch.setattr(threading, "_trace_hook", hook)
    monkeypatch.setattr(sys, "settrace", settrace)
    ran = threading.Event()
    thread = threading.Thread(target=ran.set)
    thread.start()
    thread.join(timeout=10)
    assert ran.is_set()
    assert refusals == 0
    assert installed == [hook]
