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

from cggm_seg.errors import UserError

# command -> (help, module) or command -> {subcommand: (help, module)}
COMMANDS: dict[str, tuple[str, str] | dict[str, tuple[str, str]]] = {
    "demo": ("synthetic BraTS data -> CGGM training -> evaluation table", "cggm_seg.demo"),
    "synth": {
        "brats": ("synthetic BraTS-2021-format phantoms (NIfTI)", "data_prep.synth_brats"),
        "mosi": ("synthetic CMU-MOSI pickles in the MulT/MMSA formats", "data_prep.synth_mosi"),
        "iemocap": ("synthetic IEMOCAP data in the MulT / h5 feature formats", "data_prep.synth_iemocap"),
        "food101": ("synthetic UPMC-Food-101 lists and features", "data_prep.synth_food101"),
    },
    "prepare": {
        "brats": ("validate a BraTS folder and write a k-fold datalist JSON", "data_prep.brats_datalist"),
    },
    "evaluate": ("BraTS Dice/HD95 of a folder of label maps against ground truth", "cggm_seg.evaluate"),
    "bench": {
        "overhead": ("step time and memory of CGGM against joint training", "cggm_seg.bench_overhead"),
    },
    "food101": {
        "extract": ("frozen ViT/BERT features for Food-101 from local model folders",
                    "cggm_seg.adapters.food101_extract"),
    },
    "benchmark": ("methods x seeds modality-balance benchmark -> docs/BENCHMARK.md", "cggm_seg.benchmark"),
    "report": ("PNG plots and a slice montage for a training run", "cggm_seg.report"),
}


def _leaf_parser(parent: argparse._SubParsersAction, name: str, entry: tuple[str, str],
                 selected: bool) -> None:
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
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args._run(args) or 0)
    except UserError as err:
        print(f"cggm-seg {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
