"""`captioner inspect`: a caption file as extract and train would see it (no image decoded)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from pipeline import output
from pipeline.cli_options import config_options
from pipeline.config import load_config
from pipeline.errors import UserError


@click.command("inspect")
@click.argument("captions", type=click.Path(path_type=Path))
@config_options("TOML config ([data] format, split_ratios, split_lists, language; [vocab]).")
@click.option(
    "--images",
    "images_dir",
    type=click.Path(path_type=Path),
    help="Images folder: say which named images are missing or unreadable (a stat, no decode).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead.")
def inspect_command(
    captions: Path, config_path: str | None, overrides: tuple[str, ...], images_dir, as_json
) -> None:
    """Report what CAPTIONS gives training: images, captions, splits and where they come
    from, vocabulary and caption lengths. Exit 2 with the reason when it is not usable."""
    from pipeline.dataset.inspection import inspect_captions, inspection_lines  # pandas

    report = inspect_captions(captions, load_config(config_path, overrides), images_dir)
    if as_json:
        output.say(json.dumps(report.to_json(), ensure_ascii=False))
    else:
        output.say("\n".join(inspection_lines(report)))
    if report.problems:
        raise UserError(f"{captions} is not usable: {'; '.join(report.problems)}")
    if not as_json:
        output.say("usable: yes")
