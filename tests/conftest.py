"""Shared fixtures: where the real sample data live, and skips with a stated reason when absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")

from hipt.paths import _no_shared, shared_data_dir, shared_reference_dir  # noqa: E402

SHARED_DATA = shared_data_dir()
SHARED_REFERENCE = shared_reference_dir()


def _absent(what: str, variable: str) -> str:
    """The skip reason for missing shared data: HIPT_NO_SHARED if that hid it, else how to provide it."""
    if _no_shared():
        return f"{what} not used: HIPT_NO_SHARED is set (unset it to run this test on the shared data)"
    return f"{what} not found: set {variable} or place shared/ beside the checkout"


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread for a module of tests on tiny models: faster, and much faster on a busy
    machine (use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``); restored afterwards."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (or ``$HIPT_SHARED_DATA``); skips the test where it is absent."""
    if SHARED_DATA is None:
        pytest.skip(_absent("real sample data", "HIPT_SHARED_DATA"))
    return SHARED_DATA


@pytest.fixture(scope="session")
def shared_slides(shared_data: Path) -> Path:
    d = shared_data / "slides"
    if not d.is_dir():
        pytest.skip(f"{d} not found: the real sample slides are absent")
    return d


@pytest.fixture(scope="session")
def tcga_reference() -> Path:
    """``../shared/reference/tcga``: the real TCGA task tables and split files."""
    if SHARED_REFERENCE is None or not (SHARED_REFERENCE / "tcga").is_dir():
        pytest.skip(_absent("reference TCGA tables", "HIPT_SHARED_REFERENCE"))
    return SHARED_REFERENCE / "tcga"


@pytest.fixture()
def http_server(tmp_path_factory):
    """Serve a folder over HTTP on 127.0.0.1; yields ``serve(folder) -> base_url``."""
    import functools
    import http.server
    import threading

    servers = []

    def serve(folder: Path) -> str:
        handler = functools.partial(_QuietHandler, directory=str(folder))
        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        t = threading.Thread(target=httpd.serve_forever, daemon=True)
        t.start()
        servers.append(httpd)
        return f"http://127.0.0.1:{httpd.server_address[1]}"

    yield serve
    for s in servers:
        s.shutdown()
        s.server_close()


import http.server as _hs  # noqa: E402


class _QuietHandler(_hs.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass
