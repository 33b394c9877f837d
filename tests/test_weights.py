"""Checkpoint loading: released format, strictness, LFS pointers, truncation, safe unpickling, export."""

from __future__ import annotations

import argparse
import hashlib
import os
from pathlib import Path

import pytest
import torch

from hipt.errors import CheckpointError
from hipt.models import load_backbone, load_model, save_backbone, vit4k_tiny, vit4k_xs, vit256_tiny
from hipt.models.weights import CHECKPOINTS, LFS_POINTER_PREFIX, load_checkpoint, resolve_weights
from test_models import random_backbone, released_checkpoint

LFS_POINTER = (
    b"version https://git-lfs.github.com/spec/v1\n"
    b"oid sha256:6960cd5a8657dc8bb214671aa0c6dbd3f5b698e84386884955836487ddc89e24\n"
    b"size 704238867\n"
)


@pytest.fixture()
def tiny_ckpt(tmp_path) -> tuple[Path, dict]:
    sd = random_backbone(vit256_tiny(), seed=3)
    path = tmp_path / "tiny_dino.pth"
    torch.save(released_checkpoint(sd, "vit_tiny"), path)
    return path, sd


def test_registry_matches_the_released_files():
    a, b = CHECKPOINTS["vit256_small_dino"], CHECKPOINTS["vit4k_xs_dino"]
    assert a.size == 704_238_867 and a.sha256.startswith("6960cd5a") and a.sha256.endswith("e24")
    assert b.size == 395_710_078 and b.sha256.startswith("2b0bd9e9") and b.sha256.endswith("b7b")
    for r in (a, b):
        assert r.url == f"https://media.githubusercontent.com/media/mahmoodlab/HIPT/master/HIPT_4K/Checkpoints/{r.filename}"


def test_released_format_loads_teacher_with_weights_only(tiny_ckpt, monkeypatch):
    path, sd = tiny_ckpt
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    model = load_backbone(vit256_tiny(), path)
    assert calls == [True]  # never switches the safe unpickler off
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, sd[k], atol=0, rtol=0)  # the teacher, not the student (+1.0)
    ckpt = load_checkpoint(path)
    assert isinstance(ckpt["args"], argparse.Namespace) and ckpt["args"].arch == "vit_tiny"
    assert ckpt["epoch"] == 100


def test_namespace_allowance_does_not_leak(tiny_ckpt):
    path, _ = tiny_ckpt
    load_checkpoint(path)
    with pytest.raises(Exception):  # outside our loader, plain weights_only still refuses the Namespace
        torch.load(path, weights_only=True)


def test_lfs_pointer_is_refused_with_a_clear_message(tmp_path):
    path = tmp_path / "vit256_small_dino.pth"
    path.write_bytes(LFS_POINTER)
    assert LFS_POINTER.startswith(LFS_POINTER_PREFIX)
    with pytest.raises(CheckpointError, match="Git LFS pointer") as e:
        load_backbone(vit256_tiny(), path)
    assert str(path) in str(e.value) and "git lfs pull" in str(e.value)


def test_truncated_unknown_file_is_refused(tiny_ckpt):
    path, _ = tiny_ckpt
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_backbone(vit256_tiny(), path)


def test_truncated_known_file_is_refused_by_size(tmp_path):
    path = tmp_path / "vit4k_xs_dino.pth"
    path.write_bytes(b"PK\x03\x04" + b"\0" * 1000)
    with pytest.raises(CheckpointError, match=r"truncated or incomplete: 1,004 bytes.*395,710,078"):
        vit4k_xs(weights=path)


def test_garbage_file_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("hello, this is not a checkpoint\n" * 10)
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        load_backbone(vit256_tiny(), path)


def test_missing_file_is_an_error_not_random_weights(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        vit256_tiny(weights=tmp_path / "nope.pth")


def test_missing_and_mismatched_keys_are_named(tiny_ckpt, tmp_path):
    path, sd = tiny_ckpt
    ckpt = released_checkpoint({k: v for k, v in sd.items() if k != "norm.bias"}, "vit_tiny")
    bad = tmp_path / "missing.pth"
    torch.save(ckpt, bad)
    with pytest.raises(CheckpointError, match=r"missing backbone keys \[norm\.bias\]"):
        load_backbone(vit256_tiny(), bad)
    with pytest.raises(CheckpointError, match=r"missing backbone keys \[phi\.0\.weight, phi\.0\.bias\]; unexpected keys"):
        load_backbone(vit4k_tiny(), path)  # wrong architecture
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_backbone(vit256_tiny(embed_dim=96), path)


def test_arbitrary_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"teacher": {}, "payload": _Payload(tmp_path / "pwned")}, path)
    with pytest.raises(CheckpointError, match="safe loader refuses"):
        load_checkpoint(path)
    assert not (tmp_path / "pwned").exists()  # the pickled os.mkdir never ran


class _Payload:
    def __init__(self, target: Path):
        self.target = str(target)

    def __reduce__(self):
        return (os.mkdir, (self.target,))


def test_url_download_is_cached_and_checked(tiny_ckpt, tmp_path, http_server, monkeypatch):
    path, sd = tiny_ckpt
    monkeypatch.setenv("HIPT_CACHE", str(tmp_path / "cache"))
    base = http_server(path.parent)
    model = vit256_tiny(weights=f"{base}/{path.name}")
    torch.testing.assert_close(model.state_dict()["norm.weight"], sd["norm.weight"])
    cached = tmp_path / "cache" / "downloads" / path.name
    assert cached.is_file() and hashlib.sha256(cached.read_bytes()).digest()
    # a served LFS pointer is refused too
    (path.parent / "pointer.pth").write_bytes(LFS_POINTER)
    with pytest.raises(CheckpointError, match="Git LFS pointer"):
        resolve_weights(f"{base}/pointer.pth")


def test_registry_name_uses_verified_download(monkeypatch, tmp_path):
    seen = {}

    def fake_download(url, sha256=None, **kw):
        seen.update(url=url, sha256=sha256, **kw)
        p = tmp_path / "vit4k_xs_dino.pth"
        torch.save(released_checkpoint(random_backbone(vit4k_xs()), "vit4k_xs"), p)
        return p

    monkeypatch.setattr("hipt.models.weights.download", fake_download)
    vit4k_xs(weights="vit4k_xs_dino")
    assert seen["url"].endswith("/HIPT_4K/Checkpoints/vit4k_xs_dino.pth")
    assert seen["sha256"] == CHECKPOINTS["vit4k_xs_dino"].sha256


def test_save_backbone_roundtrip_rebuilds_tiny_models(tmp_path):
    for model in (vit256_tiny(), vit4k_tiny(input_embed_dim=192)):
        path = save_backbone(model, tmp_path / f"{type(model).__name__}.pth", extra={"stage": 1})
        plain = torch.load(path, weights_only=True)  # slim: loads with the default safe unpickler
        assert set(plain) == {"teacher", "hipt"} and all(k.startswith("backbone.") for k in plain["teacher"])
        rebuilt = load_model(path)
        assert type(rebuilt) is type(model) and rebuilt.config == model.config
        for k, v in model.state_dict().items():
            torch.testing.assert_close(rebuilt.state_dict()[k], v, atol=0, rtol=0)


def test_load_model_infers_architecture_from_released_checkpoint(tiny_ckpt):
    path, sd = tiny_ckpt
    model = load_model(path)
    assert model.config["embed_dim"] == 192 and model.config["depth"] == 4 and model.num_heads == 3
    assert not model.training


def test_load_model_reads_heads_from_dino_args(tmp_path):
    """A DINO checkpoint without a hipt config: the tiny ViT4K's 3 heads come from args.arch."""
    sd = random_backbone(vit4k_tiny(), seed=4)
    path = tmp_path / "stage2.pth"
    torch.save(released_checkpoint(sd, "vit4k_tiny"), path)
    model = load_model(path)
    assert model.num_heads == 3 and model.config == vit4k_tiny().config
    g = torch.randn(1, 192, 4, 4)
    ref = vit4k_tiny().eval()
    ref.load_state_dict(sd)
    with torch.no_grad():
        torch.testing.assert_close(model(g), ref(g))
