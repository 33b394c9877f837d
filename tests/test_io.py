"""Atomic writes and verified downloads, against a local HTTP server on 127.0.0.1."""

from __future__ import annotations

import hashlib

import pytest

from hipt.errors import ChecksumError, HIPTError
from hipt.io import atomic_path, download, sha256sum


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    dest = tmp_path / "out.bin"
    with pytest.raises(RuntimeError):
        with atomic_path(dest) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert not dest.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_renames_on_success(tmp_path):
    dest = tmp_path / "sub" / "out.h5"
    with atomic_path(dest) as tmp:
        assert tmp.suffix == ".h5" and tmp.parent == dest.parent
        tmp.write_bytes(b"data")
    assert dest.read_bytes() == b"data"
    assert [p.name for p in dest.parent.iterdir()] == ["out.h5"]


def test_download_verifies_and_caches(tmp_path, http_server):
    served = tmp_path / "served"
    served.mkdir()
    payload = b"x" * 3_000_000
    (served / "file.bin").write_bytes(payload)
    digest = hashlib.sha256(payload).hexdigest()
    base = http_server(served)

    cache = tmp_path / "cache"
    path = download(f"{base}/file.bin", digest, dest_dir=cache, progress=False)
    assert path.read_bytes() == payload and sha256sum(path) == digest
    # second call: served file removed, cache hit needs no network
    (served / "file.bin").unlink()
    assert download(f"{base}/file.bin", digest, dest_dir=cache, progress=False) == path


def test_download_wrong_checksum_leaves_no_file(tmp_path, http_server):
    served = tmp_path / "served"
    served.mkdir()
    (served / "file.bin").write_bytes(b"abc")
    base = http_server(served)
    cache = tmp_path / "cache"
    with pytest.raises(ChecksumError, match="expected"):
        download(f"{base}/file.bin", "0" * 64, dest_dir=cache, progress=False)
    assert not cache.exists() or list(cache.iterdir()) == []


def test_download_missing_url_is_clear(tmp_path, http_server):
    base = http_server(tmp_path)
    with pytest.raises(HIPTError, match="download failed"):
        download(f"{base}/nope.bin", None, dest_dir=tmp_path / "c", progress=False)


def test_atomic_path_output_has_default_permissions(tmp_path):
    import os

    dest = tmp_path / "out.txt"
    with atomic_path(dest) as tmp:
        tmp.write_text("x")
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    assert os.stat(dest).st_mode & 0o777 == os.stat(plain).st_mode & 0o777


def test_file_lock_makes_a_second_process_wait(tmp_path):
    import subprocess
    import sys
    import time

    from hipt.io import file_lock

    target = tmp_path / "model"
    code = (
        "import sys, time; from hipt.io import file_lock\n"
        f"t = time.time()\nwith file_lock({str(target)!r}):\n    print(round(time.time() - t, 2))\n"
    )
    with file_lock(target):
        with file_lock(target):  # re-entrant in one process
            pass
        child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(1.5)
        assert child.poll() is None  # still waiting for our lock
    out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    # it waited (its message says so); how long depends on how long its own start-up took, not asserted
    assert float(out) > 0.0
    assert "waiting for another process" in err
