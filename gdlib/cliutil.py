"""The command line's error policy, shared by every subcommand (no Jittor import: `--help` stays fast).

A bad argument or bad input ends a command with ONE line `gdlib <cmd>: error: <what and what to do>` on stderr and
exit code 2, never a traceback; nothing written so far is removed or overwritten half-way (writers are atomic).
"""
from __future__ import annotations

import argparse
import sys

EXIT_BAD_INPUT = 2
# exceptions that mean "the input or the arguments are wrong", by class name (some live in optional libraries:
# safetensors' SafetensorError, PIL's DecompressionBombError)
INPUT_ERRORS = (ValueError, OSError, UnicodeError, FloatingPointError)
INPUT_ERROR_NAMES = {"SafetensorError", "DecompressionBombError", "UnidentifiedImageError", "JSONDecodeError",
                     "HeaderTooLarge", "InvalidHeaderDeserialization"}


class Parser(argparse.ArgumentParser):
    """argparse with the policy's one-line error (argparse's own prints the usage block first)."""

    def error(self, message: str):  # noqa: D102 - argparse API
        print(f"{self.prog}: error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


def is_input_error(err: BaseException) -> bool:
    """Whether an exception reports bad input (see INPUT_ERRORS) rather than a bug."""
    return isinstance(err, INPUT_ERRORS) or type(err).__name__ in INPUT_ERROR_NAMES


def one_line(err: BaseException) -> str:
    """The exception's message on one line (a KeyError's repr quotes are dropped)."""
    text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    text = " ".join(text.split()) or type(err).__name__
    return text


def fail(prog: str, err: BaseException | str) -> int:
    """Print the policy's one error line for `prog` and return the exit code."""
    msg = err if isinstance(err, str) else one_line(err)
    print(f"{prog}: error: {msg}", file=sys.stderr)
    return EXIT_BAD_INPUT
