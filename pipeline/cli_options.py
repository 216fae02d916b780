"""Command-line options several commands share (click): `--config` and `--set`."""

import click


def config_options(config_help: str, default: str | None = None):
    """Click decorator for a command that reads a config: `--config PATH` (-> `config_path`)
    and `--set SECTION.KEY=VALUE`, repeatable (-> `overrides`), the two arguments of
    `load_config`."""

    def decorate(command):
        command = click.option(
            "--set",
            "overrides",
            multiple=True,
            metavar="SECTION.KEY=VALUE",
            help="Override a config key; repeatable.",
        )(command)
        return click.option(
            "--config",
            "config_path",
            default=default,
            show_default=default is not None,
            type=click.Path(dir_okay=False),
            help=config_help,
        )(command)

    return decorate
