"""The `storybook` command's shell: the command group, its global options, and how every command runs (errors
as one line without a traceback unless --debug, storybook's warnings as "Warning:" lines)."""

import os
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.text import Text
from tqdm import tqdm
from typer.core import TyperGroup

from storybook.errors import StorybookError, describe_problems
from storybook.quiet import quiet_libraries, quiet_library_logs
from storybook.storage import HOME_ENV, MODEL_ENV, data_home
from storybook.text import shown

PACKAGE_DIR = str(Path(__file__).resolve().parent.parent) + os.sep  # storybook/: its warnings are shown


class StorybookGroup(TyperGroup):
    """The `storybook` command group: a bad option or argument is said as every other error is, one line on stderr
    and exit code 1 (rather than click's usage box and exit code 2)."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        """Run the command line given (see click's `main`)."""
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            outcome = super().main(*args, standalone_mode=False, **kwargs)
        except typer.TyperException as error:  # click's errors: a bad option or argument, an unknown command
            if type(error).__name__ == "NoArgsIsHelpError":  # the help is shown already (typer tells it so too)
                sys.exit(error.exit_code)
            context = getattr(error, "ctx", None)
            hint = f" (`{context.command_path} --help` shows the options)" if context else ""
            say_error(error.format_message() + hint)
            sys.exit(1)
        except typer.Abort:  # a question answered no
            say_error("Stopped; nothing was changed.")
            sys.exit(1)
        sys.exit(outcome if isinstance(outcome, int) else 0)  # an Exit's code (click returns it here), else 0


app = typer.Typer(
    cls=StorybookGroup, help="Make personalised picture books from a few photos of a child.", no_args_is_help=True
)


console = Console(markup=False)  # user text ("[/x]" in a title) is printed as it is


stderr = Console(markup=False, stderr=True)  # error and warning lines


state = {"home": None, "debug": False}


ModelOption = Annotated[
    str | None,
    typer.Option(
        "--model",
        help="Base model: storybook-mini, tiny, a local diffusers folder or a hub id (default: the data root's "
        f"config, else ${MODEL_ENV}, else storybook-mini).",
    ),
]


CaptionerOption = Annotated[
    str | None,
    typer.Option(
        help="BLIP captioning weights that caption the photos: a local folder or a downloaded hub id, e.g. "
        "Salesforce/blip-image-captioning-base (never downloaded here).",
    ),
]


def ray_address_option(address: str | None) -> str | None:
    """The --ray-address given, when it is a Ray cluster's address."""
    from storybook.cluster import check_ray_address

    try:
        return check_ray_address(address)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None


RayAddressOption = Annotated[
    str | None,
    typer.Option(
        callback=ray_address_option, help="A Ray cluster's address, as `ray start --head` prints it (HOST:PORT)."
    ),
]


@app.callback()
def main(
    home: Annotated[
        Path | None, typer.Option(help=f"Data root holding characters/ and books/ (default: ${HOME_ENV} or the cwd).")
    ] = None,
    debug: Annotated[bool, typer.Option(help="Show full tracebacks.")] = False,
) -> None:
    """Global options."""
    state["home"] = data_home(home)
    state["debug"] = debug
    if not debug:
        quiet_library_logs()  # before any command imports a model library


def run(action, loads_models: bool = False):
    """Run `action()`; any error becomes a message saying what happened and what to do, and exit code 1 (a
    traceback only with --debug), and storybook's own warnings (a damaged character skipped) become "Warning:" lines.
    `loads_models`: the action loads models, whose libraries are quieted first."""
    if loads_models and not state["debug"]:
        quiet_libraries()
    if state["debug"]:
        return action()  # every warning and the traceback as they are
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            try:
                return action()
            finally:
                for message in dict.fromkeys(str(w.message) for w in caught if w.filename.startswith(PACKAGE_DIR)):
                    say_warning(message)
    except (typer.Exit, typer.Abort):
        raise
    except Exception as error:
        say_error(error_message(error))
        raise typer.Exit(1) from None


def say_error(message: str) -> None:
    """Print `message` as a red "Error:" line on stderr, unwrapped, its hidden characters escaped (storybook/text.py:
    an error may quote a file name or a server's words)."""
    stderr.print(Text.assemble(("Error: ", "red"), shown(message)), soft_wrap=True)


def say_warning(message: str) -> None:
    """Print `message` as a yellow "Warning:" line on stderr, unwrapped, its hidden characters escaped."""
    stderr.print(Text.assemble(("Warning: ", "yellow"), shown(message)), soft_wrap=True)


def error_message(error: Exception) -> str:
    """What to tell a user about `error`: storybook's own message, a bad value by field, a file-system problem in
    plain words, or (for a bug) its type and text with how to see more."""
    if isinstance(error, StorybookError):
        return str(error)
    if isinstance(error, ValidationError):
        return f"Bad value: {describe_problems(error)}."
    if isinstance(error, OSError):
        where = f" ({error.filename})" if error.filename else ""
        return f"{error.strerror or error}{where}: check the path, its permissions and the free disk space."
    return f"Unexpected {type(error).__name__}: {error}. Run again with --debug to see where, and report it."


@contextmanager
def progress_bar(description: str) -> Iterator[Callable[[int, int], None]]:
    """A tqdm bar for `description`, given as a `progress(done, total)` callback; shown from the first report on, so
    that a run refused before any work prints its message alone."""
    bars: list[tqdm] = []

    def update(done: int, total: int) -> None:
        if not bars:
            bars.append(tqdm(desc=description, unit="page", total=total))
        bars[0].total = total
        bars[0].n = done
        bars[0].refresh()

    try:
        yield update
    finally:
        for bar in bars:
            bar.close()
