"""The benchmarks' peak-memory helper (`benchmarks.common.in_child`): a phase run in a fresh
child reports the child's own peak (VmHWM), not the size of the process that started it."""

import pytest

from benchmarks.common import in_child, status_mb

MB = 2**20


def hold(megabytes: int) -> int:
    """Make `megabytes` MB resident (written bytes, not untouched pages); their count."""
    block = b"\x01" * (megabytes * MB)
    return len(block)


def fail() -> None:
    raise ValueError("this phase fails")


def test_the_child_reports_its_own_peak_not_its_parents():
    ballast = b"\x01" * (1024 * MB)  # the parent is large when it starts the child
    parent_mb = status_mb("VmRSS")

    peak = in_child(hold, 200)

    assert len(ballast) == 1024 * MB
    assert peak.result == 200 * MB
    assert peak.main_mb >= 200  # what the child made resident counts ...
    assert peak.main_mb < parent_mb - 500  # ... the parent's gigabyte does not
    assert peak.workers_mb == 0  # it started no processes


def test_a_failing_phase_raises_with_the_childs_traceback():
    with pytest.raises(RuntimeError, match="this phase fails"):
        in_child(fail)
