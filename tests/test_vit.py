"""ViT backbones (timm), their config checks, evaluation features and parameter groups; the ViT presets; the
engine's weight-decay schedule and per-parameter clip; branches that differ; ViT fine-tuning's layer-wise decay."""

from __future__ import annotations

import math

import numpy as np
import pytest
import timm
import torch
from timm.layers import DropPath
from timm.models.vision_transformer import VisionTransformer

from bench.cli import main
from bench.config import apply_overrides, resolve_run_config
from bench.data.views import Views
from bench.errors import ConfigError
from bench.eval.features import extract_features
from bench.eval.finetune import FinetuneConfig, _optimizer
from bench.methods import all_methods, method_class
from bench.models.backbones import BackboneConfig, build_backbone
from bench.models.vit import sincos_2d
from bench.runner import run
from bench.train.engine import build_method
from bench.train.optim import build_optimizer, clip_gradients, schedule_groups
from bench.config.optim import OptimizerConfig
from bench.config.optim import ScheduleConfig
from method_checks import forward_backward

#: a ViT of 2 blocks of 16-d tokens, patch 8 on 32 px images (16 patches + the class token)
TINY = {"name": "vit", "embed_dim": 16, "depth": 2, "num_heads": 2, "patch_size": 8}
PRESETS = sorted(name for name, cls in all_methods().items() if cls.presets)


def vit(**over) -> BackboneConfig:
    return resolve_run_config({"method": "simclr", "backbone": {**TINY, **over}}).backbone


def views(*sizes: int, batch: int = 4) -> Views:
    g = torch.Generator().manual_seed(0)
    crops = [torch.randn(batch, 3, s, s, generator=g) for s in sizes]
    return Views(crops, None, torch.zeros(batch, dtype=torch.long), torch.arange(batch))


def mae_sincos(dim: int, grid: int) -> np.ndarray:
    """Transcription of MAE's util/pos_embed.py get_2d_sincos_pos_embed (cls_token=True), np.float -> np.float64."""
    grid_h = np.arange(grid, dtype=np.float32)
    grid_w = np.arange(grid, dtype=np.float32)
    g = np.stack(np.meshgrid(grid_w, grid_h), axis=0).reshape([2, 1, grid, grid])

    def one_d(d, pos):
        omega = np.arange(d // 2, dtype=np.float64) / (d / 2.0)
        omega = 1.0 / 10000**omega
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    emb = np.concatenate([one_d(dim // 2, g[0]), one_d(dim // 2, g[1])], axis=1)
    return np.concatenate([np.zeros([1, dim]), emb], axis=0)


def test_a_vit_config_fills_its_size_and_the_image_size_of_the_first_view():
    cfg = resolve_run_config({"method": "simclr", "backbone": {"name": "vit_small", "patch_size": 4, "num_heads": 12}})
    b = cfg.backbone
    assert (b.embed_dim, b.depth, b.num_heads, b.mlp_ratio, b.image_size, b.pos_embed, b.pool) == (384, 12, 12, 4.0, 32, "learned", "cls")
    assert resolve_run_config(cfg.model_dump(mode="json")) == cfg  # the resolved config resolves to itself
    assert resolve_run_config({"method": "simclr"}).backbone.patch_size is None  # not a ViT: no ViT keys
    net = build_backbone(vit(), 3)
    assert isinstance(net.net, VisionTransformer) and net.out_dim == 16
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 16) and net(torch.randn(2, 3, 16, 16)).shape == (2, 16)  # resampled


@pytest.mark.parametrize("data, error", [
    ({"backbone": {"name": "resnet18", "patch_size": 4}}, "patch_size: only for ViT backbones, not resnet18"),
    ({"backbone": {"name": "small_cnn", "drop_path_rate": 0.1}}, "drop_path_rate: only for timm"),
    ({"backbone": {"name": "vit", "embed_dim": 64}}, "backbone vit needs embed_dim, depth and num_heads"),
    ({"backbone": {**TINY, "embed_dim": 18, "pos_embed": "sincos"}}, "sincos needs embed_dim divisible by 4"),
    ({"backbone": {**TINY, "num_heads": 3}}, "embed_dim 16 is not divisible by num_heads 3"),
    ({"backbone": {**TINY, "patch_size": 4}, "augment": "multicrop"},
     r"image sides \[14\] px are not multiples of backbone.patch_size=4 .*size_fraction=0.5"),
    ({"backbone": {**TINY, "patch_size": 5}}, r"image sides \[32\] px"),
    ({"backbone": {**TINY, "pool": "avg", "eval_features": "cls"}}, "with pool avg the norm follows the pooling"),
    ({"method": {"name": "mae"}, "backbone": "resnet18"}, "mae works on the patches of a ViT"),
    ({"method": {"name": "mocov3", "preset": "vit"}, "backbone": "resnet50"}, "mocov3's vit recipe trains a ViT"),
    ({"method": {"name": "mocov2", "preset": "vit"}}, "mocov2 has no preset 'vit'"),
])
def test_config_errors_name_the_key_and_the_fix(data, error):
    with pytest.raises(ConfigError, match=error):
        resolve_run_config({"method": "simclr", **data})


def test_sincos_position_embedding_is_mae_s_table_and_frozen():
    torch.testing.assert_close(sincos_2d(16, 4)[0].double(), torch.from_numpy(mae_sincos(16, 4)), rtol=0, atol=1e-6)
    net = build_backbone(vit(pos_embed="sincos", freeze_patch_embed=True), 3)
    torch.testing.assert_close(net.net.pos_embed[0].double(), torch.from_numpy(mae_sincos(16, 4)), rtol=0, atol=1e-6)
    net(torch.randn(2, 3, 32, 32)).sum().backward()
    frozen = {n for n, p in net.named_parameters() if not p.requires_grad}
    assert frozen == {"net.pos_embed", "net.patch_embed.proj.weight", "net.patch_embed.proj.bias"}
    assert all(p.grad is None for n, p in net.named_parameters() if n in frozen)
    opt = build_optimizer(net, OptimizerConfig(), 256)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(net.parameters())) - 3


def test_evaluation_features_follow_dino_s_probes():
    x = torch.randn(3, 3, 32, 32)
    torch.manual_seed(0)
    cls = build_backbone(vit(), 3).eval()
    for mode, dim in [("last4_cls", 64), ("cls+avg", 32), ("avg", 16)]:
        torch.manual_seed(0)
        net = build_backbone(vit(eval_features=mode, depth=4), 3).eval()
        assert net.evaluation_features(x).shape == (3, dim)
    torch.manual_seed(0)
    net = build_backbone(vit(eval_features="cls+avg"), 3).eval()
    feats = net.evaluation_features(x)
    tokens = net.net.forward_features(x)  # after the final norm
    torch.testing.assert_close(feats, torch.cat([tokens[:, 0], tokens[:, 1:].mean(1)], dim=1))
    torch.testing.assert_close(feats[:, :16], cls(x))  # same seed, same weights: the class token is the training feature
    torch.manual_seed(0)
    last4 = build_backbone(vit(eval_features="last4_cls", depth=4), 3).eval()
    torch.testing.assert_close(last4.evaluation_features(x)[:, 48:], last4(x))  # the last block's CLS comes last


def test_extract_features_uses_the_evaluation_features():
    from bench.data.registry import DatasetConfig, load_dataset

    split = load_dataset(DatasetConfig(name="shapes", n_train=20, n_test=10)).test
    net = build_backbone(vit(eval_features="last4_cls", depth=4), 3)
    feats, _ = extract_features(net, split, torch.device("cpu"))
    assert feats.shape == (10, 64) and vit(eval_features="last4_cls", depth=4).eval_dim() == 64


def test_layer_decay_scales_are_mae_s_for_12_blocks():
    net = build_backbone(vit(depth=12), 3)
    scales = net.layer_decay_scales(0.75)
    assert scales["net.cls_token"] == scales["net.pos_embed"] == scales["net.patch_embed.proj.weight"] == pytest.approx(0.023757, abs=1e-6)
    assert scales["net.blocks.0.attn.qkv.weight"] == pytest.approx(0.031676, abs=1e-6)
    assert scales["net.blocks.1.mlp.fc1.bias"] == pytest.approx(0.042235, abs=1e-6)
    assert scales["net.blocks.11.norm1.weight"] == 0.75 and scales["net.norm.weight"] == 1.0


def test_finetune_groups_decay_layers_and_keep_tokens_norms_and_biases_out_of_weight_decay():
    net = build_backbone(vit(), 3)
    head = torch.nn.Linear(16, 10)
    opt = _optimizer(net, head, FinetuneConfig(optimizer="adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.5, exclude_bias_bn=True))
    assert isinstance(opt, torch.optim.AdamW)
    setting = {id(p): (g["lr"], g["weight_decay"]) for g in opt.param_groups for p in g["params"]}
    named = dict(net.named_parameters())
    assert setting[id(named["net.cls_token"])] == (pytest.approx(1e-3 * 0.5**3), 0.0)  # depth 2: embeddings at decay^3
    assert setting[id(named["net.pos_embed"])][1] == 0.0 and setting[id(named["net.blocks.0.norm1.weight"])][1] == 0.0
    assert setting[id(named["net.blocks.1.attn.qkv.weight"])] == (pytest.approx(1e-3 * 0.5), 0.05)
    assert setting[id(named["net.norm.weight"])] == (pytest.approx(1e-3), 0.0)
    with pytest.raises(ConfigError, match="layer-wise lr decay needs a ViT"):
        _optimizer(build_backbone(BackboneConfig(width=4), 3), head, FinetuneConfig(layer_decay=0.5))


def _decay_of(method, optimizer: OptimizerConfig) -> dict[str, float]:
    opt = build_optimizer(method, optimizer, 256)
    ids = {id(p): n for n, p in method.named_parameters()}
    return {ids[id(p)]: g["weight_decay"] for g in opt.param_groups for p in g["params"]}


def test_method_groups_keep_vit_tokens_out_of_weight_decay_unless_the_preset_decays_everything():
    cfg = resolve_run_config({"method": {"name": "simclr", "projector": "8-8"}, "backbone": TINY, "optimizer": {"weight_decay": 0.1}})
    method = build_method(cfg, _splits())
    decay = _decay_of(method, cfg.optimizer)
    assert decay["backbone.net.cls_token"] == decay["backbone.net.pos_embed"] == decay["backbone.net.norm.bias"] == 0.0
    assert decay["backbone.net.blocks.0.attn.qkv.weight"] == decay["projector.0.weight"] == 0.1
    moco = resolve_run_config({"method": {"name": "mocov3", "preset": "vit", "projector": "8-8", "predictor": "8-8"}, "backbone": TINY})
    assert set(_decay_of(build_method(moco, _splits()), moco.optimizer).values()) == {0.1}  # MoCo v3: every parameter


def _splits():
    from bench.data.registry import DatasetConfig, load_dataset

    return load_dataset(DatasetConfig(name="shapes", n_train=16, n_test=10))


@pytest.mark.parametrize("method", PRESETS)
def test_every_vit_preset_resolves_on_a_vit_and_overrides_beside_it_win(method):
    data = {"method": {"name": method, "preset": "vit"}, "backbone": {**TINY, "patch_size": 2}}
    cfg = resolve_run_config(data)
    preset = method_class(method).presets["vit"]
    assert cfg.optimizer.name == preset["optimizer"]["name"] and cfg.optimizer.lr == preset["optimizer"]["lr"]
    assert cfg.schedule.warmup_epochs == preset["schedule"]["warmup_epochs"] and cfg.augment == preset["augment"]
    assert all(getattr(cfg.backbone, k) == v for k, v in preset["backbone"].items())
    assert resolve_run_config(apply_overrides(data, ["optimizer.lr=0.123", "schedule.warmup_epochs=2"])).optimizer.lr == 0.123


def test_the_dino_preset_schedules_weight_decay_and_clips_each_parameter():
    cfg = resolve_run_config({"method": {"name": "dino", "preset": "vit"}, "backbone": {**TINY, "patch_size": 2}})
    assert (cfg.optimizer.weight_decay, cfg.optimizer.weight_decay_end, cfg.train.grad_clip, cfg.train.grad_clip_mode) == (0.04, 0.4, 3.0, "per_param")
    assert (cfg.method.teacher_temp, cfg.method.norm_last_layer, cfg.backbone.drop_path_rate) == (0.07, False, 0.1)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    opt = build_optimizer(model, cfg.optimizer, 256)
    got = []
    for step in (0, 50, 100):
        schedule_groups(opt, cfg.optimizer, ScheduleConfig(warmup_epochs=0), step, 100, 10)
        got.append([g["weight_decay"] for g in opt.param_groups])
    assert got[0] == [pytest.approx(0.04), 0.0] and got[1][0] == pytest.approx(0.22) and got[2][0] == pytest.approx(0.4)
    assert got[2][1] == 0.0  # the biases and norms stay undecayed


def test_the_student_has_drop_path_and_its_teacher_copy_none():
    cfg = resolve_run_config({"method": {"name": "dino", "preset": "vit", "out_dim": 8, "projector": "8"}, "backbone": {**TINY, "patch_size": 2}})
    method = build_method(cfg, _splits())
    assert [m.drop_prob for m in method.backbone.modules() if isinstance(m, DropPath)] == [pytest.approx(0.1)] * 2  # block 2 of 2
    assert [m.drop_prob for m in method.teacher_backbone.modules() if isinstance(m, DropPath)] == [0.0, 0.0]


def test_per_parameter_clip_rescales_each_gradient_alone():
    a, b = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2))
    a.grad, b.grad = torch.tensor([3.0, 4.0, 0.0]), torch.tensor([0.3, 0.4])
    clip_gradients([a, b], 1.0, "per_param")
    assert a.grad.norm() == pytest.approx(1.0, rel=1e-5) and torch.equal(b.grad, torch.tensor([0.3, 0.4]))
    a.grad, b.grad = torch.tensor([3.0, 4.0, 0.0]), torch.tensor([0.3, 0.4])
    clip_gradients([a, b], 1.0, "global")
    assert torch.cat([a.grad, b.grad]).norm() == pytest.approx(1.0, rel=1e-5)


def test_barlow_twins_bias_lr_and_simsiam_fixed_predictor_lr():
    cfg = resolve_run_config({"method": {"name": "barlow_twins", "projector": "8-8", "bias_lr": 0.024}, "backbone": {"name": "small_cnn", "width": 4}})
    method = build_method(cfg, _splits())
    opt = build_optimizer(method, cfg.optimizer, 256)
    lr = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert all(lr[id(p)] == pytest.approx(0.2 * (0.024 if p.ndim <= 1 else 1.0)) for p in method.parameters())
    cfg = resolve_run_config({"method": {"name": "simsiam", "projector": "8-8", "predictor": "4-8", "fix_predictor_lr": True},
                              "backbone": {"name": "small_cnn", "width": 4}})
    method = build_method(cfg, _splits())
    opt = build_optimizer(method, cfg.optimizer, 256)
    schedule_groups(opt, cfg.optimizer, cfg.schedule, 999, 1000, 10)  # the last step: the cosine is near 0
    predictor = {id(p) for p in method.predictor.parameters()}
    for g in opt.param_groups:
        fixed = all(id(p) in predictor for p in g["params"])
        assert (g["lr"] == pytest.approx(0.05)) if fixed else g["lr"] < 1e-4


def test_separate_and_different_branches_train_their_own_backbone_and_head():
    splits = _splits()
    for branches in ("separate", {"second": {**TINY, "embed_dim": 8}}):
        cfg = resolve_run_config({"method": {"name": "vicreg", "projector": "8-8", "branches": branches}, "backbone": {"name": "small_cnn", "width": 4}})
        method = build_method(cfg, splits)
        first, second = method.backbone, method.branch_b[0]
        assert first is not second and method.branch_b[1][0].in_features == second.out_dim
        forward_backward(method, views(32, 32))
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.branch_b.parameters() if p.requires_grad)
    cnn = build_method(resolve_run_config({"method": {"name": "simclr", "branches": "separate"}}), splits)
    assert not torch.equal(cnn.backbone.net[0].weight, cnn.branch_b[0].net[0].weight)  # DW: its own initial weights
    da = resolve_run_config({"method": {"name": "barlow_twins", "branches": {"first": "resnet18", "second": TINY}}})
    assert da.backbone.name == "resnet18" and da.method.branches.second.image_size == 32


@pytest.mark.parametrize("method", ["byol", "mocov3", "dino", "simsiam", "swav", "mae"])
def test_methods_that_need_shared_weights_refuse_other_branches_with_the_reason(method):
    with pytest.raises(ConfigError, match=f"method.branches: {method} needs both views through one encoder: .*VICReg"):
        resolve_run_config({"method": {"name": method, "branches": "separate"}, "backbone": TINY})


def test_a_local_timm_checkpoint_loads_with_its_classifier_dropped_and_position_embedding_resampled(tmp_path):
    source = VisionTransformer(img_size=64, patch_size=8, embed_dim=16, depth=2, num_heads=2, num_classes=5)
    torch.save({"model": source.state_dict()}, tmp_path / "vit.pth")
    net = build_backbone(vit(checkpoint=tmp_path / "vit.pth"), 3)
    assert torch.equal(net.net.blocks[1].mlp.fc2.weight, source.blocks[1].mlp.fc2.weight)
    assert net.net.pos_embed.shape == (1, 17, 16)  # 8 x 8 patches resampled to 4 x 4
    with pytest.raises(ConfigError, match="does not fit the backbone"):
        build_backbone(vit(checkpoint=tmp_path / "vit.pth", depth=3), 3)
    with pytest.raises(ConfigError, match="no file"):
        build_backbone(vit(checkpoint=tmp_path / "missing.pth"), 3)


def test_convnext_builds_without_download():
    convnext = build_backbone(resolve_run_config({"method": "simclr", "backbone": "convnext_atto"}).backbone, 3)
    assert convnext(torch.randn(2, 3, 32, 32)).shape == (2, convnext.out_dim) == (2, 320)
    assert isinstance(convnext.net, timm.models.convnext.ConvNeXt)


def test_ssl_bench_list_shows_the_backbones_and_mae(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("vit_tiny", "vit_small", "vit_base", "convnext_tiny", "resnet101", "mae"))


@pytest.fixture(scope="module")
def tiny_splits():
    from bench.data.registry import DatasetConfig, load_dataset

    return load_dataset(DatasetConfig(**PRESET_DATA))


#: 28 px images: the presets' views (DINO's 12 px local crops too) are multiples of 4 px patches, 49 + 1 tokens at most
PRESET_DATA = {"name": "shapes", "n_train": 32, "n_test": 20, "image_size": 28}


@pytest.mark.parametrize("method", PRESETS)
def test_every_vit_preset_trains_and_evaluates_through_the_engine(method, tiny_splits, tmp_path):
    """Two steps of each preset (its optimizer, schedules, clip and views) on a one-block 16-d ViT of 4 px patches on
    28 px images; DINO with its 10 crops."""
    heads = {"projector": "8-8", **({"predictor": "8-8"} if method in ("byol", "mocov3") else {}),
             **({"projector": "8", "out_dim": 8} if method == "dino" else {})}
    cfg = resolve_run_config({"method": {"name": method, "preset": "vit", **heads}, "dataset": PRESET_DATA,
                              "backbone": {**TINY, "depth": 1, "patch_size": 4}, "epochs": 1, "batch_size": 16,
                              "train": {"progress": False, "checkpoint_every": 0}, "eval": {"probes": [], "knn_k": [5]}})
    report = run(cfg, tmp_path, splits=tiny_splits)
    assert report.status == "complete" and math.isfinite(report.history[0].loss)
    assert 0 <= report.metrics["knn5.top1"] <= 1
