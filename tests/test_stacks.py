"""The harness's stacks of a pytest-xdist worker lost to pytest-timeout (tests/fixtures/stacks.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_a_worker_lost_to_a_hanging_test_has_its_stacks_printed(tmp_path: Path) -> None:
    (tmp_path / "test_hang.py").write_text(
        textwrap.dedent(
            """
            import time

            def test_quick():
                pass

            def wait_in_a_frame_named_for_the_test():
                time.sleep(60)

            def test_hangs():
                wait_in_a_frame_named_for_the_test()
            """
        )
    )
    run_id = uuid.uuid4().hex
    run = subprocess.run(
        [
            *(sys.executable, "-m", "pytest", "test_hang.py", "-p", "no:cacheprovider"),
            *("-p", "tests.fixtures.stacks", "-p", "tests.fixtures.alone"),
            *("-n", "2", "--dist", "loadfile", "--max-worker-restart=0", f"--testrunuid={run_id}"),
            *("-o", "timeout=2", "-o", "timeout_method=thread"),
        ],
        check=False,
        cwd=tmp_path,
        # Not this run's worker's variables: the run inside is a run of its own.
        env={key: value for key, value in os.environ.items() if not key.startswith("PYTEST_XDIST_")}
        | {"PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = run.stdout
    assert run.returncode == 1, out + run.stderr
    assert "stacks written before it was lost" in out, out
    assert "test_hang.py::test_hangs still running after 1 s" in out, out
    assert "in wait_in_a_frame_named_for_the_test" in out, out
    assert "1 failed, 1 passed" in out, out
    # Nothing of the run is left in the temporary directory: neither the stacks nor the `alone` lock's files.
    assert list(Path(tempfile.gettempdir()).glob(f"medialens-tests-{run_id}*")) == []
