"""Write ``book/appendix_api.md``: one ``automodule`` per module of the ``hipt`` package, grouped.

Run it when a module is added or removed (``tests/test_book_structure.py`` fails until you do)::

    python tools/api_appendix.py          # rewrite the page
    python tools/api_appendix.py --check  # exit 1 if the page is out of date

The page is built by Sphinx autodoc (+ napoleon) as part of the book, with ``-W -n``: a docstring
that is not valid reStructuredText, or a cross-reference to a ``hipt.*`` object that does not exist,
fails the build. References to names outside the package (numpy, torch, pathlib types) are not
checked (``nitpick_ignore_regex`` in ``_config.yml``): there is no network for their inventories.
"""

from __future__ import annotations

import argparse
import pkgutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "book" / "appendix_api.md"

# reading order; modules not named here go to "Other modules"
GROUPS = [
    ("Slides and patching", ["hipt.slide", "hipt.tissue", "hipt.tiling", "hipt.phantom", "hipt.phantom.textures",
                             "hipt.phantom.layouts", "hipt.phantom.slides", "hipt.phantom.cohorts",
                             "hipt.phantom.checks", "hipt.phantom.ground_truth", "hipt.phantom.cli"]),
    ("Models", ["hipt.models", "hipt.models.vit", "hipt.models.hipt4k", "hipt.models.slide_heads",
                "hipt.models.weights", "hipt.models.mil"]),
    ("Feature extraction", ["hipt.features"]),
    ("Pretraining", ["hipt.pretrain", "hipt.pretrain.augment", "hipt.pretrain.head", "hipt.pretrain.loss",
                     "hipt.pretrain.schedules", "hipt.pretrain.data", "hipt.pretrain.config",
                     "hipt.pretrain.trainer", "hipt.pretrain.export"]),
    ("Slide-level tasks", ["hipt.tasks", "hipt.tasks.tcga", "hipt.tasks.splits", "hipt.tasks.preflight",
                           "hipt.tasks.datasets", "hipt.tasks.train", "hipt.tasks.tables", "hipt.tasks.route",
                           "hipt.metrics", "hipt.survival", "hipt.knn"]),
    ("Real TCGA from the released embeddings", ["hipt.released", "hipt.released.registry", "hipt.released.fetch",
                                                "hipt.released.slide", "hipt.released.patch", "hipt.released.cli"]),
    ("Attention", ["hipt.attention", "hipt.attention.maps", "hipt.attention.map_arithmetic",
                   "hipt.attention.validation", "hipt.attention.slide_model", "hipt.attention.plotting",
                   "hipt.attention.explorer", "hipt.attention.cli"]),
    ("Provenance and plumbing", ["hipt.provenance", "hipt.cli", "hipt.io", "hipt.jobs", "hipt.device",
                                 "hipt.precision", "hipt.paths", "hipt.errors"]),
    ("The book's pipeline: presets, train-or-load, phantom tasks, reproduction",
     ["hipt.book", "hipt.book.zoo", "hipt.book.tasks", "hipt.book.reproduce"]),
    ("The book's evidence: claims over seeds and findings that follow the numbers",
     ["hipt.book.evidence", "hipt.book.evidence.stage1", "hipt.book.evidence.stage2",
      "hipt.book.evidence.finetuning", "hipt.book.evidence.knn", "hipt.book.evidence.survival",
      "hipt.book.evidence.extraction"]),
]

HEADER = """\
# API reference

Generated from the docstrings of the `hipt` package (Sphinx autodoc; this page is written by
`python tools/api_appendix.py`). Tensor shapes are given in brackets, e.g. `[M, 256, 384]` for the
patch features of $M$ regions. Each command of the command line (`hipt COMMAND --help`) lives in the
module of its concept: {commands}.

```{{eval-rst}}
.. automodule:: hipt
```
"""


def _commands_sentence(present: set[str]) -> str:
    from hipt.cli import COMMANDS

    items = [f"`hipt {name}` in {{py:mod}}`{module}`" for name, (module, _) in COMMANDS.items() if module in present]
    return ", ".join(items) if items else "none yet"


def package_modules() -> list[str]:
    """Every public module of ``hipt`` (names starting with ``_`` excluded)."""
    sys.path.insert(0, str(ROOT))
    import hipt

    return sorted(
        m.name for m in pkgutil.walk_packages(hipt.__path__, "hipt.")
        if not m.name.rsplit(".", 1)[-1].startswith("_")
    )


def render(modules: list[str] | None = None) -> str:
    """The page's text for the given (default: the package's) modules."""
    modules = package_modules() if modules is None else modules
    present = set(modules)
    named = {m for _, ms in GROUPS for m in ms}
    groups = [(title, [m for m in ms if m in present]) for title, ms in GROUPS]
    other = sorted(present - named)
    if other:
        groups.append(("Other modules", other))
    parts = [HEADER.format(commands=_commands_sentence(present))]
    for title, ms in groups:
        if not ms:
            continue
        parts.append(f"\n## {title}\n")
        for m in ms:
            parts.append(f"\n### `{m}`\n\n```{{eval-rst}}\n.. automodule:: {m}\n```\n")
    return "".join(parts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="exit 1 if the page is out of date")
    args = p.parse_args(argv)
    text = render()
    current = PAGE.read_text(encoding="utf-8") if PAGE.is_file() else None
    if current == text:
        print(f"ok    {PAGE.relative_to(ROOT)}")
        return 0
    if args.check:
        print(f"STALE {PAGE.relative_to(ROOT)} (run: python tools/api_appendix.py)")
        return 1
    PAGE.write_text(text, encoding="utf-8")
    print(f"wrote {PAGE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
