"""The CPU policy dim's processes run under (services/cpu_policy.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from services.cpu_policy import children_in_batch_policy

pytestmark = pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="Linux scheduling policies")

POLICY_OF_A_CHILD = [sys.executable, "-c", "import os; print(os.sched_getscheduler(0))"]


def _in_a_fresh_process(code: str) -> str:
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import os\nfrom services.cpu_policy import use_batch_policy\n{code}",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def test_a_process_puts_itself_and_what_it_starts_under_the_batch_policy() -> None:
    out = _in_a_fresh_process(
        "import subprocess, threading\n"
        "print(use_batch_policy(), os.sched_getscheduler(0) == os.SCHED_BATCH)\n"
        "seen = []\n"
        "t = threading.Thread(target=lambda: seen.append(os.sched_getscheduler(0)))\n"
        "t.start(); t.join()\n"
        "print(seen[0] == os.SCHED_BATCH)\n"
        f"child = subprocess.run({POLICY_OF_A_CHILD!r}, capture_output=True, text=True)"
        ".stdout.strip()\n"
        "print(int(child) == os.SCHED_BATCH)\n"
    )
    assert out.split() == ["True", "True", "True", "True"]


def test_a_process_told_not_to_keeps_the_default_policy() -> None:
    out = _in_a_fresh_process(
        "print(use_batch_policy(False), os.sched_getscheduler(0) == os.SCHED_OTHER)"
    )
    assert out.split() == ["False", "True"]


def test_children_started_in_the_block_run_batch_and_the_caller_gets_its_policy_back() -> None:
    before = os.sched_getscheduler(0)
    with children_in_batch_policy():
        inside = subprocess.run(POLICY_OF_A_CHILD, capture_output=True, text=True, check=True)
    after = subprocess.run(POLICY_OF_A_CHILD, capture_output=True, text=True, check=True)
    assert int(inside.stdout) == os.SCHED_BATCH
    assert os.sched_getscheduler(0) == before
    assert int(after.stdout) == before
    with children_in_batch_policy(False):
        off = subprocess.run(POLICY_OF_A_CHILD, capture_output=True, text=True, check=True)
    assert int(off.stdout) == before
