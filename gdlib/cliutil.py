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


def is_sd_folder(path) -> bool:
    """A diffusers pipeline folder (it holds model_index.json): commands route it to gdlib.sd."""
    from pathlib import Path

    p = Path(path)
    return p.is_dir() and (p / "model_index.json").is_file()


def fail(prog: str, err: BaseException | str) -> int:
    """Print the policy's one error line for `prog` and return the exit code."""
    msg = err if isinstance(err, str) else one_line(err)
    print(f"{prog}: error: {msg}", file=sys.stderr)
    return EXIT_BAD_INPUT


# ------------------------------------------------------------------------------ options derived from config dataclasses
def _is_list(f) -> bool:
    return str(f.type).startswith(("list", "tuple")) or isinstance(_default(f), (list, tuple))


def _default(f):
    import dataclasses

    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _comma_list(text: str) -> list[str]:
    return [w.strip() for w in text.split(",") if w.strip()]


def add_config_args(parser: argparse.ArgumentParser, cls, only: "list[str] | tuple[str, ...] | None" = None,
                    skip: "tuple[str, ...]" = (), defaults: "dict | None" = None) -> list[str]:
    """Add one option per field of the config dataclass `cls` that carries help metadata (gdlib.config.opt): flag
    --field-name unless the field names another, type and default from the field (lists as comma lists, booleans as
    switches that flip the default), dest = the field's name. `only` picks and orders fields; returns their names."""
    import dataclasses

    by_name = {f.name: f for f in dataclasses.fields(cls) if "help" in f.metadata}
    names = [n for n in (only if only is not None else by_name) if n not in skip]
    for name in names:
        f = by_name[name]
        default = (defaults or {}).get(name, _default(f))
        flag = f.metadata.get("flag") or "--" + name.replace("_", "-")
        kw = dict(f.metadata.get("argparse") or {})
        help_text = f.metadata["help"]
        if "choices" not in kw:  # argparse shows {a,b,c} for choices
            kw.setdefault("metavar", flag.lstrip("-").upper().replace("-", "_"))
        if isinstance(default, bool):
            kw.pop("metavar", None)
            parser.add_argument(flag, dest=name, action="store_false" if default else "store_true", help=help_text)
            continue
        if _is_list(f):
            shown = ",".join(map(str, default)) if default else "none"
            parser.add_argument(flag, dest=name, type=_comma_list, default=default, metavar=kw.get("metavar"),
                                help=f"{help_text} (default: {shown})")
            continue
        kw.setdefault("type", type(default) if default is not None else str)
        parser.add_argument(flag, dest=name, default=default,
                            help=help_text if default is None else f"{help_text} (default: {default})", **kw)
    return names


def config_kwargs(args: argparse.Namespace, names: "list[str]") -> dict:
    """The parsed values of add_config_args' fields, ready for cls(**kwargs)."""
    return {n: getattr(args, n) for n in names}
