"""Fine-tuning flags a pre-training that read its test subjects (self-supervised learning on the
test images is transductive): by the scan, not by its name, so a cache set's ``cache/`` prefix or a
second cache of the same scans does not hide it."""

from __future__ import annotations

import json

import pytest
from conftest import TINY_PRETRAIN

import ssmtl
from ssmtl.data.build import build_cache
from ssmtl.data.cache import SliceCache
from ssmtl.data.preprocess import PreprocessConfig
from ssmtl.downstream.finetune import _init_record
from ssmtl.downstream.config import FinetuneConfig
from ssmtl.host.registry import build_registry

SETTINGS = {k: v for k, v in TINY_PRETRAIN.items() if not k.startswith("tasks.contrastive")}  # order only
PHANTOM = {"subjects": 6, "size": 32, "num_slices": 8, "variability": "low"}


def _phantom(out, seed: int = 0, test_fraction: float = 0.3):
    return build_cache(dataset="phantom", dataset_options={**PHANTOM, "seed": seed}, preprocess=PreprocessConfig(size=32),
                       out=out, registry=build_registry(external=False), test_fraction=test_fraction)


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    root = tmp_path_factory.mktemp("transductive")
    return {"cohort": _phantom(root / "cohort.h5"),  # has test subjects
            "same_scans": _phantom(root / "same.h5", test_fraction=0),  # the cohort's scans, all training
            "other": _phantom(root / "other.h5", seed=1, test_fraction=0)}  # other virtual patients


def _saw(caches, tmp_path, data) -> list[str]:
    pre, ft = tmp_path / "pre", tmp_path / "ft"
    ssmtl.pretrain(data, pre, tasks=["order"], steps=1, batch_size=2, settings=SETTINGS, progress=False)
    ssmtl.finetune(caches["cohort"], ft, init=pre, labeled_volumes=1, steps=1, batch_size=2, progress=False)
    return json.loads((ft / "run.json").read_text())["init_saw_test_subjects"]


def test_a_cache_set_holding_the_test_scans_is_flagged(caches, tmp_path):
    cohort = SliceCache(caches["cohort"])
    test = sorted({v.subject for v in cohort.volumes if v.split == "test"})
    assert len(test) >= 2, "the cohort needs two test subjects for these tests"
    # in the set the scans are named same/phantom_ct_000 ...: a match by name finds none of them
    assert _saw(caches, tmp_path / "set", [caches["same_scans"], caches["other"]]) == test


def test_pretraining_on_other_subjects_or_the_training_split_is_not_flagged(caches, tmp_path):
    assert _saw(caches, tmp_path / "other", [caches["other"]]) == []
    assert _saw(caches, tmp_path / "own", [caches["cohort"]]) == []  # pre-training never reads the test split


def test_older_manifests_without_source_keys_still_match_by_name(caches):
    cohort = SliceCache(caches["cohort"])
    test = sorted({v.subject for v in cohort.volumes if v.split == "test"})
    config = FinetuneConfig.model_validate({"data": str(caches["cohort"]), "out": "ft"})
    old = {"data": {"volumes": [test[0], "someone_else"]}}
    assert _init_record(config, old, cohort, test)["init_saw_test_subjects"] == [test[0]]
    keyed = {"data": {"volumes": [test[0]], "source_keys": [v.source_key for v in cohort.volumes if v.subject == test[-1]]}}
    assert _init_record(config, keyed, cohort, test)["init_saw_test_subjects"] == [test[-1]]
    assert _init_record(config, None, cohort, test)["init_saw_test_subjects"] == []
