"""Running a command-line entry point: a user error is one line on stderr and a non-zero exit, not a traceback.

Every command of the package (`brics ...`, ``python -m diffusers_brics ...``, the training modules run with
``python -m`` or ``accelerate launch -m`` and the scripts in ``examples/``) goes through `run_command`. ``--debug``
anywhere on the command line (or ``BRICS_DEBUG=1``) lets the exception through with its traceback instead.

Flags are spelled as diffusers' training scripts spell them, with underscores (``--output_dir``, ``--num_images``).
`ArgumentParser` also takes the hyphen spelling of each multi-word flag (``--output-dir``) as an alias that its help
does not show, and describes ``--debug`` in its help. This module imports nothing heavy: the command lines build
their parsers, and answer ``--help``, without importing torch.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterable, Sequence

DEBUG_FLAG = "--debug"
ENV_DEBUG = "BRICS_DEBUG"
# Exit status of a command stopped by a user error (argparse uses 2 for its own usage errors).
USER_ERROR = 1
# The usage line of commands with many flags: argparse prints the usage above each of its errors, and a list of
# sixty flags would bury the one line that matters.
SHORT_USAGE = "%(prog)s [FLAG VALUE ...]  (--help describes every flag)"
DEBUG_HELP = f"on an error, show its traceback instead of one line (or set {ENV_DEBUG}=1)"


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


class ArgumentParser(argparse.ArgumentParser):
    """The parser of a command: `HelpFormatter` unless told otherwise, ``--debug`` described in its help (with
    ``add_help``), and hidden aliases (`flag_aliases`): the hyphen spelling of each multi-word flag, and those
    `add_alias` adds. An alias on the command line is read as the flag's own spelling, so help, usage and error
    messages show that spelling only. Its subcommands' parsers are of the same class."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        self.aliases: dict[str, str] = {}

    def add_alias(self, alias: str, flag: str) -> None:
        """Accept ``alias`` (a former name, say) for ``flag`` without showing it in the help."""
        self.aliases[alias] = flag

    def _with_debug(self) -> None:
        if self.add_help:  # added on first use, so that it comes after the command's own flags
            document_debug(self)

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None):
        self._with_debug()
        args = sys.argv[1:] if args is None else args
        return super().parse_known_args(canonical_flags(self, args), namespace)

    def format_usage(self) -> str:
        self._with_debug()
        return super().format_usage()

    def format_help(self) -> str:
        self._with_debug()
        return super().format_help()


def document_debug(parser: argparse.ArgumentParser) -> None:
    """Describe ``--debug`` in ``parser``'s help (`run_command` takes the flag off the command line before any parser
    sees it)."""
    if DEBUG_FLAG not in parser._option_string_actions:
        parser.add_argument(DEBUG_FLAG, action="store_true", help=DEBUG_HELP)


def flag_aliases(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Hidden alias -> flag, for the flags of ``parser`` itself (a subcommand's are its own parser's): the hyphen
    spelling of every multi-word long flag (``--output-dir`` for ``--output_dir``, ``--no-use-ema`` for
    ``--no-use_ema``) and the parser's `ArgumentParser.add_alias` ones. A spelling that is itself a flag stays one."""
    flags = {flag for action in parser._actions for flag in action.option_strings}
    aliases = {}
    for flag in flags:
        hyphens = "--" + flag[2:].replace("_", "-") if flag.startswith("--") else flag
        if hyphens != flag and hyphens not in flags:
            aliases[hyphens] = flag
    aliases.update((alias, flag) for alias, flag in getattr(parser, "aliases", {}).items() if alias not in flags)
    return aliases


def canonical_flags(parser: argparse.ArgumentParser, args: Iterable[str]) -> list[str]:
    """``args`` with each alias of a flag of ``parser`` (`flag_aliases`; also as ``--alias=value``) replaced by the
    flag's own spelling; nothing after ``--`` is touched."""
    aliases = flag_aliases(parser)
    out: list[str] = []
    args = list(args)
    for index, arg in enumerate(args):
        if arg == "--":
            return out + args[index:]
        name, equals, value = arg.partition("=") if isinstance(arg, str) else (None, "", "")
        out.append(aliases[name] + equals + value if name in aliases else arg)
    return out
