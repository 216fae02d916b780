"""pipeline/output.py: rank 0 prints the job's lines, `quiet()` drops `say` but not warnings."""

import contextlib
import os
import subprocess
import sys
from pathlib import Path

from pipeline import output

REPO = Path(__file__).resolve().parents[1]
SPEAK = (
    "from pipeline import output\n"
    "output.say('job line')\n"
    "output.say('job error line', err=True)\n"
    "output.warn('job warning')\n"
    "output.say('rank line', every_rank=True)\n"
    "output.warn('rank warning', every_rank=True)\n"
)


def run_as_rank(rank: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RANK"}
    env["PYTHONPATH"] = str(REPO)
    if rank is not None:
        env["RANK"] = rank
    return subprocess.run(
        [sys.executable, "-c", SPEAK], env=env, capture_output=True, text=True, check=True
    )


def test_rank_zero_prints_every_line_and_other_ranks_only_their_own():
    for rank in (None, "0"):
        main = run_as_rank(rank)
        assert main.stdout.splitlines() == ["job line", "rank line"]
        assert main.stderr.splitlines() == [
            "job error line",
            "warning: job warning",
            "warning: rank warning",
        ]
    other = run_as_rank("1")
    assert other.stdout.splitlines() == ["rank line"]
    assert other.stderr.splitlines() == ["warning: rank warning"]


def test_quiet_drops_say_lines_but_not_warnings(capsys):
    output.say("before")
    with output.quiet():
        output.say("dropped")
        output.say("dropped too", err=True)
        output.warn("still shown")
        with output.quiet():
            output.say("nested: dropped")
        output.say("still quiet")
    output.say("after", err=True)
    captured = capsys.readouterr()
    assert captured.out.splitlines() == ["before"]
    assert captured.err.splitlines() == ["warning: still shown", "after"]


def test_lines_go_where_the_stream_is_redirected_now(capsys, tmp_path):  # a sweep run's log
    log = tmp_path / "log.txt"
    with open(log, "w", encoding="utf-8") as handle, contextlib.redirect_stdout(handle):
        output.say("into the log", bold=True)  # no terminal: no escape codes
    assert log.read_text("utf-8") == "into the log\n"
    assert capsys.readouterr().out == ""
