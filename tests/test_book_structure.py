"""The book's structure: every page of ``_toc.yml`` exists and each chapter has the agreed shape.

A chapter (``book/NN_*.md``) must: parse with jupytext as a MyST notebook; start with the Colab
install cell; have a cell tagged ``parameters`` that defines ``preset = "cpu"`` and documents the
``"paper"`` switch; carry an "Open in Colab" badge pointing to ``book/notebooks/<name>.ipynb`` of this
repository; have the headings "Learning goals", "Summary", "Exercises" and "References" (with the
paper's sections, ``§``); and its Colab notebook must be in sync with the source
(``python tools/sync_notebooks.py``).  A placeholder chapter fails these tests on purpose.

The introduction and the appendices are checked by the rules that apply to them.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_sync_tool():
    spec = importlib.util.spec_from_file_location("sync_notebooks", ROOT / "tools" / "sync_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SYNC = _load_sync_tool()
PAGES = SYNC.toc_files(ROOT)
CHAPTERS = [p for p in PAGES if re.match(r"\d\d_", p.name)]
# my own notebook pages: executed in the build, with parameters and a Colab badge
CODE_APPENDICES = [ROOT / "book" / "appendix_reproducing.md", ROOT / "book" / "appendix_performance.md",
                   ROOT / "book" / "appendix_phantom_design.md"]
NOTEBOOK_PAGES = CHAPTERS + CODE_APPENDICES + [ROOT / "book" / "intro.md"]


def _repo_slug() -> str:
    import yaml

    url = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]
    return url.rstrip("/").removeprefix("https://github.com/")


def _ids(paths):
    return [p.stem for p in paths]


def _read_notebook(path: Path):
    import jupytext

    assert SYNC.is_notebook_source(path), f"{path.name}: no jupytext/kernelspec header: not a MyST notebook yet"
    return jupytext.read(path, fmt="md:myst")


def test_toc_pages_exist():
    missing = [str(p.relative_to(ROOT)) for p in PAGES if not p.is_file()]
    assert not missing, f"pages named in _toc.yml but absent: {missing}"
    assert len(CHAPTERS) == 9, [p.name for p in CHAPTERS]


@pytest.mark.parametrize("page", CHAPTERS + CODE_APPENDICES, ids=_ids(CHAPTERS + CODE_APPENDICES))
def test_parameters_cell(page):
    nb = _read_notebook(page)
    tagged = [c for c in nb.cells if c.cell_type == "code" and "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{page.name}: expected exactly one code cell tagged 'parameters', found {len(tagged)}"
    source = tagged[0].source
    tree = ast.parse(source)  # the parameters cell is plain Python (papermill injects after it)
    values = {
        t.id: node.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        for t in node.targets
        if isinstance(t, ast.Name)
    }
    assert "preset" in values, f"{page.name}: the parameters cell does not define `preset`"
    assert isinstance(values["preset"], ast.Constant) and values["preset"].value == "cpu", (
        f"{page.name}: `preset` must default to \"cpu\" (the CPU defaults are what the book executes)"
    )
    assert "paper" in source, f"{page.name}: the parameters cell must document the \"paper\" preset"
    # the parameters cell comes before any other code that does work (setup cell excepted)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code.index(tagged[0]) <= 1, f"{page.name}: the parameters cell must be the first cell after setup"


@pytest.mark.parametrize("page", CHAPTERS + CODE_APPENDICES, ids=_ids(CHAPTERS + CODE_APPENDICES))
def test_papermill_reads_every_parameter(page):
    """papermill's own parser (what ``-p name value`` and its parameter listing use) must read every
    assignment of the parameters cell: it skips a line it cannot parse (e.g. a comment holding ``=``),
    and that parameter then silently disappears from ``papermill --help-notebook``."""
    from papermill.translators import PythonTranslator

    nb = _read_notebook(page)
    cell = next(c for c in nb.cells if c.cell_type == "code" and "parameters" in c.metadata.get("tags", []))
    read = {p.name for p in PythonTranslator.inspect(cell)}
    missing = _parameter_names(page) - read
    assert not missing, f"{page.name}: papermill cannot parse the lines of {sorted(missing)} (rephrase their comments)"


def _parameter_names(page: Path) -> set[str]:
    nb = _read_notebook(page)
    cell = next(c for c in nb.cells if c.cell_type == "code" and "parameters" in c.metadata.get("tags", []))
    return {t.id for node in ast.parse(cell.source).body if isinstance(node, ast.Assign)
            for t in node.targets if isinstance(t, ast.Name)}


RESULTS_CHAPTERS = [ROOT / "book" / f"{name}.md" for name in ("06_finetuning", "07_survival", "08_knn")]


@pytest.mark.parametrize("page", RESULTS_CHAPTERS, ids=_ids(RESULTS_CHAPTERS))
def test_results_chapters_take_the_reproduce_parameters(page):
    """The chapters ``hipt reproduce`` runs declare the parameters it injects (see hipt.book.reproduce)."""
    from hipt.book.reproduce import GRID_AXES, QUICK_CHAPTERS, TARGETS

    assert {p.stem for p in RESULTS_CHAPTERS} == set(QUICK_CHAPTERS) == {t.chapter for t in TARGETS.values()}
    missing = {"preset", "results_dir", *GRID_AXES} - _parameter_names(page)
    assert not missing, f"{page.name}: the parameters cell does not define {sorted(missing)}"


@pytest.mark.parametrize("page", CHAPTERS + CODE_APPENDICES, ids=_ids(CHAPTERS + CODE_APPENDICES))
def test_colab_badge_and_setup_cell(page):
    nb = _read_notebook(page)
    text = page.read_text(encoding="utf-8")
    url = f"https://colab.research.google.com/github/{_repo_slug()}/blob/main/book/notebooks/{page.stem}.ipynb"
    badge = re.search(r"\[!\[Open in Colab\]\(_static/colab-badge\.svg\)\]\((?P<url>[^)]+)\)", text)
    assert badge, f"{page.name}: no 'Open in Colab' badge ([![Open in Colab](_static/colab-badge.svg)](...))"
    assert badge["url"] == url, f"{page.name}: the badge points to {badge['url']}, expected {url}"
    first = next(c for c in nb.cells if c.cell_type == "code")
    assert "google.colab" in first.source and "pip" in first.source and "hipt" in first.source, (
        f"{page.name}: the first code cell must install the package when running in Colab"
    )
    code = "\n".join(line for line in first.source.splitlines() if not line.lstrip().startswith("#"))
    assert "requirements-cpu" not in code and not re.search(r"install[^\n]*\btorch\b", code), (
        f"{page.name}: the Colab cell must keep Colab's torch"
    )


SETUP_PAGES = CHAPTERS + [ROOT / "book" / "_chapter_template.md"]


@pytest.mark.parametrize("page", SETUP_PAGES, ids=_ids(SETUP_PAGES))
def test_setup_cell_explains_drive_and_installs_papermill(page, capsys):
    """Colab: the setup cell says how to keep the cache on Google Drive (HIPT_CACHE, set before hipt is
    imported) and that ``hipt reproduce --out`` belongs there too, installs papermill for batch runs, and
    mounts nothing by itself; outside Colab it does nothing at all."""
    nb = _read_notebook(page)
    first = next(c for c in nb.cells if c.cell_type == "code")
    assert "remove-cell" in first.metadata.get("tags", [])
    src = first.source
    for needed in ('drive.mount("/content/drive")', 'os.environ["HIPT_CACHE"] = "/content/drive/MyDrive/hipt-cache"',
                   "hipt reproduce --out"):
        assert needed in src, f"{page.name}: the setup cell does not mention {needed}"
    code = [line for line in src.splitlines() if not line.lstrip().startswith("#")]
    assert not any("drive.mount" in line for line in code), f"{page.name}: the setup cell must not mount Drive itself"
    assert any("pip" in line and "papermill" in line for line in code), f"{page.name}: papermill is not installed"
    exec(compile(src, page.name, "exec"), {})  # outside Colab: no install, no output, no get_ipython needed
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("page", CHAPTERS, ids=_ids(CHAPTERS))
def test_chapter_sections(page):
    text = page.read_text(encoding="utf-8")
    headings = [m.group(1).strip() for m in re.finditer(r"^#{1,3}\s+(.+)$", text, flags=re.M)]
    for needed in ("Learning goals", "Summary", "Exercises", "References"):
        assert any(h.lower().startswith(needed.lower()) for h in headings), f"{page.name}: no '{needed}' heading"
    refs = text[re.search(r"^#{1,3}\s+References", text, flags=re.M).start():]
    assert "§" in refs, f"{page.name}: the references must name the paper's sections (§…)"


@pytest.mark.parametrize("page", CHAPTERS, ids=_ids(CHAPTERS))
def test_cli_calls_in_chapters_have_no_widget_progress_bars(page):
    """A tqdm bar in a notebook is an ipywidget: the rendered page then fetches require.js and the widget
    manager from a CDN, which fails offline (the browser check). CLI calls in chapters pass --no-progress."""
    text = page.read_text(encoding="utf-8")
    for m in re.finditer(r"hipt_cli\(\[(.*?)\]\)\s*$", text, flags=re.S | re.M):
        call = m.group(1)
        if call.lstrip().startswith(('"patch"', '"extract"', '"pretrain"', '"heatmap"')):
            assert "--no-progress" in call, f"{page.name}: hipt_cli([{call[:60]}...]) without --no-progress"


@pytest.mark.parametrize("page", NOTEBOOK_PAGES, ids=_ids(NOTEBOOK_PAGES))
def test_colab_notebook_in_sync(page):
    _read_notebook(page)
    dest = SYNC.notebook_path(page)
    assert dest.is_file(), f"{dest.relative_to(ROOT)} missing: run python tools/sync_notebooks.py"
    assert dest.read_text(encoding="utf-8") == SYNC.render(page), (
        f"{dest.relative_to(ROOT)} is out of date with {page.name}: run python tools/sync_notebooks.py"
    )


def test_sync_is_deterministic_and_strips_outputs(tmp_path):
    page = ROOT / "book" / "appendix_reproducing.md"
    a, b = SYNC.render(page), SYNC.render(page)
    assert a == b
    nb = json.loads(a)
    assert "jupytext" not in nb["metadata"]
    assert [c["id"] for c in nb["cells"]] == [f"cell-{i}" for i in range(len(nb["cells"]))]
    assert all(c.get("outputs", []) == [] for c in nb["cells"])
    # the badge image resolves from book/notebooks/
    assert "](../_static/colab-badge.svg)" in a


def test_template_is_a_valid_chapter():
    """The chapter template passes the chapter checks (so copying it is a correct start)."""
    template = ROOT / "book" / "_chapter_template.md"
    nb = _read_notebook(template)
    assert any("parameters" in c.metadata.get("tags", []) for c in nb.cells)
    assert "## Learning goals" in template.read_text() and "## Exercises" in template.read_text()


def test_api_appendix_documents_every_module():
    """``book/appendix_api.md`` has one ``automodule`` per module of the package, and no stale one."""
    spec = importlib.util.spec_from_file_location("api_appendix", ROOT / "tools" / "api_appendix.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    text = (ROOT / "book" / "appendix_api.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^\.\. automodule:: ([\w.]+)", text, flags=re.M))
    modules = {"hipt", *tool.package_modules()}
    assert documented - modules == set(), f"documented but absent: {sorted(documented - modules)}"
    assert modules - documented == set(), f"not in the API appendix: {sorted(modules - documented)}"
    assert text == tool.render(), "book/appendix_api.md is out of date: run python tools/api_appendix.py"


def test_intro_lists_every_chapter():
    text = (ROOT / "book" / "intro.md").read_text(encoding="utf-8")
    for page in CHAPTERS:
        assert f"{page.stem}" in text, f"intro.md does not link {page.stem}"


def test_environment_yml_matches_pyproject():
    """environment.yml names pyproject's dependencies (core, book, dev) with requirements-cpu's torch pins."""
    import tomllib

    import yaml

    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert "python=3.11" in env["dependencies"]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"]]
    for extra in ("book", "dev"):
        wanted += [d for d in project["optional-dependencies"][extra] if not d.startswith("hipt[")]
    pins = [line.strip() for line in (ROOT / "requirements-cpu.txt").read_text().splitlines()
            if line.strip() and not line.lstrip().startswith("#")]
    pinned = {p.split("==")[0] for p in pins}
    expected = pins + [d for d in wanted if re.split(r"[<>=!~ \[]", d, maxsplit=1)[0] not in pinned]
    assert sorted(p for p in pip if p != "-e .") == sorted(expected)
    assert "-e ." in pip


def test_mathjax_is_served_from_the_site():
    """No CDN: MathJax 3 (tex-chtml + its fonts) comes from an installed package into _static/mathjax."""
    import yaml

    config = yaml.safe_load((ROOT / "_config.yml").read_text())["sphinx"]
    path = config["config"]["mathjax_path"]
    assert "://" not in path and path == "mathjax/tex-chtml.js"
    assert "sphinx-mathjax-offline" in config["extra_extensions"]
    ext = importlib.import_module("sphinx-mathjax-offline")
    static = Path(ext.__file__).parent / "static" / "mathjax"
    assert (static / "tex-chtml.js").is_file()
    assert list((static / "output" / "chtml" / "fonts" / "woff-v2").glob("*.woff"))


def test_each_script_once_per_page():
    """tools/sphinx_hipt.py drops the second copy of a script (sphinx-thebe's would be a SyntaxError)."""
    spec = importlib.util.spec_from_file_location("sphinx_hipt", ROOT / "tools" / "sphinx_hipt.py")
    ext = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ext)

    class JS:
        def __init__(self, filename, **attributes):
            self.filename, self.attributes = filename, attributes

    thebe = dict(body='const THEBE_JS_URL = "x"')
    scripts = [JS("_static/a.js"), JS(None, **thebe), JS("", **thebe), JS("_static/a.js", defer="defer"),
               JS("_static/a.js")]
    context = {"script_files": scripts}
    ext._dedupe_scripts(None, "page", "page.html", context, None)
    assert [(s.filename, s.attributes) for s in context["script_files"]] == [
        ("_static/a.js", {}), (None, thebe), ("_static/a.js", {"defer": "defer"})]


@pytest.mark.slow
def test_api_reference_builds_clean(tmp_path):
    """The API appendix alone, with the book's autodoc settings, nitpicky: no warning at all.

    Catches docstrings that are not valid reStructuredText and broken ``hipt.*`` references without
    executing the book (``make book`` checks the same, and more, in minutes).
    """
    import io

    import yaml
    from sphinx.application import Sphinx
    from sphinx.util.console import nocolor

    nocolor()
    config = yaml.safe_load((ROOT / "_config.yml").read_text())["sphinx"]
    src = tmp_path / "src"
    src.mkdir()
    (src / "index.md").write_text((ROOT / "book" / "appendix_api.md").read_text(encoding="utf-8"), encoding="utf-8")
    (src / "conf.py").write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(ROOT / 'tools')!r})\n"
        "extensions = ['myst_parser', 'sphinx.ext.autodoc', 'sphinx.ext.napoleon', 'sphinx_hipt']\n"
        "myst_enable_extensions = ['dollarmath']\n"
        "suppress_warnings = ['myst.header']\n"
        + "".join(f"{k} = {v!r}\n" for k, v in config["config"].items()
                  if k.startswith(("autodoc_", "napoleon_", "nitpick_")))
    )
    warnings = io.StringIO()
    app = Sphinx(str(src), str(src), str(tmp_path / "out"), str(tmp_path / "doctrees"), "dummy",
                 status=None, warning=warnings, freshenv=True, confoverrides={"nitpicky": True})
    app.build(force_all=True)
    assert warnings.getvalue() == "", "the API reference has warnings:\n" + warnings.getvalue()
