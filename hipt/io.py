"""Small I/O plumbing shared by every module: atomic writes, checksums, verified downloads.

Every file the package writes goes through :func:`atomic_path`: the data are written to a temporary
file in the destination folder and renamed onto the final name only when complete, so a killed run
never leaves a half-written output that a resumed run would mistake for a finished one.  Downloads
(:func:`download`) keep their partial file instead, under a dot-name (``.<name>.part``), so that a
rerun resumes it; it too is renamed onto the final name only once complete and verified.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import re
import shutil
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

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
    try:  # here, not at the top: fcntl is POSIX-only, and without it the lock is a no-op
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


#: The first bytes of a Git LFS pointer file: what a clone without LFS holds, and what GitHub's media
#: host may serve instead of the data once a repository's LFS bandwidth quota is exhausted.
LFS_POINTER_PREFIX = b"version https://git-lfs.github.com/spec/v1"


class DownloadError(HIPTError):
    """A download that did not give the file.

    ``transient`` is True when trying again at once may succeed (network errors, a truncated body,
    HTTP 5xx/429); the partial file is then kept so that the next try resumes where this one stopped.
    """

    def __init__(self, message: str, transient: bool = False):
        super().__init__(message)
        self.transient = transient


def _not_the_file(head: bytes, content_type: str | None, dest: Path) -> str | None:
    """Why a body starting with ``head`` (served as ``content_type``) is not the data of ``dest``, or None."""
    by_hand = f"retry later, or put the file there by hand ({dest}) and pass its folder"
    if head.startswith(LFS_POINTER_PREFIX):
        return ("is a Git LFS pointer, not the data: the LFS bandwidth quota of the repository may be "
                f"exhausted; {by_hand}")
    start = head.lstrip()[:16].lower()
    if start.startswith((b"<!doctype html", b"<html")) or (content_type or "").lower().startswith("text/html"):
        return f"is an HTML page, not the data (error page or exhausted quota); {by_hand}"
    return None


def _is_cached(dest: Path, sha256: str | None, size: int | None) -> bool:
    if not dest.is_file() or (size is not None and dest.stat().st_size != size):
        return False
    return sha256 is None or sha256sum(dest) == sha256.lower()


def _partial_path(dest: Path) -> Path:
    """``.<name>.part`` beside ``dest``: a dot-name, so :func:`data_files` never lists it."""
    return dest.with_name(f".{dest.name}.part")


# pooch (verified, cached downloads) was considered: it has neither byte-range resume nor a diagnosis
# of LFS pointers and HTML error pages, the two failures of GitHub's media host, hence this function.
def download(
    url: str,
    sha256: str | None = None,
    dest_dir: str | Path | None = None,
    filename: str | None = None,
    timeout: float = 60.0,
    progress: bool = True,
    *,
    size: int | None = None,
    on_bytes: Callable[[int], None] | None = None,
) -> Path:
    """Download ``url`` into the cache (or ``dest_dir``) and return the local path.

    - A cached file with the right size (``size``, bytes, if given) and sha256 is returned without
      any network access.
    - The body is streamed into ``.<name>.part`` beside the destination.  A partial file left by an
      interrupted run is resumed with an HTTP ``Range`` request (a server that answers ``200``
      instead of ``206`` restarts it from zero).  The sha256 is computed over the whole final file,
      which is then renamed into place (``os.replace``): the destination never holds a partial file.
    - When the expected content is known (``sha256`` or ``size`` given), a Git LFS pointer or an HTML
      page is refused on its first bytes, before it is written (:class:`DownloadError`).
    - A body shorter than promised (``Content-Length``) or interrupted keeps the partial file for a
      resume (:class:`DownloadError` with ``transient=True``); a complete file of the wrong size or
      sha256 is removed (:class:`~hipt.errors.ChecksumError`).
    - ``progress`` shows a per-file bar; ``on_bytes(n)`` is called with every ``n`` bytes that count
      towards the file (the resumed part once, then each chunk), e.g. to drive an aggregate bar.
    - A plain local path is accepted too and only verified.
    """
    if not _is_url(url):
        path = Path(url).expanduser()
        if not path.is_file():
            raise HIPTError(f"{path}: file not found")
        if size is not None and path.stat().st_size != size:
            raise ChecksumError(path, f"size is {path.stat().st_size:,} bytes, expected {size:,}")
        if sha256 is not None and (got := sha256sum(path)) != sha256.lower():
            raise ChecksumError(path, f"sha256 is {got}, expected {sha256}")
        return path

    name = filename or Path(urllib.parse.urlparse(url).path).name or "download"
    folder = Path(dest_dir) if dest_dir is not None else cache_dir("downloads")
    dest = folder / name
    if _is_cached(dest, sha256, size):
        return dest
    folder.mkdir(parents=True, exist_ok=True)
    part = _partial_path(dest)
    have = part.stat().st_size if part.is_file() else 0
    if size is not None and have > size:  # longer than the file: not a prefix of it
        part.unlink()
    if size is None or have != size:  # have == size: a run killed between its last byte and the rename
        _stream(url, dest, size, timeout, progress, on_bytes, check=sha256 is not None or size is not None)
    elif on_bytes is not None:
        on_bytes(have)
    _finish(url, dest, sha256, size)
    return dest


def _stream(url: str, dest: Path, size: int | None, timeout: float, progress: bool,
            on_bytes: Callable[[int], None] | None, check: bool) -> None:
    """Append the rest of ``url``'s body to ``dest``'s partial file (or rewrite it from zero); see
    :func:`download`.  ``check``: refuse an LFS pointer or an HTML page."""
    part = _partial_path(dest)
    offset = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 (URL is data)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:  # the partial file is not a prefix the server can continue
            part.unlink()
            return _stream(url, dest, size, timeout, progress, on_bytes, check)
        raise DownloadError(f"{url}: download failed (HTTP {e.code} {e.reason})",
                            transient=e.code >= 500 or e.code == 429) from None
    except (urllib.error.URLError, OSError) as e:
        raise DownloadError(f"{url}: download failed ({getattr(e, 'reason', e)})", transient=True) from None

    with response:
        resumed = offset > 0 and response.status == 206
        if resumed and _range_start(response.headers.get("Content-Range")) != offset:
            part.unlink()
            raise DownloadError(f"{url}: the server answered a range other than bytes={offset}-; "
                                "run the same command again to download it from the start", transient=True)
        start = offset if resumed else 0
        length = response.headers.get("Content-Length")
        promised = start + int(length) if length else _range_total(response.headers.get("Content-Range"))
        written = start
        bar = _progress(promised, dest.name) if progress else None
        try:
            chunk = response.read(_CHUNK)
            # a pointer or an error page is refused before it replaces a partial file
            ctype = response.headers.get("Content-Type")
            reason = _not_the_file(b"" if resumed else chunk, ctype, dest) if check else None
            if reason is not None:
                raise DownloadError(f"{url}: {reason}")
            if bar is not None:
                bar.update(start)
            if on_bytes is not None and start:
                on_bytes(start)
            with open(part, "ab" if resumed else "wb") as out:
                while chunk:
                    out.write(chunk)
                    written += len(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
                    if on_bytes is not None:
                        on_bytes(len(chunk))
                    if size is not None and written > size:  # not the file; _finish says what it is
                        break
                    chunk = response.read(_CHUNK)
        except (OSError, http.client.HTTPException) as e:
            raise DownloadError(f"{url}: interrupted at {written:,} of {_of(promised, size)} bytes ({e}); "
                                "run the same command again to resume", transient=True) from None
        finally:
            if bar is not None:
                bar.close()
    if promised is not None and written < promised and (size is None or written <= size):
        raise DownloadError(f"{url}: truncated at {written:,} of {promised:,} bytes; "
                            "run the same command again to resume", transient=True)


def _finish(url: str, dest: Path, sha256: str | None, size: int | None) -> None:
    """Check ``dest``'s complete partial file (size, then sha256) and rename it onto ``dest``, or remove it."""
    part = _partial_path(dest)
    got = part.stat().st_size
    if size is not None and got != size:
        with open(part, "rb") as f:
            reason = _not_the_file(f.read(64), None, dest)
        part.unlink()
        if reason is not None:
            raise DownloadError(f"{url}: {reason}")
        raise ChecksumError(dest, f"downloaded from {url}: {got:,} bytes, expected {size:,}")
    if sha256 is not None and (digest := sha256sum(part)) != sha256.lower():
        part.unlink()
        raise ChecksumError(dest, f"downloaded from {url}: sha256 is {digest}, expected {sha256}")
    # open() created the partial file with the umask's permissions: no chmod, unlike atomic_path's mkstemp file
    os.replace(part, dest)


def _range_start(content_range: str | None) -> int | None:
    """``bytes 100-199/200`` → 100 (None if absent or malformed)."""
    m = re.fullmatch(r"bytes (\d+)-\d+/(?:\d+|\*)", (content_range or "").strip())
    return int(m.group(1)) if m else None


def _range_total(content_range: str | None) -> int | None:
    """``bytes 100-199/200`` → 200 (None if absent, unknown ``*`` or malformed)."""
    m = re.fullmatch(r"bytes \d+-\d+/(\d+)", (content_range or "").strip())
    return int(m.group(1)) if m else None


def _of(promised: int | None, size: int | None) -> str:
    total = promised if promised is not None else size
    return f"{total:,}" if total is not None else "?"


def fetch(remote: RemoteFile, dest_dir: str | Path | None = None, **kwargs) -> Path:
    """Download a known :class:`RemoteFile` (cached, verified, its registered size too)."""
    kwargs.setdefault("size", remote.size)
    return download(remote.url, remote.sha256, dest_dir=dest_dir, filename=remote.filename, **kwargs)


def _progress(total: int | None, name: str):
    return tqdm(total=total, unit="B", unit_scale=True, desc=name, leave=False)


def copy_atomic(src: str | Path, dest: str | Path) -> Path:
    """Copy a file atomically."""
    with atomic_path(dest) as tmp:
        shutil.copyfile(src, tmp)
    return Path(dest)
