"""Laterality is declared by the data, once: the cache's ``flip_axes``, respected by every view.

The heart is lateralised: a mirrored slice shows the left ventricle on the patient's right,
another anatomy. The built-in datasets declare no flips; a user (or a plugin) declares the
axes along which a mirrored slice is still plausible, and every random view (MoCo's two,
every pre-training task's, fine-tuning's) flips only along those.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

import h5py
import numpy as np
import pytest
import torch

from ssmtl.api import DatasetConfig, DatasetSpec, InputFileError, RawVolume, SequenceBatch, VolumeItem, VolumeSource, hookimpl
from ssmtl.data.build import build_cache
from ssmtl.data.cache import SliceCache
from ssmtl.data.cache_set import open_caches
from ssmtl.data.laterality import run_flip_axes
from ssmtl.data.preprocess import PreprocessConfig
from ssmtl.host.registry import build_registry, get_registry
from ssmtl.pretraining.config import resolve_pretrain_config
from ssmtl.pretraining.module import build_pretrain_module

SIZE = 16
#: spatial transforms off except a certain flip: a view is the slice or its mirror image
FLIP_ONLY = {"augment.flip": 1.0, "augment.rotate": 0.0, "augment.crop_scale": [1.0, 1.0], "augment.translate": 0.0,
             "augment.contrast": 0.0, "augment.brightness": 0.0, "augment.gamma": [1.0, 1.0], "augment.blur": 0.0,
             "augment.noise": 0.0}


def _phantom(out, **options):
    return build_cache(dataset="phantom", dataset_options={"subjects": 3, "size": SIZE, "num_slices": 4, **options},
                       preprocess=PreprocessConfig(size=SIZE), out=out, registry=build_registry(external=False))


@pytest.fixture(scope="module")
def columns_cache(tmp_path_factory):
    """A phantom cache whose user declared that a right-left mirror image is plausible (flip_axes [1])."""
    return _phantom(tmp_path_factory.mktemp("lat") / "columns.h5", flip_axes=[1])


# -- the declaration, in the cache -----------------------------------------------------------


def test_builtin_datasets_declare_no_flips(tiny_cache):
    cache = SliceCache(tiny_cache)
    assert cache.attrs["flip_axes"] == [] and cache.summary()["flip_axes"] == []
    assert run_flip_axes(cache) == ((), [])  # declared: nothing to say


def test_a_user_declaration_is_stored(columns_cache):
    assert SliceCache(columns_cache).attrs["flip_axes"] == [1]
    assert run_flip_axes(SliceCache(columns_cache)) == ((1,), [])


def test_cli_takes_the_declaration_and_refuses_a_bad_one(ssmtl_cli, tmp_path):
    out = tmp_path / "c.h5"
    args = ["cache", "build", "--dataset", "phantom", "--subjects", "2", "--num-slices", "4", "--size", "16", "--out", out]
    result = ssmtl_cli(*args, "--flip-axes", "[1, 0]")
    assert result.exit_code == 0, result.stderr
    assert SliceCache(out).attrs["flip_axes"] == [0, 1]
    for bad, why in (("[2]", "each axis must be 0 (rows: anterior-posterior) or 1 (columns: right-left)"),
                     ("[1, 1]", "an axis is named twice")):
        result = ssmtl_cli(*args, "--force", "--flip-axes", bad)
        assert result.exit_code == 2 and why in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


class SymmetricConfig(DatasetConfig):
    name: Literal["symmetric"] = "symmetric"


@dataclass
class Ball(VolumeItem):
    def load(self) -> RawVolume:
        return RawVolume(image=np.ones((16, 16, 3), np.float32), spacing=(1.0, 1.0, 1.0), modality="mr")


def _symmetric_plugin(declared):
    import types

    def factory(config):
        return VolumeSource(items=[Ball("s0", "generated"), Ball("s1", "generated")], class_names={0: "background"},
                            flip_axes=declared)

    plugin = types.ModuleType("symmetric_plugin")
    plugin.ssmtl_register_datasets = hookimpl(lambda: [DatasetSpec("symmetric", SymmetricConfig, factory, "Balls.")])
    plugin.ssmtl_register_datasets.__name__ = "ssmtl_register_datasets"
    return plugin


def test_a_plugin_declares_its_default_and_the_user_overrides_it(ssmtl_cli, tmp_path):
    out = tmp_path / "s.h5"
    build = ["cache", "build", "--dataset", "symmetric", "--size", "16", "--out", out, "--test-fraction", "0"]
    assert ssmtl_cli(*build, plugins=[_symmetric_plugin((1, 0))]).exit_code == 0
    assert SliceCache(out).attrs["flip_axes"] == [0, 1]
    assert ssmtl_cli(*build, "--force", "--flip-axes", "[]", plugins=[_symmetric_plugin((1,))]).exit_code == 0
    assert SliceCache(out).attrs["flip_axes"] == []
    result = ssmtl_cli(*build, "--force", plugins=[_symmetric_plugin((3,))])
    assert result.exit_code == 2 and "declared flip_axes [3]" in result.stderr


def test_an_older_cache_reads_as_no_flips_and_says_so_once(cache_factory):
    path = cache_factory([4, 4])  # written without a dataset: no flip_axes attribute, as before it existed
    axes, notes = run_flip_axes(SliceCache(path))
    assert axes == ()
    assert len(notes) == 1 and "built before caches declared flip_axes; treated as [] (no mirror flips)" in notes[0]


def _declare(path, axes):
    with h5py.File(path, "a") as f:
        f.attrs["flip_axes"] = json.dumps(axes)
    return path


def test_several_caches_allow_only_the_flips_all_of_them_allow(cache_factory):
    # different depths: caches with the same contents would be refused as copies of one another
    both = _declare(cache_factory([3], name="a.h5"), [0, 1])
    columns = _declare(cache_factory([4], name="b.h5"), [1])
    assert run_flip_axes(open_caches([both, columns]))[0] == (1,)
    axes, notes = run_flip_axes(open_caches([both, _declare(cache_factory([5], name="c.h5"), [0, 1])]))
    assert axes == (0, 1) and notes == []
    axes, notes = run_flip_axes(open_caches([both, columns]))
    assert any("declare different flip_axes" in n and "[1]" in n for n in notes), notes


def test_a_malformed_declaration_is_an_input_error(cache_factory):
    path = _declare(cache_factory([3]), [5])
    with pytest.raises(InputFileError, match="flip_axes attribute is not a list of axes"):
        run_flip_axes(SliceCache(path))


# -- every pre-training view respects it ------------------------------------------------------


def _module(flip_axes, settings):
    sets = [f"{k}={json.dumps(v)}" for k, v in settings.items()]
    config = resolve_pretrain_config(registry=get_registry(), flags={"model.base_channels": 4, "model.depth": 2},
                                tasks=["contrastive", "order"], environ={},
                                sets=["tasks.contrastive.queue_size=16", *sets])
    return build_pretrain_module(config, get_registry(), flip_axes).train()


def _asymmetric_batch(b: int = 4, k: int = 3) -> SequenceBatch:
    """Slices lit in their top-left corner only: neither mirror image equals the slice."""
    slices = torch.rand(b, k, SIZE, SIZE) * 0.1
    slices[:, :, :5, :3] += 1.0
    positions = torch.linspace(0, 1, k).repeat(b, 1)
    return SequenceBatch(slices, positions, torch.arange(b), torch.arange(k).repeat(b, 1))


def _views_after_a_step(module, batch):
    ctx = module.context(batch)
    for task in module.tasks.values():
        task(ctx)  # MoCo's two views (queries and keys), and the order task's
    return ctx.view("raw").images, {name: ctx.view(name) for name in ("sequence", "sequence_b")}


def test_the_moco_views_never_flip_a_lateralised_datasets_slices(tiny_cache):
    flip_axes, _ = run_flip_axes(SliceCache(tiny_cache))
    torch.manual_seed(0)
    raw, views = _views_after_a_step(_module(flip_axes, FLIP_ONLY), _asymmetric_batch())
    for name, view in views.items():
        torch.testing.assert_close(view.images, raw, atol=1e-5, rtol=0, msg=name)
    # with the default rotations and crops as well: no view's transform is a mirror (det < 0), over many draws
    module = _module(flip_axes, {"augment.flip": 1.0})
    for _ in range(10):
        _, views = _views_after_a_step(module, _asymmetric_batch())
        for view in views.values():
            assert (torch.det(view.theta[:, :, :2]) > 0).all()


def test_a_dataset_declaring_columns_gets_column_flips(columns_cache):
    flip_axes, _ = run_flip_axes(SliceCache(columns_cache))
    torch.manual_seed(0)
    raw, views = _views_after_a_step(_module(flip_axes, FLIP_ONLY), _asymmetric_batch())
    for name, view in views.items():
        torch.testing.assert_close(view.images, torch.flip(raw, dims=[3]), atol=1e-5, rtol=0, msg=name)
    # at the default probability, about half the views are mirrored, and only ever along the columns
    module = _module(flip_axes, {"augment.rotate": 0.0})
    dets = torch.cat([v.theta[:, :, :2] for _ in range(10) for v in _views_after_a_step(module, _asymmetric_batch())[1].values()])
    mirrored = dets[:, 0, 0] < 0
    assert 0.3 < mirrored.float().mean() < 0.7
    assert (dets[:, 1, 1] > 0).all()  # rows never


# -- runs: the note, and fine-tuning ---------------------------------------------------------


def test_pretraining_says_an_explicit_flip_is_off_and_records_the_axes(tiny_cache, tmp_path, capfd):
    import ssmtl

    settings = {"model.base_channels": 4, "model.depth": 2, "tasks.contrastive.queue_size": 16, "data.num_workers": 0}
    out = tmp_path / "pre"
    ssmtl.pretrain(tiny_cache, out, steps=1, batch_size=2, settings={**settings, "augment.flip": 0.5}, progress=False)
    err = capfd.readouterr().err
    assert err.count("augment.flip=0.5 is off: the data declares no axis") == 1, err
    assert json.loads((out / "export" / "manifest.json").read_text())["data"]["flip_axes"] == []
    ssmtl.pretrain(tiny_cache, tmp_path / "default", steps=1, batch_size=2, settings=settings, progress=False)
    assert "augment.flip" not in capfd.readouterr().err  # not asked for: nothing to say


def test_finetuning_copies_the_declaration_into_run_json(columns_cache, finetuned_run, tmp_path):
    import ssmtl

    assert json.loads((finetuned_run / "run.json").read_text())["flip_axes"] == []  # the phantom's
    out = tmp_path / "ft"
    ssmtl.finetune(columns_cache, out, labeled_volumes=1, steps=1, batch_size=2, progress=False,
                   settings={"model.base_channels": 4, "model.depth": 2})
    assert json.loads((out / "run.json").read_text())["flip_axes"] == [1]


def test_finetuning_augmentation_flips_only_allowed_axes():
    from ssmtl.downstream.data import augment_pair
    from ssmtl.training.augment_config import AugmentConfig

    config = AugmentConfig(**{k.split(".")[1]: v for k, v in FLIP_ONLY.items()})
    label = torch.zeros(2, SIZE, SIZE, dtype=torch.long)
    label[:, :5, :3] = 1
    image = label[:, None].float()
    _, kept = augment_pair(image, label, config)  # no axes: the default
    assert torch.equal(kept, label)
    _, mirrored = augment_pair(image, label, config, (1,))
    assert torch.equal(mirrored, torch.flip(label, dims=[2]))
