"""Every name a hipt module exports in ``__all__`` exists (``from hipt.x import *`` must not fail)."""

import importlib
import pkgutil

import pytest

import hipt

MODULES = sorted(m.name for m in pkgutil.walk_packages(hipt.__path__, "hipt."))


@pytest.mark.parametrize("name", MODULES)
def test_all_names_exist(name):
    module = importlib.import_module(name)
    missing = [n for n in getattr(module, "__all__", []) if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ lists names it does not define: {missing}"
