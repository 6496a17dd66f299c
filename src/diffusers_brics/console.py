"""Running a command-line entry point: a user error is one line on stderr and a non-zero exit, not a traceback.

Every command of the package (`brics ...`, ``python -m diffusers_brics ...``, the training modules run with
``python -m`` or ``accelerate launch -m`` and the scripts in ``examples/``) goes through `run_command`. ``--debug``
anywhere on the command line (or ``BRICS_DEBUG=1``) lets the exception through with its traceback instead.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

DEBUG_FLAG = "--debug"
ENV_DEBUG = "BRICS_DEBUG"
# Exit status of a command stopped by a user error (argparse uses 2 for its own usage errors).
USER_ERROR = 1
# The usage line of commands with many flags: argparse prints the usage above each of its errors, and a list of
# sixty flags would bury the one line that matters.
SHORT_USAGE = "%(prog)s [FLAG VALUE ...]  (--help describes every flag)"


def run_command(main: Callable[[list[str]], int | None], argv: Sequence[str] | None = None, prog: str | None = None
                ) -> int:
    """Call ``main(argv)`` (default: the process's arguments) and return its exit status; an exception becomes
    ``prog: error: message`` on stderr and status 1 unless ``--debug`` is among the arguments."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = DEBUG_FLAG in args or os.environ.get(ENV_DEBUG, "") not in ("", "0")
    args = [a for a in args if a != DEBUG_FLAG]
    name = prog or os.path.basename(sys.argv[0])
    if debug:
        return main(args) or 0
    try:
        return main(args) or 0
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of the output went away (`brics info | head`): stop without a message
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing more to flush at exit
        return USER_ERROR
    except Exception as error:  # noqa: BLE001 - every failure is reported the same way; --debug shows where
        print(f"{name}: error: {describe(error)}", file=sys.stderr)
        print(f"{name}: (run again with {DEBUG_FLAG} for the traceback)", file=sys.stderr)
        return USER_ERROR


def describe(error: BaseException) -> str:
    """One line for an exception: its message, with the type for anything but the usual user errors."""
    message = " ".join(str(error).split()) or type(error).__name__
    if isinstance(error, (ValueError, FileNotFoundError, FileExistsError, PermissionError, NotADirectoryError,
                          IsADirectoryError)):
        return message
    return f"{type(error).__name__}: {message}"


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Help as the commands show it: the description as written, and each flag's default after its help (where it
    has one and the help does not already say it)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "%(default)" in text or "default:" in text or action.default in (None, argparse.SUPPRESS) or (
                action.option_strings and action.nargs == 0 and action.default is False) or action.required:
            return text
        return f"{text} (default: %(default)s)"
