"""What the commands tell the user on the console, where two commands say the same thing, and how a user's
mistake ends a command: `UserError`, printed by `entry_point` as one message, without a traceback."""

from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Callable

from omegaconf.errors import InterpolationResolutionError, InterpolationToMissingValueError, MissingMandatoryValue
from rich.console import Console
from rich.text import Text


class UserError(Exception):
    """A mistake the user can fix (a file, an option): the message names it and says how."""


# Known third-party messages that say nothing to a user of attnwsi: library deprecations, and Lightning's
# notes on what attnwsi does on purpose (its own batch transfer, frozen modules in eval mode, checkpoints it
# wrote itself) or on its plugins' advertisements.
QUIET_WARNINGS = (
    r".*is deprecated",
    r".*[Dd]eprecat",
    r"You have overridden `transfer_batch_to_device`",
    r"Found \d+ module\(s\) in eval mode",
    r"`weights_only` was not set",
)
QUIET_LOG_MESSAGES = ("💡 Tip",)  # Lightning advertising its cloud plugins


def quiet_third_party() -> None:
    """Silence `QUIET_WARNINGS` and `QUIET_LOG_MESSAGES`, leaving progress bars, config summaries, our own
    messages and every other warning."""
    for pattern in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(
            lambda record: not any(m in record.getMessage() for m in QUIET_LOG_MESSAGES))


def entry_point(main: Callable) -> Callable:
    """A command's main: known third-party noise silenced (`quiet_third_party`), and a `UserError` or a
    missing mandatory option (Hydra's `???`) printed as one message on stderr, exit status 2. Programming
    errors keep their traceback."""

    @functools.wraps(main)
    def command(*args, **kwargs):
        quiet_third_party()
        try:
            return main(*args, **kwargs)
        except MissingMandatoryValue as error:
            message = f"the option {error.full_key} is required: add {error.full_key}=... to the command"
        except UserError as error:
            message = str(error)
        except InterpolationToMissingValueError as error:  # e.g. ${data_root_classes:${data.root}}, data.root=???
            message = f"an option is required: {error.msg}; add it to the command"
        except InterpolationResolutionError as error:  # a resolver of ours (attnwsi.training.resolvers) found a mistake
            cause = user_error_in(error)
            if cause is None:
                raise
            message = str(cause)
        Console(stderr=True).print(Text.assemble(("error: ", "red"), message), soft_wrap=True)
        raise SystemExit(2)

    return command


def user_error_in(error: BaseException) -> UserError | None:
    """The UserError that `error` was raised while handling (OmegaConf wraps a resolver's error twice), if any."""
    while error is not None and not isinstance(error, UserError):
        error = error.__cause__ or error.__context__
    return error


def print_skipped_slides(console: Console, failures: dict[str, str], n_slides: int) -> None:
    """Tell the user which slides a run skipped, each with its reason (nothing when none failed)."""
    if failures:
        console.print(f"[red]{len(failures)} of {n_slides} slides failed and were skipped:[/red]")
        for slide_id, reason in failures.items():
            console.print(Text.assemble("  ", (slide_id, "red"), f": {reason}"), soft_wrap=True)
