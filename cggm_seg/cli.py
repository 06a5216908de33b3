"""`cggm-seg`: one entry point, one subcommand per job.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and
``main(args) -> int``; only the module of the chosen subcommand is imported, so
``cggm-seg --help`` stays fast and one broken optional extra cannot break the rest.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import warnings

from cggm_seg.errors import UserError

_C = "cggm_seg.commands."
# command -> (help, module) or command -> {subcommand: (help, module)}
COMMANDS: dict[str, tuple[str, str] | dict[str, tuple[str, str]]] = {
    "demo": ("synthetic BraTS data -> CGGM training -> evaluation table", _C + "demo"),
    "synth": {
        "brats": ("synthetic BraTS-2021-format phantoms (NIfTI)", _C + "synth_brats"),
        "mosi": ("synthetic CMU-MOSI pickles in the MulT/MMSA formats", _C + "synth_mosi"),
        "iemocap": ("synthetic IEMOCAP data in the MulT / h5 feature formats", _C + "synth_iemocap"),
        "food101": ("synthetic UPMC-Food-101 lists and features", _C + "synth_food101"),
    },
    "prepare": {
        "brats": ("validate a BraTS folder and write a k-fold datalist JSON", _C + "prepare_brats"),
    },
    "evaluate": ("BraTS scores (2021 volume, 2023 lesion-wise) of a folder of label maps", _C + "evaluate"),
    "compare": ("paired comparison of scored runs: is B better than A on the same cases?", _C + "compare"),
    "benchmark": {
        "balance": ("methods x seeds x tasks: does balancing help?", _C + "benchmark_balance"),
        "overhead": ("step time and memory of CGGM against joint training", _C + "benchmark_overhead"),
        "gpu": ("GPU cost of the BraTS bundle: loader, training step, inference", _C + "benchmark_gpu"),
        "cost": ("FLOPs and memory of a training step and of inference, counted", _C + "benchmark_cost"),
        "data": ("per-case cost and size of the BraTS data paths: none, memory, disk", _C + "benchmark_data"),
    },
    "bundle": {
        "path": ("print the folder of a shipped MONAI bundle", _C + "bundle_path"),
    },
    "food101": {
        "extract": ("frozen ViT/BERT features for Food-101 from local model folders", _C + "food101_extract"),
    },
    "report": ("PNG plots and a slice montage for a training run", _C + "report"),
}

#: deprecated spellings (since 0.6.0, removed in 0.7.0), rewritten with a warning before parsing:
#: `benchmark [options]` is `benchmark balance`, `bench overhead` is `benchmark overhead`
_DEFAULT_SUBCOMMAND = {"benchmark": "balance"}
_RENAMED = {"bench": "benchmark"}
_REMOVED_IN = "0.7.0"


def _canonical(argv: list[str]) -> list[str]:
    """``argv`` with the deprecated spellings replaced by the current ones, each with a warning."""
    words = [i for i, a in enumerate(argv) if not a.startswith("-")]
    if not words:
        return argv
    first = words[0]
    if argv[first] in _RENAMED:
        _deprecated(f"`cggm-seg {argv[first]}`", f"`cggm-seg {_RENAMED[argv[first]]}`")
    argv = [*argv[:first], _RENAMED.get(argv[first], argv[first]), *argv[first + 1 :]]
    default = _DEFAULT_SUBCOMMAND.get(argv[first])
    group = COMMANDS.get(argv[first])
    following = argv[first + 1] if first + 1 < len(argv) else None
    if default and isinstance(group, dict) and following not in group and following not in ("-h", "--help"):
        _deprecated(f"`cggm-seg {argv[first]}` without a subcommand", f"`cggm-seg {argv[first]} {default}`")
        argv = [*argv[: first + 1], default, *argv[first + 1 :]]
    return argv


def _deprecated(old: str, new: str) -> None:
    warnings.warn(
        f"{old} is deprecated since 0.6.0 and will be removed in {_REMOVED_IN}; use {new}",
        FutureWarning,
        stacklevel=3,
    )


def _leaf_parser(
    parent: argparse._SubParsersAction, name: str, entry: tuple[str, str], selected: bool
) -> None:
    help_text, module_name = entry
    parser = parent.add_parser(name, help=help_text, description=help_text)
    if selected:
        module = importlib.import_module(module_name)
        module.add_arguments(parser)
        parser.set_defaults(_run=module.main)


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    """Build the parser, importing only the module that ``argv`` selects."""
    parser = argparse.ArgumentParser(prog="cggm-seg", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    words = [a for a in argv if not a.startswith("-")]
    for name, entry in COMMANDS.items():
        chosen = bool(words) and words[0] == name
        if isinstance(entry, tuple):
            _leaf_parser(commands, name, entry, chosen)
            continue
        group = commands.add_parser(name, help=f"{name} {{{','.join(entry)}}}")
        subs = group.add_subparsers(dest="subcommand", metavar="WHAT", required=True)
        for sub_name, sub_entry in entry.items():
            _leaf_parser(subs, sub_name, sub_entry, chosen and len(words) > 1 and words[1] == sub_name)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = _canonical(sys.argv[1:] if argv is None else list(argv))
    args = build_parser(argv).parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args._run(args) or 0)
    except UserError as err:
        print(f"cggm-seg {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
