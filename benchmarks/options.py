"""Command-line pieces the benchmark scripts share."""

from __future__ import annotations

import argparse


def add_set_option(parser: argparse.ArgumentParser, help_text: str) -> None:
    """`--set SECTION.KEY=VALUE`, repeatable, into `args.overrides` (a list): the argparse twin
    of the pipeline's `--set` (`pipeline.config.config_options`), for `load_config`."""
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help=help_text,
    )
