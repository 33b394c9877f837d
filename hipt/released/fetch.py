"""Fetch the reference's released embedding files into a local root: parallel, resumable, verified.

:func:`fetch_files` downloads the registry entries (:mod:`hipt.released.registry`) that a root lacks,
several at once, each through :func:`hipt.io.download`: streamed into a partial file that a rerun
resumes, checked against the registered size and sha256, renamed into place only when right.  GitHub's
media host answers an exhausted LFS bandwidth quota with a pointer file or an HTML page instead of the
data; those are refused with a message that says so.  A failed file is recorded and the others go on,
so one run fetches everything it can and its :class:`FetchReport` lists the rest.

:func:`require_files` is what the commands that read the files call first: one error that says how
many files are missing, where they were looked for, and the command that fetches them.
"""

from __future__ import annotations

import os
import shlex
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from hipt.errors import HIPTError
from hipt.io import DownloadError, download, sha256sum
from hipt.released.registry import ReleasedFile, local_path, missing_files, released_root

__all__ = [
    "RETRY_DELAY_S",
    "FetchReport",
    "fetch_files",
    "require_files",
    "file_url",
    "total_bytes",
    "format_bytes",
]

#: Seconds to wait before the n-th retry of a transient failure, times n (a busy host needs a moment).
RETRY_DELAY_S = 2.0


@dataclass
class FetchReport:
    """What :func:`fetch_files` did.

    Attributes:
        root: the local root the files are in.
        fetched: files downloaded by this call.
        present: files that were already there (size, or sha256 if asked, matched).
        failed: ``(file, reason)`` of each file that could not be fetched; the reason is one line.
        bytes_fetched: total size of the ``fetched`` files (a resumed file counts whole).
        seconds: wall time of the call.
    """

    root: Path
    fetched: list[ReleasedFile] = field(default_factory=list)
    present: list[ReleasedFile] = field(default_factory=list)
    failed: list[tuple[ReleasedFile, str]] = field(default_factory=list)
    bytes_fetched: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True when every asked file is now present."""
        return not self.failed

    def summary(self, max_failures: int = 5) -> str:
        """A short text: counts and bytes, then the first ``max_failures`` failures, one a line."""
        lines = [
            f"{self.root}: fetched {len(self.fetched):,} files ({format_bytes(self.bytes_fetched)}) in "
            f"{self.seconds:.1f} s, {len(self.present):,} already present, {len(self.failed):,} failed"
        ]
        lines += [f"  {reason}" for _, reason in self.failed[:max_failures]]
        if len(self.failed) > max_failures:
            lines.append(f"  ... and {len(self.failed) - max_failures:,} more failures; run the same command "
                         "again to retry them")
        return "\n".join(lines)


def file_url(file: ReleasedFile, base_url: str | None = None) -> str:
    """Where to download ``file``: ``<base_url>/<repository path>`` for a mirror (``base_url``, else
    ``$HIPT_RELEASED_URL``), else GitHub's media host (:attr:`ReleasedFile.url`)."""
    base = base_url or os.environ.get("HIPT_RELEASED_URL")
    return f"{base.rstrip('/')}/{file.path}" if base else file.url


def total_bytes(files: Iterable[ReleasedFile]) -> int:
    """Total registered size of ``files`` in bytes (what fetching all of them downloads)."""
    return sum(f.size for f in files)


def format_bytes(n: int) -> str:
    """``341053183`` → ``"341 MB"``: three significant digits, decimal units (as download sizes are quoted)."""
    value = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 999.5:
            return f"{n:,} B" if unit == "B" else f"{value:.3g} {unit}"
        value /= 1000
    return f"{value:.3g} TB"


def _is_present(file: ReleasedFile, root: str | Path | None, verify: str) -> bool:
    path = local_path(file, root)
    if not path.is_file() or path.stat().st_size != file.size:
        return False
    return verify == "size" or sha256sum(path) == file.sha256


def fetch_files(
    files: Sequence[ReleasedFile],
    root: str | Path | None = None,
    workers: int = 8,
    progress: bool = True,
    verify_present: str = "size",
    retries: int = 2,
    base_url: str | None = None,
    timeout: float = 60.0,
) -> FetchReport:
    """Download the ``files`` that ``root`` lacks, ``workers`` at a time, and report what happened.

    Args:
        files: registry entries (duplicates are fetched once).
        root: the local root (default :func:`~hipt.released.registry.released_root`); each file goes to
            ``<root>/<repository path>``.
        workers: parallel downloads (threads: the work is waiting on the network).
        progress: one aggregate bar in bytes, with files done/total beside it.
        verify_present: how a file already there is accepted: ``"size"`` (cheap; a fetched file was
            sha256-checked when it arrived) or ``"sha256"`` (reads every file).
        retries: further tries of a file after a transient failure (network, truncation, HTTP 5xx);
            each resumes the partial file.  An LFS pointer, an HTML page or a wrong checksum is not
            retried.
        base_url: a mirror of the reference repository's layout (also ``$HIPT_RELEASED_URL``).
        timeout: seconds without an answer before a download counts as failed.

    A failure never stops the other files, and leaves nothing at the file's final path (a truncated
    download keeps its hidden ``.<name>.part`` file, which the next run resumes).
    """
    if verify_present not in ("size", "sha256"):
        raise HIPTError(f"verify_present={verify_present!r}: expected 'size' or 'sha256'")
    start = time.perf_counter()
    files = list(dict.fromkeys(files))
    report = FetchReport(root=released_root(root))
    pool = ThreadPoolExecutor(max_workers=max(1, workers))
    bar = None
    try:
        # hashing present files is the slow part of a sha256 check: spread it over the workers too
        present = list(pool.map(lambda f: _is_present(f, root, verify_present), files))
        report.present = [f for f, p in zip(files, present) if p]
        todo = [f for f, p in zip(files, present) if not p]
        bar = _Bar(total_bytes(todo), len(todo)) if progress and todo else None
        futures = {pool.submit(_fetch_one, f, root, file_url(f, base_url), retries, timeout, bar): f for f in todo}
        for future in as_completed(futures):
            file, reason = futures[future], future.result()
            if reason is None:
                report.fetched.append(file)
                report.bytes_fetched += file.size
            else:
                report.failed.append((file, reason))
            if bar is not None:
                bar.file_done(failed=reason is not None)
    finally:
        # on Ctrl-C, drop the queued files instead of waiting for all of them (running ones finish)
        pool.shutdown(wait=True, cancel_futures=True)
        if bar is not None:
            bar.close()
    # completion order is the threads'; the report lists files in the order they were asked for
    order = {f: i for i, f in enumerate(files)}
    report.fetched.sort(key=order.__getitem__)
    report.failed.sort(key=lambda item: order[item[0]])
    report.seconds = time.perf_counter() - start
    return report


def _fetch_one(file: ReleasedFile, root: str | Path | None, url: str, retries: int, timeout: float,
               bar: _Bar | None) -> str | None:
    """Download one file, retrying transient failures; None on success, else the one-line reason."""
    dest = local_path(file, root)
    counted = 0

    def count(n: int) -> None:
        nonlocal counted
        counted += n
        if bar is not None:
            bar.update(n)

    try:
        # not present means wrong size or sha256: remove it now so that a failure leaves nothing there
        if dest.is_file():
            dest.unlink()
        attempt = 0
        while True:
            if counted:  # a retry re-counts the resumed part; take back what the last try counted
                count(-counted)
            try:
                download(url, file.sha256, dest_dir=dest.parent, filename=dest.name, timeout=timeout,
                         progress=False, size=file.size, on_bytes=count)
                return None
            except DownloadError as e:
                if not e.transient or attempt >= retries:
                    return str(e)
            attempt += 1
            time.sleep(RETRY_DELAY_S * attempt)
    except HIPTError as e:  # ChecksumError: the body was complete and wrong
        return str(e)
    except OSError as e:  # the local side: permissions, a full disk
        return f"{dest}: {e}"


class _Bar:
    """One tqdm bar in bytes for all downloads, shared by the worker threads (hence the lock)."""

    def __init__(self, total: int, n_files: int):
        self._lock = threading.Lock()
        self._n, self._done, self._failed = n_files, 0, 0
        self._tqdm = tqdm(total=total, unit="B", unit_scale=True, desc="released files", leave=True)
        self._tqdm.set_postfix_str(self._postfix(), refresh=False)

    def _postfix(self) -> str:
        failed = f", {self._failed:,} failed" if self._failed else ""
        return f"{self._done:,}/{self._n:,} files{failed}"

    def update(self, n: int) -> None:
        with self._lock:
            self._tqdm.update(n)

    def file_done(self, failed: bool) -> None:
        with self._lock:
            self._done += 1
            self._failed += failed
            self._tqdm.set_postfix_str(self._postfix())

    def close(self) -> None:
        self._tqdm.close()


def require_files(files: Sequence[ReleasedFile], root: str | Path | None = None, what: str = "") -> Path:
    """The root, if every one of ``files`` is there (registered size); else one :class:`HIPTError`.

    ``what`` is the selection to give ``hipt released fetch`` for these files (e.g. ``"--knn"``): the
    error quotes the whole command, or says how to use a folder of files placed by hand.
    """
    folder = released_root(root)
    missing = missing_files(files, root)
    if not missing:
        return folder
    names = ", ".join(f.name for f in missing[:3]) + (", ..." if len(missing) > 3 else "")
    parts = ["hipt released fetch", what.strip(), f"--root {shlex.quote(str(folder))}" if root is not None else ""]
    command = " ".join(p for p in parts if p)
    raise HIPTError(
        f"{folder}: {len(missing):,} of {len(files):,} released files ({format_bytes(total_bytes(missing))}) "
        f'are missing ({names}); fetch them with "{command}", or put them there by hand (same paths as in '
        "the reference repository) and pass that folder as --root DIR or HIPT_RELEASED=DIR"
    )
