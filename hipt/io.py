"""Small I/O plumbing shared by every module: atomic writes, checksums, verified downloads.

Every file the package writes goes through :func:`atomic_path`: the data are written to a temporary
file in the destination folder and renamed onto the final name only when complete, so a killed run
never leaves a half-written output that a resumed run would mistake for a finished one.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from hipt.errors import ChecksumError, HIPTError
from hipt.paths import cache_dir

_CHUNK = 1 << 20


@contextlib.contextmanager
def atomic_path(dest: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; rename it onto ``dest`` if the block succeeds.

    The temporary name keeps ``dest``'s suffix (some writers pick the format from it) and ends in
    ``.tmp`` before that suffix, e.g. ``slide.h5`` → ``.slide.h5.<random>.tmp.h5``.  On any
    exception the temporary file is removed and ``dest`` is left untouched.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    suffix = dest.suffix if suffix is None else suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=f".tmp{suffix}", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600; give the output the permissions a plain open() would have
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def data_files(folder: str | Path, *patterns: str) -> list[Path]:
    """The files of ``folder`` matching any of ``patterns`` (globs), sorted, without dot-named ones.

    Dot-named files are the temporary files of :func:`atomic_path` (``.<name>.<random>.tmp.h5``): a
    concurrent writer's half-written output, never data.
    """
    folder = Path(folder)
    return sorted(f for pattern in patterns for f in folder.glob(pattern) if not f.name.startswith("."))


_HELD_LOCKS: set[str] = set()


@contextlib.contextmanager
def file_lock(path: str | Path, message: str | None = None) -> Iterator[None]:
    """Hold an exclusive inter-process lock on ``path`` (a cache folder or file) for the block.

    Two processes that build the same cached artefact (two notebooks training the same model, say)
    would otherwise write into one folder at once; with the lock, the second waits and then finds the
    artefact done.  The lock is ``.<name>.lock`` beside ``path`` (``fcntl.flock``, released when the
    process dies); re-entrant within a process; a no-op where ``fcntl`` does not exist (Windows).
    """
    path = Path(path)
    key = str(path.resolve())
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    if key in _HELD_LOCKS:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            import sys

            print(message or f"waiting for another process that is building {path} ...", file=sys.stderr, flush=True)
            fcntl.flock(fh, fcntl.LOCK_EX)
        _HELD_LOCKS.add(key)
        try:
            yield
        finally:
            _HELD_LOCKS.discard(key)
            fcntl.flock(fh, fcntl.LOCK_UN)


def cache_lock(path: str | Path):
    """:func:`file_lock` on a cache folder, except inside a torchrun job: ranks must not wait on each
    other's lock while they wait on each other in collectives."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return contextlib.nullcontext()
    return file_lock(path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(dest: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``dest`` atomically; returns ``dest``."""
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)
    return Path(dest)


def atomic_write_text(dest: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``dest`` atomically; returns ``dest``."""
    return atomic_write_bytes(dest, text.encode(encoding))


def sha256sum(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class RemoteFile:
    """A public file the package knows: where it lives and what it must hash to."""

    url: str
    sha256: str | None
    filename: str
    size: int | None = None
    description: str = ""


def _is_url(s: str) -> bool:
    return urllib.parse.urlparse(s).scheme in {"http", "https", "ftp", "file"}


def download(
    url: str,
    sha256: str | None = None,
    dest_dir: str | Path | None = None,
    filename: str | None = None,
    timeout: float = 60.0,
    progress: bool = True,
) -> Path:
    """Download ``url`` into the cache (or ``dest_dir``) and return the local path.

    - A cached file with the right sha256 is returned without any network access.
    - The file is streamed into a temporary file, hashed on the way, and renamed into place only if
      the checksum matches (:class:`~hipt.errors.ChecksumError` otherwise; nothing is left behind).
    - A plain local path is accepted too and only verified.
    """
    if not _is_url(url):
        path = Path(url).expanduser()
        if not path.is_file():
            raise HIPTError(f"{path}: file not found")
        if sha256 is not None and sha256sum(path) != sha256.lower():
            raise ChecksumError(path, f"sha256 is {sha256sum(path)}, expected {sha256}")
        return path

    name = filename or Path(urllib.parse.urlparse(url).path).name or "download"
    folder = Path(dest_dir) if dest_dir is not None else cache_dir("downloads")
    dest = folder / name
    if dest.is_file() and (sha256 is None or sha256sum(dest) == sha256.lower()):
        return dest

    h = hashlib.sha256()
    try:
        with atomic_path(dest) as tmp:
            try:
                response = urllib.request.urlopen(url, timeout=timeout)  # noqa: S310 (URL is data)
            except (urllib.error.URLError, OSError) as e:
                raise HIPTError(f"{url}: download failed ({e})") from None
            with response, open(tmp, "wb") as out:
                total = int(response.headers.get("Content-Length") or 0) or None
                bar = _progress(total, name) if progress else None
                for chunk in iter(lambda: response.read(_CHUNK), b""):
                    h.update(chunk)
                    out.write(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
                if bar is not None:
                    bar.close()
            if total is not None and tmp.stat().st_size != total:
                raise HIPTError(f"{url}: download truncated ({tmp.stat().st_size} of {total} bytes)")
            got = h.hexdigest()
            if sha256 is not None and got != sha256.lower():
                raise ChecksumError(url, f"downloaded file has sha256 {got}, expected {sha256}")
    except (HIPTError, ChecksumError):
        raise
    except OSError as e:
        raise HIPTError(f"{url}: download failed ({e})") from None
    return dest


def fetch(remote: RemoteFile, dest_dir: str | Path | None = None, **kwargs) -> Path:
    """Download a known :class:`RemoteFile` (cached, verified)."""
    return download(remote.url, remote.sha256, dest_dir=dest_dir, filename=remote.filename, **kwargs)


def _progress(total: int | None, name: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, desc=name, leave=False)


def copy_atomic(src: str | Path, dest: str | Path) -> Path:
    """Copy a file atomically."""
    with atomic_path(dest) as tmp:
        shutil.copyfile(src, tmp)
    return Path(dest)
