"""Fine-tuning and 3D evaluation end to end on a tiny synthetic cache."""

from __future__ import annotations

from ssmtl.host.registry import get_registry

import io
import json
import shutil

import numpy as np
import pytest
import torch
from rich.console import Console
from safetensors.torch import load_file

from ssmtl.data.cache_writer import CacheWriter
from ssmtl.api.errors import SsmtlError
from ssmtl.downstream.evaluate import evaluate_run, render_comparison_table, render_eval_table
from ssmtl.training.export import write_export
from ssmtl.downstream.config import FinetuneConfig
from ssmtl.downstream.finetune import run_finetune
from ssmtl.plugins.networks.unet import UNet, UNetConfig
from ssmtl.host.registry import build_registry

CLASS_NAMES = {"0": "background", "1": "square", "2": "disc"}
SUBJECTS = [f"sub{i}" for i in range(6)]
TINY = UNetConfig(base_channels=4, depth=2)


@pytest.fixture(scope="module")
def registry():
    return build_registry(external=False, builtins=["ssmtl.plugins.heads.segmentation", "ssmtl.plugins.networks.unet", "ssmtl.plugins.defaults"])


def _subject_volume(i: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(8, 32, 32): a bright square (class 1) and a dim disc (class 2) on noise."""
    image = rng.normal(0.0, 0.1, (8, 32, 32)).astype(np.float32)
    label = np.zeros((8, 32, 32), np.uint8)
    top, left = 3 + i % 3, 4 + i % 4
    label[1:7, top:top + 9, left:left + 9] = 1
    yy, xx = np.mgrid[:32, :32]
    disc = (yy - 22) ** 2 + (xx - 22 + i % 2) ** 2 <= 5 ** 2
    label[2:6][:, disc] = 2
    image[label == 1] += 2.0
    image[label == 2] += 1.0
    return image, label


def _write_cache(path, subjects=SUBJECTS, labeled=True):
    rng = np.random.default_rng(0)
    with CacheWriter(path, force=False, attrs={"class_names": CLASS_NAMES, "dataset": "test"}) as writer:
        for i, subject in enumerate(subjects):
            image, label = _subject_volume(i, rng)
            attrs = {"spacing": np.array([2.0, 1.0, 1.0]), "modality": "ct", "source": "synthetic"}
            writer.add_volume(subject, image, label if labeled else None, attrs)
    return path


@pytest.fixture(scope="module")
def cache_path(tmp_path_factory):
    return _write_cache(tmp_path_factory.mktemp("data") / "cache.h5")


def _config(cache_path, out, **overrides) -> FinetuneConfig:
    train = dict(steps=30, batch_size=8, lr=3e-3)
    train.update({k: overrides.pop(k) for k in list(overrides) if k in ("steps", "batch_size", "lr", "mixed_precision")})
    values = dict(data=cache_path, out=out, model=TINY, labeled_volumes=2, train=train)
    values.update(overrides)
    return FinetuneConfig.model_validate(values, context={"registry": get_registry()})


@pytest.fixture(scope="module")
def scratch_run(cache_path, registry, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "scratch"
    summary = run_finetune(_config(cache_path, out), registry=registry, progress=False)
    return out, summary


def test_run_files_and_split(scratch_run):
    out, summary = scratch_run
    for name in ("config.json", "split.json", "metrics.jsonl", "model.safetensors", "run.json"):
        assert (out / name).is_file(), name
    assert json.loads((out / "config.json").read_text())["head"] == "segmentation"  # the default, resolved
    split = json.loads((out / "split.json").read_text())
    assert set(split["train"]).isdisjoint(split["test"])
    assert len(split["test"]) == 2  # round(0.3 * 6)
    assert len(split["labeled"]) == 2 and set(split["labeled"]) <= set(split["train"])
    assert split["split_seed"] == 0
    assert summary["labeled_subjects"] == split["labeled"]
    keys = load_file(out / "model.safetensors").keys()
    assert any(k.startswith("network.encoder.") for k in keys)
    assert any(k.startswith("network.decoder.") for k in keys)
    assert any(k.startswith("head.") for k in keys)
    run = json.loads((out / "run.json").read_text())
    assert run["init"] == "none" and run["num_classes"] == 3
    assert run["class_names"] == CLASS_NAMES


def test_loss_decreases(scratch_run):
    out, _ = scratch_run
    losses = [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert len(losses) == 30
    assert np.mean(losses[-5:]) < np.mean(losses[:5])


def test_evaluate_writes_eval_json(scratch_run, registry):
    out, _ = scratch_run
    results = evaluate_run(out, registry=registry)
    saved = json.loads((out / "eval.json").read_text())
    assert saved == results
    assert 0.0 <= results["mean_dice"] <= 1.0
    assert set(results["per_class"]) == {"square", "disc"}
    split = json.loads((out / "split.json").read_text())
    assert results["test_subjects"] == split["test"]
    assert [v["subject"] for v in results["per_volume"]] == split["test"]
    assert results["labeled_volumes"] == 2
    console = Console(file=io.StringIO(), width=120)
    console.print(render_eval_table(results))
    console.print(render_comparison_table({"scratch": results, "again": results}))
    text = console.file.getvalue()
    assert "square" in text and "mean" in text and "not comparable" not in text


def test_a_model_that_predicts_nothing_scores_finite_hd95_and_counts_misses(scratch_run, registry, tmp_path):
    from safetensors.torch import save_file

    out, _ = scratch_run
    silent = tmp_path / "silent"
    shutil.copytree(out, silent)
    weights = load_file(silent / "model.safetensors")
    weights["head.classifier.weight"].zero_()
    weights["head.classifier.bias"].copy_(torch.tensor([10.0, 0.0, 0.0]))  # background everywhere
    save_file(weights, silent / "model.safetensors")
    results = evaluate_run(silent, registry=registry)
    diagonal = float(np.sqrt(8 ** 2 * 2.0 ** 2 + 32 ** 2 + 32 ** 2))  # (8, 32, 32) voxels of (2, 1, 1) mm
    n = len(results["test_subjects"])
    for name in ("square", "disc"):
        assert results["per_class"][name]["dice"] == 0.0
        assert results["per_class"][name]["hd95"] == pytest.approx(diagonal)
        assert results["per_class"][name]["missed"] == n and results["per_class"][name]["false_positive"] == 0
    assert results["mean_hd95"] == pytest.approx(diagonal)
    assert all(v["missed"] == ["square", "disc"] for v in results["per_volume"])
    console = Console(file=io.StringIO(), width=160)
    console.print(render_eval_table(results))
    assert "missed" in console.file.getvalue()


def test_evaluate_on_another_cache_needs_the_test_subjects(scratch_run, registry, tmp_path, cache_path):
    out, _ = scratch_run
    copy = tmp_path / "copy.h5"
    shutil.copy(cache_path, copy)
    assert evaluate_run(out, copy, registry=registry)["data"] == str(copy)
    split = json.loads((out / "split.json").read_text())
    others = _write_cache(tmp_path / "others.h5", subjects=[s for s in SUBJECTS if s != split["test"][0]])
    with pytest.raises(SsmtlError, match="others.h5: the cache's data fingerprint .* differs from"):
        evaluate_run(out, others, registry=registry)  # other data: refused before anything is scored


def _export(run_dir, seed=1) -> UNet:
    torch.manual_seed(seed)
    network = UNet(TINY)
    write_export(run_dir, network, {
        "tasks": {"contrastive": {"name": "contrastive"}},
        "steps": 10,
        "data": {"path": "pretrain.h5", "fingerprint": "abc123", "volumes": ["sub0"]},
    })
    return network


def test_init_from_export_loads_its_weights(cache_path, registry, tmp_path):
    network = _export(tmp_path / "pretrain")
    out = tmp_path / "ft"
    run_finetune(
        _config(cache_path, out, init=str(tmp_path / "pretrain"), model=None, steps=1, lr=1e-12),
        registry=registry, progress=False,
    )
    saved = load_file(out / "model.safetensors")
    for name, param in network.named_parameters():
        torch.testing.assert_close(saved[f"network.{name}"], param.detach(), rtol=0, atol=1e-6)
    run = json.loads((out / "run.json").read_text())
    assert run["init_manifest"]["tasks"] == {"contrastive": {"name": "contrastive"}}
    assert run["init_manifest"]["data"]["fingerprint"] == "abc123"
    assert run["model"] == TINY.model_dump(mode="json")


def test_init_parts_encoder_loads_the_encoder_and_a_seeded_random_decoder(cache_path, registry, tmp_path):
    network = _export(tmp_path / "pretrain")
    saved = {}
    for name in ("a", "b"):
        out = tmp_path / name
        run_finetune(
            _config(cache_path, out, init=str(tmp_path / "pretrain"), model=None, steps=1, lr=1e-12, init_parts="encoder", seed=3),
            registry=registry, progress=False,
        )
        saved[name] = load_file(out / "model.safetensors")
        assert json.loads((out / "run.json").read_text())["init_parts"] == "encoder"
    for key, param in network.encoder.named_parameters():
        torch.testing.assert_close(saved["a"][f"network.encoder.{key}"], param.detach(), rtol=0, atol=1e-6)
    decoder = dict(network.decoder.named_parameters())
    conv_keys = [k for k, p in decoder.items() if p.ndim == 4]
    assert conv_keys
    for key in conv_keys:  # not the export's decoder, but the same random one for the same seed
        assert not torch.allclose(saved["a"][f"network.decoder.{key}"], decoder[key].detach())
        torch.testing.assert_close(saved["a"][f"network.decoder.{key}"], saved["b"][f"network.decoder.{key}"], rtol=0, atol=0)


def test_mismatching_export_fails(cache_path, registry, tmp_path):
    _export(tmp_path / "pretrain")
    manifest_path = tmp_path / "pretrain" / "export" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["model"]["base_channels"] = 8
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(SsmtlError, match="do not match"):
        run_finetune(_config(cache_path, tmp_path / "ft", init=str(tmp_path / "pretrain"), model=None, steps=1), registry=registry, progress=False)


def test_model_options_conflicting_with_export_fail(cache_path, registry, tmp_path):
    _export(tmp_path / "pretrain")
    wide = UNetConfig(base_channels=8, depth=2)
    with pytest.raises(SsmtlError, match="model"):
        run_finetune(_config(cache_path, tmp_path / "ft", init=str(tmp_path / "pretrain"), model=wide, steps=1), registry=registry, progress=False)


def test_too_many_labeled_volumes_fails_before_creating_the_run(cache_path, registry, tmp_path):
    out = tmp_path / "ft"
    with pytest.raises(SsmtlError, match=r"asked for 5 .* only 4"):
        run_finetune(_config(cache_path, out, labeled_volumes=5), registry=registry, progress=False)
    assert not out.exists()


def test_cache_without_labels_fails(registry, tmp_path):
    path = _write_cache(tmp_path / "unlabeled.h5", labeled=False)
    with pytest.raises(SsmtlError, match="no labeled volumes"):
        run_finetune(_config(path, tmp_path / "ft"), registry=registry, progress=False)


def test_head_defaults_to_the_plugins_default_head(registry, tmp_path):
    config = _config("data.h5", tmp_path)
    assert config.head is None
    assert config.with_defaults(registry).head == registry.defaults.head == "segmentation"
    assert _config("data.h5", tmp_path, head="mine").with_defaults(registry).head == "mine"
    with pytest.raises(SsmtlError, match="no default head"):
        config.with_defaults(build_registry(external=False, builtins=["ssmtl.plugins.heads.segmentation"]))


def test_unknown_head_option_fails(cache_path, registry, tmp_path):
    with pytest.raises(SsmtlError, match="dice_wieght"):
        run_finetune(_config(cache_path, tmp_path / "ft", head_options={"dice_wieght": 2}), registry=registry, progress=False)


def test_segmentation_head_loss_and_predict(registry):
    from ssmtl.plugins.heads.segmentation import SegmentationConfig, soft_dice_loss

    head = registry.head("segmentation").factory(SegmentationConfig(), UNet(TINY).info, 3)
    target = torch.zeros(2, 8, 8, dtype=torch.long)
    target[:, 2:5, 2:5] = 1  # class 2 absent: left out of the Dice mean
    perfect = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float() * 50
    assert soft_dice_loss(perfect, target, 1e-5).item() == pytest.approx(0.0, abs=1e-4)
    assert head.loss(perfect, target).item() == pytest.approx(0.0, abs=1e-4)
    assert torch.equal(head.predict(perfect), target)
    assert head.loss(torch.zeros(2, 3, 8, 8), target).item() > 1.0
    logits = head(torch.randn(2, TINY.base_channels, 8, 8))
    assert logits.shape == (2, 3, 8, 8)


def test_segmentation_head_hidden_layer_then_linear_classifier(registry):
    from torch.nn import functional as F

    from ssmtl.plugins.heads.segmentation import SegmentationConfig

    info = UNet(TINY).info  # 4 decoder channels
    head = registry.head("segmentation").factory(SegmentationConfig(), info, 7)
    assert head.config.hidden_channels == 32
    conv, norm = head.hidden[0], head.hidden[1]
    assert conv.weight.shape == (32, 4, 3, 3) and head.classifier.weight.shape == (7, 32, 1, 1)
    head.eval()
    x = torch.randn(2, 4, 8, 8)
    hidden = F.relu(F.batch_norm(F.conv2d(x, conv.weight, padding=1), norm.running_mean, norm.running_var, norm.weight, norm.bias))
    torch.testing.assert_close(head(x), F.conv2d(hidden, head.classifier.weight, head.classifier.bias))
    linear = registry.head("segmentation").factory(SegmentationConfig(hidden_channels=0), info, 7)
    assert linear.classifier.weight.shape == (7, 4, 1, 1)
    torch.testing.assert_close(linear(x), F.conv2d(x, linear.classifier.weight, linear.classifier.bias))


def test_augment_pair_moves_image_and_label_together():
    from ssmtl.training.augment import AugmentConfig
    from ssmtl.downstream.data import augment_pair

    torch.manual_seed(0)
    label = torch.zeros(4, 32, 32, dtype=torch.long)
    label[:, 8:20, 10:24] = 1
    label[:, 22:28, 4:12] = 2
    image = label[:, None].float()
    spatial_only = AugmentConfig(flip=0.5, rotate=30, crop_scale=(0.7, 1.0), translate=0.1,
                                 contrast=0, brightness=0, gamma=(1, 1), blur=0, noise=0)
    warped_image, warped_label = augment_pair(image, label, spatial_only)
    assert warped_label.dtype == torch.long
    assert set(warped_label.unique().tolist()) <= {0, 1, 2}
    agreement = (warped_image[:, 0].round().long() == warped_label).float().mean().item()
    assert agreement > 0.97  # only bilinear edge pixels may differ


def test_slice_weights_match_the_hand_computed_mixture():
    from ssmtl.downstream.data import slice_weights

    presence = np.array([  # background, class 1, class 2
        [1, 0, 0],  # background only
        [1, 1, 0],
        [1, 1, 1],
        [1, 0, 1],
    ], dtype=bool)
    # class first: class 1 or 2 with 1/2 each, then one of its 2 slices: 0, 1/4, 1/2, 1/4
    expected = 0.5 * np.full(4, 0.25) + 0.5 * np.array([0.0, 0.25, 0.5, 0.25])
    np.testing.assert_allclose(slice_weights(presence, 0.5), expected)
    np.testing.assert_allclose(slice_weights(presence, 0.0), np.full(4, 0.25))
    np.testing.assert_allclose(slice_weights(presence, 1.0), [0.0, 0.25, 0.5, 0.25])
    # a class no slice shows is not drawn; no foreground at all: uniform
    np.testing.assert_allclose(slice_weights(np.array([[1, 0, 1], [1, 0, 0]], dtype=bool), 1.0), [1.0, 0.0])
    np.testing.assert_allclose(slice_weights(np.array([[1, 0], [1, 0]], dtype=bool), 0.7), [0.5, 0.5])


def test_class_balanced_loader_oversamples_the_slices_with_small_structures(cache_path):
    from ssmtl.data.cache import SliceCache
    from ssmtl.downstream.data import LabeledSliceDataset, make_loader

    dataset = LabeledSliceDataset(SliceCache(cache_path), [0, 1])
    presence = dataset.class_presence()
    one_volume = np.zeros((8, 3), dtype=bool)
    one_volume[:, 0] = True
    one_volume[1:7, 1] = True  # the square: slices 1-6
    one_volume[2:6, 2] = True  # the disc: slices 2-5
    assert np.array_equal(presence, np.concatenate([one_volume, one_volume]))
    counts = {}
    for balance in (0.0, 1.0):
        loader = make_loader(dataset, batches=400, batch_size=16, seed=0, world=1, class_balance=balance)
        labels = torch.cat([lab for _, lab in loader])
        assert labels.shape == (400 * 16, 32, 32)
        counts[balance] = (labels.flatten(1) == 2).any(dim=1).float().mean().item()
    assert counts[0.0] == pytest.approx(8 / 16, abs=0.03)  # uniform: 4 of 8 slices show the disc
    assert counts[1.0] == pytest.approx(0.5 * 4 / 6 + 0.5, abs=0.03)  # square first: 4 of its 6 slices; disc first: all
