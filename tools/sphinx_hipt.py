"""A small Sphinx extension for the book (loaded from ``_config.yml``: ``local_extensions``).

1. Re-exported names resolve to where they are documented. ``hipt.models.ViT256`` is defined (and so
documented by autodoc) as ``hipt.models.vit.ViT256``; a docstring that refers to the short public
path would otherwise be a broken reference under nitpicky mode (``-n``). On a ``missing-reference``
for a ``hipt.*`` Python target, this imports the target, finds the documented object that *is* it
(same object, same last name component) and resolves the reference there. A target that does not
import, or whose object is documented nowhere, stays a warning: that is a real documentation bug.

2. Each script is included once per page. With Jupyter Book 1.0 on Sphinx 7.4, scripts that
extensions add from an ``env-before-read-docs`` handler reach the page twice (once through the
builder, once through the registry, as ``_JavaScript(None)`` and ``_JavaScript('')``, which Sphinx
does not see as equal): sphinx-thebe's ``const THEBE_JS_URL = …`` declared twice is a JavaScript
``SyntaxError`` in every page (``tools/browser_check.py`` reports it). Duplicates are dropped when the
page is rendered.
"""

from __future__ import annotations

import importlib
from typing import Any

from sphinx.application import Sphinx


def _import(target: str) -> tuple[bool, Any]:
    """Import ``a.b.c.Name.attr`` by its longest importable module prefix; (found, object)."""
    parts = target.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except Exception:  # noqa: BLE001 (any import failure: not resolvable here)
            continue
        try:
            for name in parts[i:]:
                obj = getattr(obj, name)
        except AttributeError:
            return False, None
        return True, obj
    return False, None


def _canonical(env, target: str) -> str | None:
    found, obj = _import(target)
    if not found:
        return None
    domain = env.get_domain("py")
    last = target.rsplit(".", 1)[-1]
    for name in domain.objects:
        if name != target and name.startswith("hipt.") and name.rsplit(".", 1)[-1] == last:
            ok, other = _import(name)
            if ok and other is obj:
                return name
    return None


def _resolve_alias(app: Sphinx, env, node, contnode):
    if node.get("refdomain") != "py":
        return None
    target = node.get("reftarget", "")
    if not target.startswith("hipt."):
        return None
    canonical = _canonical(env, target)
    if canonical is None:
        return None
    domain = env.get_domain("py")
    return domain.resolve_xref(env, node["refdoc"], app.builder, node["reftype"], canonical, node, contnode)


def _script_key(js) -> tuple:
    filename = getattr(js, "filename", js) or ""
    attributes = getattr(js, "attributes", {}) or {}
    return (str(filename), tuple(sorted((k, str(v)) for k, v in attributes.items())))


def _dedupe_scripts(app: Sphinx, pagename, templatename, context, doctree) -> None:
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, unique = set(), []
    for js in scripts:
        key = _script_key(js)
        if key not in seen:
            seen.add(key)
            unique.append(js)
    scripts[:] = unique


def setup(app: Sphinx) -> dict:
    app.connect("missing-reference", _resolve_alias)
    app.connect("html-page-context", _dedupe_scripts)
    return {"parallel_read_safe": True, "parallel_write_safe": True, "version": "1"}
