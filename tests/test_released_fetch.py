"""Fetching the reference's released embeddings: parallel, resumable, verified downloads against a local
HTTP server that can misbehave per path, and the package registry against the reference's LFS manifest."""

from __future__ import annotations

import hashlib
import http.server
import io
import pickle
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from hipt.errors import ChecksumError, HIPTError
from hipt.io import DownloadError, download
from hipt.paths import shared_reference_dir
from hipt.released import fetch as fetch_mod
from hipt.released.fetch import fetch_files, file_url, format_bytes, require_files, total_bytes
from hipt.released.registry import PATCH_DIR, SLIDE_DIR, ReleasedFile, local_path

LFS_POINTER = (
    b"version https://git-lfs.github.com/spec/v1\n"
    b"oid sha256:8f7aeeca3410aa4d331bd225c3feae8d1ddabc9fdb90dfc40eaa3577334db3c0\n"
    b"size 51291261\n"
)
HTML_PAGE = b"<!DOCTYPE html>\n<html><head><title>Repository quota exceeded</title></head><body></body></html>\n"


# ------------------------------------------------------------------------------------ the server
class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.files`` (repository path → bytes) with ``Range`` support; ``server.modes`` makes
    a path misbehave: ``lfs`` / ``html`` / ``html_type`` (an error page), ``truncate`` (half the body,
    then close), ``truncate_once`` (that, on the first request only), ``norange`` (ignore ``Range``)."""

    server: _Server

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        path = self.path.lstrip("/")
        srv = self.server
        with srv.lock:
            srv.requests.append((path, self.headers.get("Range")))
            mode = srv.modes.get(path, "ok")
            if mode == "truncate_once":
                srv.modes[path] = "ok"
                mode = "truncate"
        data = srv.files.get(path)
        if mode == "lfs":
            return self._send(200, LFS_POINTER, "text/plain")
        if mode == "html":  # an error page with a data file's type: caught by its first bytes
            return self._send(200, HTML_PAGE, "application/octet-stream")
        if mode == "html_type":  # caught by its Content-Type
            return self._send(200, b"quota exceeded\n", "text/html; charset=utf-8")
        if data is None:
            return self._send(404, b"not found\n", "text/plain")
        start = 0
        rng = self.headers.get("Range")
        if rng and mode != "norange":
            start = int(rng.removeprefix("bytes=").split("-")[0])
        body = data[start:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if mode == "truncate":  # promise the whole body, send half of it, hang up
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return None
        self.wfile.write(body)
        return None

    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, files: dict[str, bytes]):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files = files
        self.modes: dict[str, str] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def ranges(self, path: str) -> list[str | None]:
        """The ``Range`` header of every request of ``path`` (None: a whole-file request)."""
        return [r for p, r in self.requests if p == path]


# ------------------------------------------------------------------------- files in the released formats
def _slide_pt(m: int, seed: int) -> bytes:
    """A ``vit256mean_tcga_slide_embeddings/<slide_id>.pt``: one float32 ``[M, 192]`` tensor."""
    buf = io.BytesIO()
    torch.save(torch.randn(m, 192, generator=torch.Generator().manual_seed(seed)), buf)
    return buf.getvalue()


def _fold_pkl(n: int, d: int, seed: int) -> bytes:
    """A knn-subtyping / patch pickle: ``{'embeddings': [N, D], 'labels': [N]}``."""
    rng = np.random.default_rng(seed)
    return pickle.dumps({"embeddings": rng.standard_normal((n, d)).astype(np.float32),
                         "labels": rng.integers(0, 2, n)})


def _entry(path: str, data: bytes) -> ReleasedFile:
    return ReleasedFile(path, hashlib.sha256(data).hexdigest(), len(data))


_SLIDES = f"{SLIDE_DIR}/vit256mean_tcga_slide_embeddings"
_KNN = f"{SLIDE_DIR}/knn-subtyping/vit256mean"


@pytest.fixture()
def released() -> dict[str, bytes]:
    """Repository path → bytes of six files shaped like the real ones (the last one ~460 kB)."""
    return {
        f"{_SLIDES}/TCGA-3C-AALI-01Z-00-DX1.F6E9A5DF-D8FB-45CF-B4BD-C6B76294C291.pt": _slide_pt(40, 0),
        f"{_SLIDES}/TCGA-05-4250-01Z-00-DX1.90f67fdf-dff9-46ca-af71-0978d7c221ba.pt": _slide_pt(3, 1),
        f"{_SLIDES}/TCGA-4A-A93X-01Z-00-DX2.45011BF1-FED8-4D22-B5E1-C63DC384FD2A.pt": _slide_pt(120, 2),
        f"{_KNN}/tcga_brca_vit256mean_class_split_train_0.pkl": _fold_pkl(60, 192, 3),
        f"{_KNN}/tcga_brca_vit256mean_class_split_test_0.pkl": _fold_pkl(15, 192, 4),
        f"{PATCH_DIR}/bcss_val_vits_tcga_brca_dino.pkl": _fold_pkl(300, 384, 5),
    }


@pytest.fixture()
def server(released) -> Iterator[_Server]:
    srv = _Server(dict(released))
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=5)


@pytest.fixture()
def entries(released) -> list[ReleasedFile]:
    return [_entry(p, d) for p, d in released.items()]


def _fetch(entries, root, server, **kw):
    kw.setdefault("progress", False)
    kw.setdefault("retries", 0)
    return fetch_files(entries, root=root, base_url=server.url, workers=4, timeout=10, **kw)


def _leftovers(root: Path) -> list[str]:
    """Every file under ``root`` (partial files included), relative."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


# ------------------------------------------------------------------------------------------- tests
def test_parallel_fetch_then_nothing_to_do(tmp_path, server, entries, released):
    root = tmp_path / "released"
    report = _fetch(entries, root, server, progress=True)
    assert report.ok and report.fetched == entries and not report.present
    assert report.bytes_fetched == total_bytes(entries) == sum(map(len, released.values()))
    for f in entries:
        assert local_path(f, root).read_bytes() == released[f.path]
    assert _leftovers(root) == sorted(f.path for f in entries)  # no partial or temporary file left
    # the fetched files are the released formats, intact
    slide = torch.load(local_path(entries[0], root), weights_only=True)
    assert slide.dtype == torch.float32 and slide.shape == (40, 192)
    with open(local_path(entries[-1], root), "rb") as fh:
        fold = pickle.load(fh)  # noqa: S301 (written by this test)
    assert fold["embeddings"].shape == (300, 384) and fold["labels"].shape == (300,)
    assert "fetched 6 files" in report.summary() and "0 failed" in report.summary()

    n_requests = len(server.requests)
    again = _fetch(entries, root, server, verify_present="sha256")
    assert again.ok and again.present == entries and not again.fetched and again.bytes_fetched == 0
    assert len(server.requests) == n_requests  # nothing downloaded the second time


def test_wrong_size_on_disk_is_fetched_again(tmp_path, server, entries, released):
    root = tmp_path / "released"
    dest = local_path(entries[1], root)
    dest.parent.mkdir(parents=True)
    dest.write_bytes(b"stale")
    report = _fetch(entries[:2], root, server)
    assert report.fetched == entries[:2] and dest.read_bytes() == released[entries[1].path]


def test_base_url_from_environment(tmp_path, server, entries, monkeypatch):
    monkeypatch.setenv("HIPT_RELEASED_URL", server.url + "/")
    assert file_url(entries[0]) == f"{server.url}/{entries[0].path}"
    monkeypatch.delenv("HIPT_RELEASED_URL")
    assert file_url(entries[0]).startswith("https://media.githubusercontent.com/media/mahmoodlab/HIPT/")
    monkeypatch.setenv("HIPT_RELEASED_URL", server.url)
    report = fetch_files(entries[:1], root=tmp_path, progress=False, retries=0, timeout=10)
    assert report.fetched == entries[:1]


def test_wrong_sha256_fails_and_leaves_no_file(tmp_path, server, entries):
    root = tmp_path / "released"
    bad = ReleasedFile(entries[0].path, "0" * 64, entries[0].size)
    report = _fetch([bad], root, server)
    assert report.failed and report.failed[0][0] == bad and "expected " + "0" * 64 in report.failed[0][1]
    assert _leftovers(root) == []
    with pytest.raises(ChecksumError, match="sha256 is"):
        download(file_url(bad, server.url), bad.sha256, dest_dir=tmp_path / "d", size=bad.size, progress=False)
    assert _leftovers(tmp_path / "d") == []
    # a body longer than the registered size is not the file either
    short = ReleasedFile(entries[0].path, entries[0].sha256, entries[0].size - 100)
    report = _fetch([short], root, server)
    assert f"{entries[0].size:,} bytes, expected {short.size:,}" in report.failed[0][1]
    assert _leftovers(root) == []


@pytest.mark.parametrize(("mode", "message"), [
    ("lfs", "is a Git LFS pointer, not the data: the LFS bandwidth quota"),
    ("html", "is an HTML page, not the data"),
    ("html_type", "is an HTML page, not the data"),
])
def test_pointer_or_error_page_is_refused(tmp_path, server, entries, mode, message):
    root = tmp_path / "released"
    server.modes[entries[0].path] = mode
    report = _fetch(entries[:1], root, server, retries=2)
    (file, reason), = report.failed
    assert message in reason and "retry later, or put the file there by hand" in reason
    assert reason.startswith(file_url(entries[0], server.url)) and "\n" not in reason
    assert len(server.ranges(entries[0].path)) == 1  # not retried: a pointer now is a pointer in a second
    assert _leftovers(root) == []


def test_truncated_download_resumes_with_range(tmp_path, server, entries, released):
    root = tmp_path / "released"
    f = entries[-1]
    server.modes[f.path] = "truncate"
    report = _fetch([f], root, server)
    (_, reason), = report.failed
    half = f.size // 2
    assert f"truncated at {half:,} of {f.size:,} bytes; run the same command again to resume" in reason
    dest = local_path(f, root)
    assert not dest.exists()  # the destination never holds a partial file
    part = dest.with_name(f".{dest.name}.part")
    assert part.read_bytes() == released[f.path][:half]

    server.modes[f.path] = "ok"
    report = _fetch([f], root, server)
    assert report.fetched == [f]
    assert server.ranges(f.path) == [None, f"bytes={half}-"]
    assert dest.read_bytes() == released[f.path] and not part.exists()


def test_transient_failure_is_retried_within_one_call(tmp_path, server, entries, released, monkeypatch):
    monkeypatch.setattr(fetch_mod, "RETRY_DELAY_S", 0.0)
    root = tmp_path / "released"
    f = entries[-1]
    server.modes[f.path] = "truncate_once"
    report = _fetch([f], root, server, retries=1)
    assert report.fetched == [f] and server.ranges(f.path) == [None, f"bytes={f.size // 2}-"]
    assert local_path(f, root).read_bytes() == released[f.path]


def test_server_ignoring_range_restarts_from_zero(tmp_path, server, entries, released):
    root = tmp_path / "released"
    f = entries[2]
    dest = local_path(f, root)
    dest.parent.mkdir(parents=True)
    part = dest.with_name(f".{dest.name}.part")
    part.write_bytes(b"\xff" * 1000)  # a partial file that is not even a prefix of the data
    server.modes[f.path] = "norange"
    report = _fetch([f], root, server)
    assert report.fetched == [f] and server.ranges(f.path) == ["bytes=1000-"]
    assert dest.read_bytes() == released[f.path] and not part.exists()


def test_one_failure_does_not_stop_the_others(tmp_path, server, entries, released):
    root = tmp_path / "released"
    server.modes[entries[1].path] = "lfs"
    absent = _entry(f"{_SLIDES}/TCGA-XX-0000-01Z-00-DX1.00000000-0000-0000-0000-000000000000.pt", b"never served")
    report = _fetch([entries[1], absent, *entries[2:], entries[0]], root, server)
    assert [f for f, _ in report.failed] == [entries[1], absent]
    assert "HTTP 404" in report.failed[1][1]
    assert report.fetched == [*entries[2:], entries[0]]
    assert "2 failed" in report.summary() and "Git LFS pointer" in report.summary()
    for f in report.fetched:
        assert local_path(f, root).read_bytes() == released[f.path]
    for f, _ in report.failed:
        assert not local_path(f, root).exists()


def test_download_size_cache_needs_no_network(tmp_path, server, entries, released):
    f = entries[0]
    url = file_url(f, server.url)
    path = download(url, f.sha256, dest_dir=tmp_path, size=f.size, progress=False)
    seen = []
    server.shutdown()  # cached: a second call must not need the server (it would be refused now)
    server.server_close()
    assert download(url, f.sha256, dest_dir=tmp_path, size=f.size, progress=False, on_bytes=seen.append) == path
    assert path.read_bytes() == released[f.path] and seen == []


def test_download_failure_reasons_are_typed(tmp_path, server, entries):
    f = entries[-1]
    server.modes[f.path] = "truncate"
    with pytest.raises(DownloadError, match="truncated at") as info:
        download(file_url(f, server.url), f.sha256, dest_dir=tmp_path, size=f.size, progress=False)
    assert info.value.transient
    server.modes[f.path] = "lfs"
    with pytest.raises(DownloadError, match="Git LFS pointer") as info:
        download(file_url(f, server.url), f.sha256, dest_dir=tmp_path, size=f.size, progress=False)
    assert not info.value.transient
    assert (tmp_path / f".{f.name}.part").stat().st_size == f.size // 2  # the pointer did not replace it
    server.modes[f.path] = "ok"
    seen: list[int] = []
    path = download(file_url(f, server.url), f.sha256, dest_dir=tmp_path, size=f.size, progress=True,
                    on_bytes=seen.append)
    assert seen[0] == f.size // 2 and sum(seen) == f.size  # the resumed part counts once, for an aggregate bar
    assert path.stat().st_size == f.size


def test_require_files_names_root_and_command(tmp_path, entries, monkeypatch):
    monkeypatch.delenv("HIPT_RELEASED", raising=False)
    root = tmp_path / "my released"
    with pytest.raises(HIPTError) as info:
        require_files(entries, root, what="--knn")
    msg = str(info.value)
    assert "\n" not in msg and str(root) in msg
    assert f"6 of 6 released files ({format_bytes(total_bytes(entries))})" in msg
    assert f"hipt released fetch --knn --root '{root}'" in msg
    assert entries[0].name in msg and "--root DIR or HIPT_RELEASED=DIR" in msg
    # present files (hand-placed, right size) pass
    for f in entries:
        local_path(f, root).parent.mkdir(parents=True, exist_ok=True)
        local_path(f, root).write_bytes(b"\0" * f.size)
    assert require_files(entries, root, what="--knn") == root


def test_format_bytes():
    assert format_bytes(341_053_183) == "341 MB" and format_bytes(3_103_890_222) == "3.1 GB"
    assert format_bytes(512) == "512 B" and format_bytes(159_785_807) == "160 MB"


# ------------------------------------------------------------------- the registry against the reference
def test_registry_matches_the_reference_manifest():
    ref = shared_reference_dir()
    src = ref / "released_embeddings" / "lfs_manifest.csv" if ref is not None else None
    if src is None or not src.is_file():
        pytest.skip("reference LFS manifest not found: set HIPT_SHARED_REFERENCE or place shared/ beside the checkout")
    if not (ref / "tcga").is_dir():
        pytest.skip("reference TCGA tables not found: the slide lists of the subtyping tasks are needed")
    from hipt.released.registry import knn_files, manifest, patch_files, slide_files
    from hipt.tasks import load_task, read_table

    theirs = pd.read_csv(src, dtype={"path": str, "sha256": str, "size": "int64"}).set_index("path")
    used = knn_files() + patch_files()
    for name in ("tcga_brca_subtype", "tcga_kidney_subtype", "tcga_lung_subtype"):
        table = read_table(load_task(name).table_path)  # every slide of the table, not only the kept codes
        files = slide_files(table["slide_id"])  # raises if a slide has no released file
        assert len(files) == table["slide_id"].nunique(), name
        used += files
    assert len(used) == 180 + 24 + 937 + 905 + 958
    ours = manifest()
    for f in used:
        assert (ours.loc[f.path, "sha256"], ours.loc[f.path, "size"]) == (f.sha256, f.size)
        assert (theirs.loc[f.path, "sha256"], theirs.loc[f.path, "size"]) == (f.sha256, f.size), f.path
