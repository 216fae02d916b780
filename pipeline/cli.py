"""The `captioner` command (also `python -m pipeline`).

Each subcommand lives next to the code it drives; this module only assembles them.
"""

import click

from pipeline.captions.cli import demo_data_command
from pipeline.dataset.cli import inspect_command
from pipeline.demo import demo_command
from pipeline.extract.cli import extract_command
from pipeline.infer.cli import caption_command, evaluate_command
from pipeline.sweep.cli import sweep_command
from pipeline.testbed.cli import testbed_command
from pipeline.train.cli import train_command


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="captioner")
def main() -> None:
    """captioner: cache backbone grids once (extract), then train, evaluate and caption."""


main.add_command(demo_data_command)
main.add_command(inspect_command)
main.add_command(extract_command)
main.add_command(train_command)
main.add_command(evaluate_command)
main.add_command(caption_command)
main.add_command(demo_command)
main.add_command(testbed_command)
main.add_command(sweep_command)
