"""What every dlzoo command shares: the group that renders errors, common options, JSON output.

A command module imports from here (never from ``dlzoo.cli``, which imports the command modules to
register them), defines ``@click.command()`` functions that raise ``ZooError`` for bad input, and
adds them in its ``register(group)``.
"""

from __future__ import annotations

import json
import sys

import click

from dlzoo.zoo.configs import ZooError

JSON_OPTION = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
OVERWRITE_OPTION = click.option("--overwrite", is_flag=True, help="Replace an existing output file (default: refuse).")
SEED = click.IntRange(min=0)


def print_json(data) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False) + "\n")


def _error_line(message: str) -> None:
    text = " ".join(str(message).split())  # one line, whatever the message holds
    click.echo(click.style("error:", fg="red") + " " + text, err=True)


def fail(message: str, code: int = 1):
    """End a command that ran but found nothing to report (exit 1 by convention; 2 is reserved
    for bad input, which commands raise as ZooError instead): one ``error:`` line, then exit."""
    _error_line(message)
    sys.exit(code)


def explicit(ctx: click.Context, name: str) -> bool:
    """Whether the user gave option ``name`` on the command line (not its default)."""
    return ctx.get_parameter_source(name) not in (None, click.core.ParameterSource.DEFAULT)


_notes_shown = False


def _show_notes() -> None:
    """Show the library's notices (the ``dlzoo`` logger, INFO and up) as ``note:`` lines on stderr."""
    global _notes_shown
    if _notes_shown:
        return
    import logging

    class NoteHandler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:  # click.echo finds the current stderr
            click.echo(f"note: {record.getMessage()}", err=True)

    logger = logging.getLogger("dlzoo")
    logger.addHandler(NoteHandler())
    logger.setLevel(logging.INFO)
    _notes_shown = True


class ZooGroup(click.Group):
    """A click group whose every user error -- ``ZooError`` raised by a command, or a usage error
    click finds while parsing -- ends as one ``error:`` line on stderr and exit status 2."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        _show_notes()
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except ZooError as error:
            _error_line(str(error))
            sys.exit(2)
        except click.exceptions.NoArgsIsHelpError as error:  # bare `dlzoo`: help, not an error
            click.echo(error.ctx.get_help())
            sys.exit(0)
        except click.UsageError as error:
            where = error.ctx.command_path if error.ctx is not None else (prog_name or "dlzoo")
            _error_line(f"{where}: {error.format_message()} (see '{where} --help')")
            sys.exit(error.exit_code)
        except click.ClickException as error:
            _error_line(error.format_message())
            sys.exit(error.exit_code)
        except click.Abort:
            click.echo("interrupted", err=True)
            sys.exit(130)
        if standalone_mode:
            sys.exit(code if isinstance(code, int) else 0)
        return code
