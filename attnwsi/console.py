"""What the commands tell the user on the console, where two commands say the same thing, and how a user's
mistake ends a command: `UserError`, printed by `reports_user_errors` as one message, without a traceback."""

from __future__ import annotations

import functools
from collections.abc import Callable

from omegaconf.errors import MissingMandatoryValue
from rich.console import Console
from rich.text import Text


class UserError(Exception):
    """A mistake the user can fix (a file, an option): the message names it and says how."""


def reports_user_errors(main: Callable) -> Callable:
    """A command's main that prints a `UserError` or a missing mandatory option (Hydra's `???`) as one
    message on stderr and exits with status 2; programming errors keep their traceback."""

    @functools.wraps(main)
    def command(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except MissingMandatoryValue as error:
            message = f"the option {error.full_key} is required: add {error.full_key}=... to the command"
        except UserError as error:
            message = str(error)
        Console(stderr=True).print(Text.assemble(("error: ", "red"), message), soft_wrap=True)
        raise SystemExit(2)

    return command


def print_skipped_slides(console: Console, failures: dict[str, str], n_slides: int) -> None:
    """Tell the user which slides a run skipped, each with its reason (nothing when none failed)."""
    if failures:
        console.print(f"[red]{len(failures)} of {n_slides} slides failed and were skipped:[/red]")
        for slide_id, reason in failures.items():
            console.print(Text.assemble("  ", (slide_id, "red"), f": {reason}"), soft_wrap=True)
