"""The README's demo command, run as a newcomer would."""

from __future__ import annotations

import subprocess
import sys


def test_demo_kills_a_rank_and_prints_results():
    out = subprocess.run([sys.executable, "-m", "elastic_nb", "demo"], capture_output=True,
                         text=True, timeout=240)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert ">>> killing rank 3 with SIGKILL" in lines
    assert any("worker_failed" in line and "rank 3" in line and "SIGKILL" in line for line in lines)
    assert any("restarting" in line and "reason=failure" in line for line in lines)
    assert "[trainer-3:3]:attempt 1: rank 3 of 4 ready" in lines
    assert ">>> results: {0: 80.0, 1: 80.0, 2: 80.0, 3: 80.0}" in lines


def test_demo_rejects_a_rank_outside_the_world():
    out = subprocess.run([sys.executable, "-m", "elastic_nb", "demo", "--kill-rank", "4"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "--kill-rank must be between 0 and 3" in out.stderr
