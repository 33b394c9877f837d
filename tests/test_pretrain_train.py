"""The DINO trainer: exact resume, DDP equivalence (2 gloo processes), checkpoint format, CLI."""

from __future__ import annotations

import json
import os
import socket

import numpy as np
import pytest
import torch

from hipt.pretrain import make_config, read_log, train
from hipt.pretrain.data import ArrayPatches, FeatureGrids

TINY = dict(
    arch="vit256_tiny", embed_dim=32, depth=2, num_heads=2, out_dim=64, head_hidden_dim=32, head_bottleneck_dim=16,
    global_crop_size=32, local_crop_size=16, local_crops_number=2, batch_size_per_gpu=4, epochs=3,
    steps_per_epoch=2, warmup_epochs=1, progress=False, checkpoint_every=100, num_workers=0,
    precision="fp32",  # the cpu-tiny preset trains in bf16; the DDP comparison below needs fp32 sums
)


def _images(n=12, size=48, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (n, size, size, 3), dtype=np.uint8)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_exact_resume_reproduces_the_uninterrupted_losses(tmp_path, precision):
    torch.set_num_threads(1)
    data = _images()
    tiny = TINY | {"precision": precision}
    full = train(make_config(1, out_dir=str(tmp_path / "full"), **tiny), ArrayPatches(data))
    assert [r["step"] for r in full.log] == [1, 2, 3, 4, 5, 6]

    cfg = make_config(1, out_dir=str(tmp_path / "split"), **(tiny | {"checkpoint_every": 2}))
    first = train(cfg.replace(max_steps=3), ArrayPatches(data))  # "killed" after step 3; checkpoint at step 2
    assert [r["step"] for r in first.log] == [1, 2, 3]
    ckpt = torch.load(tmp_path / "split" / "checkpoint.pth", weights_only=False)
    assert ckpt["step"] == 3  # the last step always checkpoints
    second = train(cfg, ArrayPatches(data))
    assert [r["loss"] for r in second.log] == [r["loss"] for r in full.log]  # bit-identical
    for a, b in zip(second.teacher.state_dict().values(), full.teacher.state_dict().values()):
        assert torch.equal(a, b)
    again = train(cfg.replace(data=str(tmp_path / "nowhere")))  # finished: loads, needs no data
    assert [r["loss"] for r in again.log] == [r["loss"] for r in full.log]
    logged = read_log(tmp_path / "split")
    assert list(logged["step"]) == [1, 2, 3, 4, 5, 6]
    assert {"loss", "lr", "wd", "momentum", "teacher_temp", "epoch"} <= set(logged.columns)


def test_losses_do_not_depend_on_the_number_of_data_workers(tmp_path):
    torch.set_num_threads(1)
    data = _images()
    cfg = make_config(1, **(TINY | {"epochs": 1}))
    a = train(cfg.replace(out_dir=str(tmp_path / "a"), num_workers=0), ArrayPatches(data))
    b = train(cfg.replace(out_dir=str(tmp_path / "b"), num_workers=2), ArrayPatches(data))
    assert [r["loss"] for r in a.log] == [r["loss"] for r in b.log]


def test_resume_from_a_mid_run_checkpoint_drops_later_log_rows(tmp_path):
    torch.set_num_threads(1)
    data = _images()
    full = train(make_config(1, out_dir=str(tmp_path / "full"), **TINY), ArrayPatches(data))
    cfg = make_config(1, out_dir=str(tmp_path / "run"), **(TINY | {"checkpoint_every": 2}))
    train(cfg.replace(max_steps=2), ArrayPatches(data))
    # simulate a crash after step 3 whose log rows were written but whose checkpoint was not
    rows = read_log(tmp_path / "run").to_dict("records") + [{"step": 3, "loss": 0.0}]
    (tmp_path / "run" / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    resumed = train(cfg, ArrayPatches(data))
    assert [r["loss"] for r in resumed.log] == [r["loss"] for r in full.log]


def test_checkpoint_is_in_released_format_and_loads_into_the_models(tmp_path):
    from hipt.models import ViT256, load_model
    from hipt.models.weights import load_backbone, load_checkpoint

    cfg = make_config(1, out_dir=str(tmp_path), **TINY)
    result = train(cfg.replace(max_steps=1), ArrayPatches(_images()))
    ckpt = load_checkpoint(result.checkpoint)  # weights_only=True with argparse.Namespace allowed
    assert {"student", "teacher", "optimizer", "epoch", "args", "dino_loss"} <= set(ckpt)
    assert all(k.startswith(("backbone.", "head.")) for k in ckpt["teacher"])
    assert all(k.startswith("module.") for k in ckpt["student"])
    assert {"head.last_layer.weight_g", "head.last_layer.weight_v", "head.mlp.0.weight"} <= set(ckpt["teacher"])
    assert ckpt["args"].out_dim == 64
    model = load_backbone(ViT256(embed_dim=32, depth=2, num_heads=2), result.checkpoint)
    x = torch.randn(2, 3, 64, 64)
    assert torch.allclose(model.eval()(x), result.teacher(x), atol=1e-6)
    rebuilt = load_model(result.checkpoint)
    assert torch.allclose(rebuilt(x), result.teacher(x), atol=1e-6)


def test_continued_pretraining_starts_from_a_checkpoint(tmp_path):
    cfg = make_config(1, out_dir=str(tmp_path / "a"), **TINY)
    first = train(cfg.replace(max_steps=2), ArrayPatches(_images()))
    cont = make_config(1, out_dir=str(tmp_path / "b"), init_weights=str(first.checkpoint), **TINY)
    second = train(cont.replace(max_steps=0, epochs=1), ArrayPatches(_images()))  # zero steps: just the init
    for k, v in first.student.state_dict().items():
        assert torch.equal(second.student.state_dict()[k], v)


def test_stage2_trains_on_feature_grids(tmp_path):
    feats = np.random.default_rng(0).standard_normal((10, 16, 24)).astype(np.float32)
    cfg = make_config(2, out_dir=str(tmp_path), **{
        "arch": "vit4k_tiny", "input_embed_dim": 24, "embed_dim": 32, "depth": 1, "num_heads": 2, "out_dim": 64,
        "head_hidden_dim": 32, "head_bottleneck_dim": 16, "global_crop_size": 3, "local_crop_size": 2,
        "local_crops_number": 2, "batch_size_per_gpu": 4, "epochs": 2, "steps_per_epoch": 2, "progress": False,
    })
    result = train(cfg, FeatureGrids.from_array(feats))
    assert len(result.log) == 4 and all(np.isfinite(r["loss"]) for r in result.log)
    assert result.teacher(torch.randn(2, 24, 4, 4)).shape == (2, 32)


# ------------------------------------------------------------------------------------------ DDP


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, out_dir: str, overrides: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    train(make_config(1, out_dir=out_dir, **overrides), ArrayPatches(_images()))


def test_ddp_step_equals_single_process_on_the_same_global_batch(tmp_path):
    import torch.multiprocessing as mp

    common = TINY | {"drop_path_rate": 0.0, "max_steps": 1, "warmup_epochs": 0, "freeze_last_layer": 0}
    single = train(make_config(1, out_dir=str(tmp_path / "single"), **(common | {"batch_size_per_gpu": 4})),
                   ArrayPatches(_images()))
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path / "ddp"), common | {"batch_size_per_gpu": 2}),
             nprocs=2, join=True)
    ddp = torch.load(tmp_path / "ddp" / "checkpoint.pth", weights_only=False)
    one = torch.load(tmp_path / "single" / "checkpoint.pth", weights_only=False)
    init = make_config(1, **common)
    from hipt.pretrain.trainer import build_backbone

    torch.manual_seed(init.seed)
    start = build_backbone(init).state_dict()
    moved = 0
    for key in ("student", "teacher"):
        for k, v in one[key].items():
            assert torch.allclose(ddp[key][k], v, atol=1e-6, rtol=1e-5), (key, k)
            name = k.removeprefix("module.").removeprefix("backbone.")
            moved += key == "student" and k.startswith("module.backbone.") and not torch.equal(v, start[name])
    assert moved > 10  # the step did change the weights (the comparison is not vacuous)
    assert torch.allclose(ddp["dino_loss"]["center"], one["dino_loss"]["center"], atol=1e-7)
    assert abs(read_log(tmp_path / "ddp")["loss"][0] - single.log[0]["loss"]) < 1e-5
    assert len(ddp["rng"]["per_rank"]) == 2


# ------------------------------------------------------------------------------------------ CLI


def test_cli_help_has_tuning_advice(capsys):
    from hipt.cli import main

    with pytest.raises(SystemExit):
        main(["pretrain", "--help"])
    out = capsys.readouterr().out
    assert "ln(out_dim)" in out and "--teacher-temp" in out and "--batch-size-per-gpu" in out


def test_cli_trains_on_a_folder_of_images(tmp_path):
    from PIL import Image

    from hipt.cli import main

    for i, im in enumerate(_images(8)):
        Image.fromarray(im).save(tmp_path / f"{i}.png")
    args = ["pretrain", "--stage", "1", "--data", str(tmp_path), "--out-dir", str(tmp_path / "run"),
            "--arch", "vit256_tiny", "--embed-dim", "32", "--depth", "1", "--num-heads", "2", "--out-dim", "64",
            "--head-hidden-dim", "32", "--head-bottleneck-dim", "16", "--global-crop-size", "32",
            "--local-crop-size", "16", "--local-crops-number", "2", "--batch-size-per-gpu", "4", "--epochs", "1",
            "--no-progress", "--global-crops-scale", "0.5", "1.0"]
    assert main(args) == 0
    assert (tmp_path / "run" / "checkpoint.pth").is_file() and (tmp_path / "run" / "log.jsonl").is_file()
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pth", weights_only=False)
    assert tuple(ckpt["args"].global_crops_scale) == (0.5, 1.0) and ckpt["step"] == 2


def test_pretrained_trains_once_then_loads(tmp_path, monkeypatch):
    from hipt.book.zoo import pretrained

    monkeypatch.setenv("HIPT_CACHE", str(tmp_path / "cache"))
    kw = TINY | {"n_phantom": 8, "patch_size": 48, "epochs": 1, "progress": False}
    first = pretrained(1, **kw)
    assert (first.pretrain_dir / "teacher.pth").is_file() and (first.pretrain_dir / "checkpoint.pth").is_file()
    assert first.pretrain_dir.parent == tmp_path / "cache" / "models"
    mtime = (first.pretrain_dir / "teacher.pth").stat().st_mtime
    second = pretrained(1, **kw)  # loaded, not retrained
    assert (second.pretrain_dir / "teacher.pth").stat().st_mtime == mtime
    x = torch.randn(2, 3, 64, 64)
    assert torch.allclose(first(x), second(x), atol=1e-6) and not second.training
    with pytest.raises(ValueError, match="tag"):
        pretrained(2, dataset=FeatureGrids.from_array(np.zeros((2, 4, 8), np.float32)))


def test_stage2_cache_key_follows_its_data(tmp_path, monkeypatch):
    """The book's stage-2 model is keyed by what its phantom data are made of: the stage-1 model and the
    zoo preset's region and patch sizes (a cache from another geometry is never reused)."""
    import dataclasses

    from hipt.book import zoo
    from hipt.book.zoo import model_dir

    monkeypatch.setenv("HIPT_CACHE", str(tmp_path / "cache"))
    cfg2 = make_config(2, "cpu-tiny")
    before, stage1 = model_dir(cfg2), model_dir(make_config(1, "cpu-tiny"))
    assert before == model_dir(make_config(2, "cpu-tiny"))  # deterministic
    other = dataclasses.replace(zoo.PRESETS["cpu"], region_size=2048, patch_size=256)
    monkeypatch.setitem(zoo.PRESETS, "cpu", other)
    assert model_dir(cfg2) != before
    assert model_dir(make_config(1, "cpu-tiny")) == stage1  # stage 1 does not depend on it
