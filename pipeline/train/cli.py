"""`captioner train`: train the decoder from the feature cache (or resume a run)."""

from pathlib import Path

import click

from pipeline.cli_options import config_options
from pipeline.config import load_config
from pipeline.errors import UserError


@click.command("train")
@config_options("TOML experiment file (configs/*.toml).")
@click.option(
    "--resume",
    "resume",
    type=click.Path(file_okay=False),
    help="Continue the run in this folder from its last.pt.",
)
@click.option(
    "--init",
    "init",
    type=click.Path(),
    help="Start a NEW run from this checkpoint's weights, vocabulary and splits "
    "(a run folder means its best.pt), e.g. SCST after cross-entropy.",
)
def train_command(config_path, overrides, resume, init):
    """Train the caption decoder from cached ResNet50 grids (never the images)."""
    from pipeline.train.run_folder import restart_config
    from pipeline.train.trainer import train

    if resume:
        if init:
            raise UserError("--init starts a new run; it cannot be combined with --resume")
        if config_path:
            raise UserError(
                "--resume continues a run with the config it was started with: drop --config "
                "(change keys with --set), or start a new run with --config"
            )
        if not (Path(resume) / "last.pt").is_file():
            train(restart_config(Path(resume), tuple(overrides)))
            return
        train(None, resume=resume, overrides=tuple(overrides))
        return
    if not config_path:
        raise UserError("train needs --config FILE (or --resume RUN_DIR)")
    train(load_config(config_path, overrides), init=init)
