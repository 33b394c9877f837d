"""Write the Colab notebooks ``book/notebooks/<name>.ipynb`` from the chapters' MyST sources.

The chapters are written as MyST Markdown notebooks (``book/<name>.md``, jupytext header); Colab and
papermill want ``.ipynb``.  This tool converts every notebook page of ``_toc.yml`` (or the files
given) with jupytext and writes the result **deterministically**:

- no outputs, no execution counts (the sources have none);
- cell ids ``cell-0``, ``cell-1``, … instead of nbformat's random ids;
- no ``jupytext`` metadata (it names the jupytext version, which would churn the files);
- the Colab badge's image path ``_static/…`` rewritten to ``../_static/…`` (the notebooks live one
  folder down).

So re-running it on unchanged sources changes nothing, and ``tests/test_book_structure.py`` checks
that every committed notebook equals what this tool makes from its source.

Usage::

    python tools/sync_notebooks.py            # all notebook pages in _toc.yml
    python tools/sync_notebooks.py book/06_finetuning.md
    python tools/sync_notebooks.py --check    # exit 1 if a notebook is missing or out of date
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "book" / "notebooks"


def toc_files(root: Path = ROOT) -> list[Path]:
    """The source files of ``_toc.yml`` in reading order (``root`` first), as paths with suffix."""
    import yaml

    toc = yaml.safe_load((root / "_toc.yml").read_text())
    names = [toc["root"]]

    def walk(node):
        if isinstance(node, dict):
            if "file" in node:
                names.append(node["file"])
            for key in ("parts", "chapters", "sections"):
                for child in node.get(key, []) or []:
                    walk(child)

    walk(toc)
    out = []
    for name in names:
        for suffix in (".md", ".ipynb", ".rst"):
            p = root / (name + suffix)
            if p.is_file():
                out.append(p)
                break
        else:
            out.append(root / (name + ".md"))  # missing: let the caller report it
    return out


def is_notebook_source(path: Path) -> bool:
    """True when ``path`` is a MyST notebook (a jupytext header naming a kernel)."""
    if not path.is_file() or path.suffix != ".md":
        return False
    text = path.read_text(encoding="utf-8")
    if not text.startswith("---"):
        return False
    end = text.find("\n---", 3)
    header = text[3:end] if end > 0 else ""
    return "jupytext" in header and "kernelspec" in header


def notebook_path(source: Path) -> Path:
    """Where the Colab notebook of ``source`` lives: ``book/notebooks/<stem>.ipynb``."""
    return NOTEBOOK_DIR / f"{source.stem}.ipynb"


def render(source: Path) -> str:
    """The ``.ipynb`` text for a MyST notebook source (deterministic, no outputs)."""
    import jupytext
    import nbformat

    nb = jupytext.read(source, fmt="md:myst")
    nb.metadata.pop("jupytext", None)
    nb.metadata.setdefault(
        "kernelspec", {"display_name": "Python 3", "language": "python", "name": "python3"}
    )
    nb.metadata["language_info"] = {"name": "python"}
    nb.nbformat, nb.nbformat_minor = 4, 5
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i}"
        if cell.cell_type == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
        elif cell.cell_type == "markdown":
            cell["source"] = cell["source"].replace("](_static/", "](../_static/")
    nbformat.validate(nb)
    return json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def sync(sources: list[Path], check: bool = False) -> int:
    """Write (or with ``check`` only compare) the notebooks; returns the number out of date."""
    stale = 0
    for source in sources:
        if not is_notebook_source(source):
            print(f"skip  {source.relative_to(ROOT)} (not a MyST notebook)")
            continue
        dest = notebook_path(source)
        text = render(source)
        current = dest.read_text(encoding="utf-8") if dest.is_file() else None
        if current == text:
            print(f"ok    {dest.relative_to(ROOT)}")
            continue
        stale += 1
        if check:
            print(f"STALE {dest.relative_to(ROOT)} (run: python tools/sync_notebooks.py)")
        else:
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_suffix(".ipynb.tmp")
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(dest)
            print(f"wrote {dest.relative_to(ROOT)}")
    return stale


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="*", type=Path, help="MyST sources (default: every page of _toc.yml)")
    p.add_argument("--check", action="store_true", help="only compare; exit 1 if any is out of date")
    args = p.parse_args(argv)
    sources = [f.resolve() for f in args.files] or toc_files()
    stale = sync(sources, check=args.check)
    return 1 if (args.check and stale) else 0


if __name__ == "__main__":
    sys.exit(main())
