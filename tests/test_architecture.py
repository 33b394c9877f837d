"""The rules of ARCHITECTURE.md, checked on the source: the library never imports the book's pipeline,
imports sit at the top of modules, and the modules of ``hipt`` import each other without a circle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "hipt"

#: function-level imports of hipt modules that stay, each with its reason (also written beside it)
LAZY_ALLOWED = {
    # `hipt knn --released-folds` delegates to hipt.released.slide, which builds on hipt.knn
    ("hipt.knn", "hipt.released.slide"),
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _targets(node: ast.AST, module: str, is_package: bool) -> list[str]:
    """The hipt modules an import statement loads (``from a import b`` counts ``a.b`` when it is a module)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:
            parts = module.split(".") if is_package else module.split(".")[:-1]
            parts = parts[: len(parts) - (node.level - 1)]
            base = ".".join(parts + ([base] if base else []))
        names = [base] + [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES]
    return [n for n in names if n == "hipt" or n.startswith("hipt.")]


def _imports(module: str) -> tuple[set[str], list[tuple[str, int]]]:
    """(modules imported at module level, [(module, line)] imported inside functions or classes)."""
    path = MODULES[module]
    tree = ast.parse(path.read_text())
    top_level = set()
    for stmt in tree.body:
        block = [stmt] + [s for s in ast.walk(stmt) if isinstance(stmt, (ast.If, ast.Try))]
        top_level |= {id(s) for s in block if isinstance(s, (ast.Import, ast.ImportFrom))}
    top, inner = set(), []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            targets = _targets(node, module, path.name == "__init__.py")
            if id(node) in top_level:
                top |= {t for t in targets if t in MODULES and t != module}
            else:
                inner += [(t, node.lineno) for t in targets]
    return top, inner


IMPORTS = {m: _imports(m) for m in MODULES}


def test_the_library_never_imports_the_book_pipeline():
    leaks = sorted((m, t) for m, (top, inner) in IMPORTS.items() if not m.startswith("hipt.book")
                   for t in top | {t for t, _ in inner} if t == "hipt.book" or t.startswith("hipt.book."))
    assert leaks == [], f"library modules importing hipt.book: {leaks}"


def test_imports_of_hipt_modules_are_at_the_top():
    lazy = sorted({(m, t, line) for m, (_, inner) in IMPORTS.items() for t, line in inner
                   if (m, t) not in LAZY_ALLOWED})
    assert lazy == [], f"function-level imports of hipt modules (move them to the top): {lazy}"


def test_no_import_circle_between_modules():
    graph = {m: {t for t in top if t in MODULES} for m, (top, _) in IMPORTS.items()}
    # a package's __init__ importing its own submodules is how re-exports work, not a circle
    def edges(m):
        return {t for t in graph[m] if not (t.startswith(m + ".") and MODULES[m].name == "__init__.py")}

    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        stack.append(m)
        for t in edges(m):
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t, stack)
        stack.pop()
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [])
    assert cycles == [], "import circles: " + "; ".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("package", ["hipt.phantom", "hipt.attention", "hipt.book", "hipt.pretrain"])
def test_packages_hold_one_concept_per_module(package):
    """The split packages exist as folders of modules (ARCHITECTURE.md's map), not single files."""
    assert (ROOT / package.replace(".", "/") / "__init__.py").is_file()
    assert not (ROOT / (package.replace(".", "/") + ".py")).exists()


def test_architecture_map_names_every_package():
    text = (ROOT / "ARCHITECTURE.md").read_text()
    packages = sorted({p.parent.relative_to(ROOT).as_posix() for p in PACKAGE.rglob("__init__.py")})
    missing = [p for p in packages if p != "hipt" and p.split("/")[-1] + "/" not in text]
    assert missing == [], f"ARCHITECTURE.md does not place {missing}"
