"""What torchrun tells each process it starts (RANK, WORLD_SIZE, LOCAL_RANK), read without
importing torch: the output path (pipeline/output.py) needs the rank before, and without,
any process group (pipeline/distributed.py)."""

import os

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


def launched_by_torchrun() -> bool:
    """Whether torchrun (or another launcher using its variables) started this process."""
    return all(key in os.environ for key in TORCHRUN_VARIABLES)


def launch_rank() -> int:
    """This process's RANK as torchrun set it (0 without torchrun), before any setup."""
    return int(os.environ.get("RANK", "0"))
