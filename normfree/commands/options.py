"""One CLI vocabulary: the flags every subcommand spells the same way, and hidden aliases for old spellings.

:data:`CANONICAL` is the table ``tests/test_cli_vocabulary.py`` checks every subcommand's parser against:
one concept, one visible spelling. Old spellings stay accepted (hidden from ``--help``) and print a
one-line deprecation note to stderr.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Sequence

CANONICAL: dict[str, tuple[str, tuple[str, ...]]] = {
    # concept: (the flag, spellings of the same concept that no subcommand may show)
    "batch size": ("--batch-size", ("--batch", "--bs", "--batch-sizes", "--batchsize")),
    "image size": ("--image-size", ("--size", "--input-size", "--img-size", "--resolution", "--res")),
    "output folder": ("--out-dir", ("--output-dir", "--outdir", "--output", "--out-folder")),
    "data": ("--data", ("--dataset", "--data-dir", "--data-spec")),
    "test subset": ("--test-subset", ("--subset", "--eval-subset")),
    "device": ("--device", ("--dev",)),
    "seed": ("--seed", ("--random-seed",)),
    "number of classes": ("--num-classes", ("--classes", "--n-classes")),
}
"""concept → (canonical flag, other spellings of it that no subcommand may show)."""

DATA_SPECS = "demo, synthetic, npz:DIR, cifar10:DIR, cifar100:DIR or imagefolder:DIR"
"""The data-spec grammar of :func:`normfree.train.data.parse_data_spec`, for help texts."""


def deprecated(old: str, new: str) -> None:
    """The one-line note an old spelling prints (stderr, so piped output stays clean)."""
    print(f"normfree: {old} is deprecated; use {new}", file=sys.stderr)


class _Deprecated(argparse.Action):
    """An old spelling: stores into the canonical flag's ``dest`` after a deprecation note."""

    def __init__(self, option_strings: Sequence[str], dest: str, new: str, const: Any = None,
                 nargs: Any = None, **kwargs: Any) -> None:
        self.new = new
        super().__init__(option_strings, dest, nargs=nargs, const=const, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        deprecated(option_string or self.option_strings[0], self.new)
        setattr(namespace, self.dest, self.const if self.nargs == 0 else values)


def alias(p: argparse.ArgumentParser, old: str, new: str, dest: str, const: Any = None, **kwargs: Any) -> None:
    """Accept ``old`` as a hidden, deprecated spelling of ``new`` (same ``dest``). ``const`` given: a flag
    without a value that stores it (``--no-warmup`` → ``warmup=False``)."""
    if const is not None:
        kwargs["nargs"] = 0
    p.add_argument(old, dest=dest, action=_Deprecated, new=new, const=const, default=argparse.SUPPRESS,
                   help=argparse.SUPPRESS, **kwargs)


def add_batch_size(p: argparse.ArgumentParser, default: Any, help: str, old: Sequence[str] = (),
                   **kwargs: Any) -> None:
    """``--batch-size`` / ``-b``, with ``old`` spellings as aliases."""
    kwargs.setdefault("metavar", "N")
    p.add_argument("-b", "--batch-size", type=int, default=default, dest="batch_size", help=help, **kwargs)
    for o in old:
        alias(p, o, "--batch-size", "batch_size", type=int, nargs=kwargs.get("nargs"))


def add_image_size(p: argparse.ArgumentParser, default: Any, help: str, old: Sequence[str] = ()) -> None:
    p.add_argument("--image-size", type=int, default=default, dest="image_size", metavar="PX", help=help)
    for o in old:
        alias(p, o, "--image-size", "image_size", type=int)


def require(p: argparse.ArgumentParser, dest: str, flag: str) -> None:
    """Make ``flag`` required in a way its aliases satisfy too (argparse's ``required`` counts only the
    flag itself); :func:`missing_required` checks it after parsing."""
    p.set_defaults(required_flags=(*(p.get_default("required_flags") or ()), (dest, flag)))


def missing_required(args: argparse.Namespace) -> list[str]:
    return [flag for dest, flag in getattr(args, "required_flags", ()) if getattr(args, dest, None) is None]


def add_out_dir(p: argparse.ArgumentParser, help: str, default: Any = None, required: bool = False) -> None:
    """``--out-dir DIR`` (old spelling ``--out``)."""
    p.add_argument("--out-dir", dest="out_dir", default=default, metavar="DIR",
                   help=help + (" (required)" if required else ""))
    alias(p, "--out", "--out-dir", "out_dir")
    if required:
        require(p, "out_dir", "--out-dir")


def add_data(p: argparse.ArgumentParser, help: str, **kwargs: Any) -> None:
    p.add_argument("--data", metavar="SPEC", help=f"{help}; SPEC is {DATA_SPECS}", **kwargs)


def add_flag(p: argparse.ArgumentParser, name: str, default: Any = False, help: str | None = None,
             old: str | None = None) -> None:
    """A boolean ``--name`` / ``--no-name``; ``old`` is a former negative spelling (``--no-warmup``) kept as
    an alias when the flag's name changed."""
    dest = name.lstrip("-").replace("-", "_")
    p.add_argument(name, dest=dest, action=argparse.BooleanOptionalAction, default=default, help=help)
    if old:
        alias(p, old, "--no-" + name.lstrip("-"), dest, const=False)


class BoolValueAction(argparse.BooleanOptionalAction):
    """``--amp`` / ``--no-amp``, still accepting the older ``--amp false`` (with a deprecation note)."""

    def __init__(self, option_strings: Sequence[str], dest: str, parse: Any, **kwargs: Any) -> None:
        self.parse = parse
        super().__init__(option_strings, dest, **kwargs)
        self.nargs = "?"
        self.metavar = None

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        if option_string is None or values is None:
            super().__call__(parser, namespace, values, option_string)
            return
        if option_string.startswith("--no-"):
            parser.error(f"{option_string} takes no value")
        try:
            value = self.parse(values)
        except argparse.ArgumentTypeError as err:
            parser.error(f"argument {option_string}: {err}")
        deprecated(f"{option_string} {values}", option_string if value else "--no-" + option_string[2:])
        setattr(namespace, self.dest, value)



class HelpFormatter(argparse.HelpFormatter):
    """Shows a :class:`BoolValueAction` as ``--amp, --no-amp``, without its hidden value form."""

    def _format_action_invocation(self, action: argparse.Action) -> str:
        if isinstance(action, BoolValueAction):
            return ", ".join(action.option_strings)
        return super()._format_action_invocation(action)
