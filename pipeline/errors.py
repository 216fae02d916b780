"""The one error type for mistakes a user can make (bad paths, bad files, bad config)."""

import click


class UserError(click.ClickException):
    """A problem the user can fix: the CLI prints its message and exits with status 2.

    Raise it anywhere in the package; never catch it just to re-raise a traceback.
    """

    exit_code = 2

    def show(self, file=None) -> None:
        click.echo(f"error: {self.format_message()}", err=True, file=file)
