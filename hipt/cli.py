"""The ``hipt`` command line: one subcommand per module.

Each subcommand lives in the module of its concept, which defines::

    def add_arguments(parser: argparse.ArgumentParser) -> None: ...
    def run(args: argparse.Namespace) -> int: ...     # the exit code

Modules are imported only when their subcommand runs, so ``hipt --help`` is instant.  Errors derived
from :class:`hipt.errors.HIPTError` are printed as one line (``error: <file>: <problem>``), never as a
traceback; set ``HIPT_DEBUG=1`` to see the traceback anyway.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from hipt import __version__
from hipt.errors import HIPTError

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "patch": ("hipt.tiling", "find tissue and cut slides into 4096-px regions (coords .h5, masks, thumbnails)"),
    "phantom": ("hipt.phantom.cli", "generate phantom H&E slides or cohorts with ground truth"),
    "extract": ("hipt.features", "extract hierarchical features [M,256,384] and [M,192] per slide"),
    "pretrain": ("hipt.pretrain.trainer", "two-stage DINO pretraining (stage 1: ViT256-16, stage 2: ViT4096-256)"),
    "finetune": ("hipt.tasks.train", "train slide-level models (HIPT, MIL baselines) for subtyping or survival"),
    "knn": ("hipt.knn", "KNN evaluation of mean slide embeddings"),
    "released": ("hipt.released.cli", "real TCGA tables from the reference's released embeddings (fetch, knn, table1, ...)"),
    "heatmap": ("hipt.attention.cli", "attention heatmaps for regions and whole slides"),
    "route": ("hipt.tasks.route", "from TCGA slides to Table 1: download manifest, feature check, time and disk estimate"),
    "reproduce": ("hipt.book.reproduce", "rerun the book's chapters with papermill and assemble the results tables"),
}


def _top_parser() -> argparse.ArgumentParser:
    lines = "\n".join(f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items())
    p = argparse.ArgumentParser(
        prog="hipt",
        description="HIPT for gigapixel pathology.",
        epilog=f"commands:\n{lines}\n\nRun 'hipt COMMAND --help' for a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"hipt {__version__}")
    p.add_argument("command", choices=list(COMMANDS), metavar="COMMAND", help="one of: " + ", ".join(COMMANDS))
    return p


def build_parser(command: str) -> argparse.ArgumentParser:
    """The parser of one subcommand (imports its module)."""
    module_name, help_ = COMMANDS[command]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(
        prog=f"hipt {command}", description=(module.__doc__ or help_).strip().split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    module.add_arguments(parser)
    parser.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-") or argv[0] not in COMMANDS:
        _top_parser().parse_args(argv)  # prints help / version / the error, and exits
        return 2
    args = build_parser(argv[0]).parse_args(argv[1:])
    try:
        return int(args._run(args) or 0)
    except HIPTError as e:
        if os.environ.get("HIPT_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
