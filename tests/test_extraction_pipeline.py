"""The extraction pipeline: parallel readers (threads, processes) give the serial reader's pixels in order,
keep a bounded number of regions in flight whatever the slide's size, pass readers' errors on, and
``extract_slide`` writes the same features with any reader."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from hipt.features import RegionDataset, RegionReader, extract_slide, load_features
from hipt.models import HIPT4K, vit4k_tiny, vit256_tiny
from test_features import make_patched_cohort

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> tuple[Path, Path]:
    return make_patched_cohort(tmp_path_factory.mktemp("pipeline"), n=3)


@pytest.fixture(scope="module")
def encoder() -> HIPT4K:
    torch.manual_seed(0)
    return HIPT4K(vit256_tiny(), vit4k_tiny(), patch_batch=4).eval()


class CountingRegions(RegionDataset):
    """``n`` synthetic 32-px regions (pixel value = index), counting reads started and the peak in flight
    ahead of the consumer; ``fail_at`` makes that region raise."""

    def __init__(self, n: int, fail_at: int | None = None, delay: float = 0.0) -> None:
        self.rc = SimpleNamespace(region_size=32, coords=np.zeros((n, 2), np.int64))
        self.n, self.fail_at, self.delay = n, fail_at, delay
        self.state = {"started": 0, "consumed": 0, "peak": 0, "lock": threading.Lock()}
        self._slide = None

    def __len__(self) -> int:
        return self.n

    def read_hwc(self, i: int, out: torch.Tensor | None = None) -> torch.Tensor:
        st = self.state
        with st["lock"]:
            st["started"] += 1
            st["peak"] = max(st["peak"], st["started"] - st["consumed"])
        if i == self.fail_at:
            raise OSError(f"cannot decode region {i}")
        time.sleep(self.delay)
        img = np.full((32, 32, 3), i % 256, np.uint8)
        if out is None:
            return torch.from_numpy(img)
        np.copyto(out.numpy(), img)
        return out

    def close(self) -> None:
        pass


@pytest.mark.parametrize("backend,workers", [("thread", 0), ("thread", 3), ("process", 2)])
def test_readers_yield_the_regions_in_order(backend, workers):
    ds = CountingRegions(11)
    seen = []
    for start, batch in RegionReader(ds, batch_regions=4, workers=workers, backend=backend):
        assert batch.dtype == torch.uint8 and batch.shape[1:] == (32, 32, 3)
        seen += [(start + j, int(batch[j, 5, 7, 1])) for j in range(batch.shape[0])]
    assert seen == [(i, i) for i in range(11)]


def test_regions_in_flight_do_not_grow_with_the_slide():
    """A slow consumer: the thread reader runs ahead by at most its bound, for 12 regions as for 60."""
    peaks = []
    for n in (12, 60):
        ds = CountingRegions(n)
        reader = RegionReader(ds, batch_regions=2, workers=3, backend="thread", prefetch=1)
        for _, batch in reader:
            time.sleep(0.002)
            with ds.state["lock"]:
                ds.state["consumed"] += batch.shape[0]
        peaks.append(ds.state["peak"])
    bound = reader.max_batches_in_flight * 2
    assert max(peaks) <= bound and bound < 12, (peaks, bound)


def test_a_reader_error_reaches_the_consumer_in_order():
    ds = CountingRegions(9, fail_at=5)
    got = []
    with pytest.raises(OSError, match="region 5"):
        for start, batch in RegionReader(ds, batch_regions=2, workers=2, backend="thread"):
            got.append(start)
    assert got == [0, 2]  # regions 0-3 arrived; the batch holding region 5 raised


def test_parallel_readers_read_the_slide_pixels(cohort):
    _, patch = cohort
    ds = RegionDataset(patch / "coords" / "ph0.h5")
    with ds.rc.open_slide() as s:
        ref = np.stack([ds.rc.read_region(s, i) for i in range(len(ds))])
    for backend in ("thread", "process"):
        batches = list(RegionReader(ds, batch_regions=3, workers=2, backend=backend))
        assert [s for s, _ in batches] == [0, 3]
        np.testing.assert_array_equal(torch.cat([b for _, b in batches]).numpy(), ref)


@pytest.mark.parametrize("backend", ["thread", "process"])
def test_extract_slide_writes_the_same_features_with_any_reader(cohort, encoder, tmp_path, backend):
    _, patch = cohort
    coords = patch / "coords" / "ph0.h5"
    serial = extract_slide(None, coords, tmp_path / "serial.h5", encoder, workers=0, batch_regions=3, progress=False)
    par = extract_slide(None, coords, tmp_path / "par.h5", encoder, workers=2, batch_regions=3, reader=backend,
                        progress=False)
    a, b = load_features(tmp_path / "serial.h5"), load_features(tmp_path / "par.h5")
    for k in ("feats256", "feats4k", "coords"):
        assert torch.equal(a[k], b[k]), k
    assert set(par.timing) == {"wait_read", "h2d", "compute", "write", "wall"}
    assert serial.timing["compute"] > 0 and par.timing["wall"] >= par.timing["compute"]


def test_unreadable_region_fails_the_slide_without_a_file(cohort, encoder, tmp_path, monkeypatch):
    _, patch = cohort
    real = RegionDataset.read_hwc

    def broken(self, i, out=None):
        if i == 2:
            raise OSError("simulated decode error")
        return real(self, i, out)

    monkeypatch.setattr(RegionDataset, "read_hwc", broken)
    with pytest.raises(OSError, match="simulated"):
        extract_slide(None, patch / "coords" / "ph0.h5", tmp_path / "ph0.h5", encoder, workers=2, batch_regions=1,
                      progress=False)
    assert list(tmp_path.iterdir()) == []
