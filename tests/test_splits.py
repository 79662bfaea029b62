"""Subject-level splits: disjoint, deterministic, test only from labeled subjects."""

from __future__ import annotations

import numpy as np
import pytest

from ssmtl.data.cache import SliceCache
from ssmtl.data.cache_writer import CacheWriter
from ssmtl.api.errors import SsmtlError
from ssmtl.data.splits import choose_labeled, make_split, split_cache, volumes_of

SUBJECTS = [f"s{i:02d}" for i in range(10)]
LABELED = {f"s{i:02d}" for i in range(8)}  # s08, s09 unlabeled


def test_partition_is_disjoint_and_complete():
    split = make_split(SUBJECTS, LABELED, seed=3, test_fraction=0.3, val_fraction=0.2)
    parts = [set(split[k]) for k in ("train", "val", "test", "unlabeled")]
    assert sum(len(p) for p in parts) == len(SUBJECTS)
    assert set().union(*parts) == set(SUBJECTS)
    assert len(split["test"]) == 2  # round(0.3 * 8) = 2
    assert len(split["val"]) == 1  # floor(0.2 * 8) = 1
    assert split["unlabeled"] == ["s08", "s09"]


def test_test_and_val_only_from_labeled():
    for seed in range(20):
        split = make_split(SUBJECTS, LABELED, seed=seed, val_fraction=0.25)
        assert set(split["test"]) | set(split["val"]) <= LABELED
        assert set(split["train"]) <= LABELED


def test_deterministic_and_order_independent():
    a = make_split(SUBJECTS, LABELED, seed=7)
    b = make_split(list(reversed(SUBJECTS)), set(LABELED), seed=7)
    assert a == b
    tests = {tuple(make_split(SUBJECTS, LABELED, seed=s)["test"]) for s in range(10)}
    assert len(tests) > 1  # the seed matters


def test_min_test_and_too_few_subjects():
    split = make_split(["a", "b", "c"], {"a", "b", "c"}, seed=0, test_fraction=0.1)
    assert len(split["test"]) == 1  # min_test
    with pytest.raises(SsmtlError, match="cannot be split"):
        make_split(["a"], {"a"}, seed=0)


def test_preset_takes_precedence():
    preset = {"s01": "test", "s02": "val"}
    split = make_split(SUBJECTS, LABELED, seed=0, preset=preset)
    assert split["test"] == ["s01"] and split["val"] == ["s02"]
    assert "s01" not in split["train"]
    with pytest.raises(SsmtlError, match="unlabeled"):
        make_split(SUBJECTS, LABELED, seed=0, preset={"s09": "test"})


def test_choose_labeled_deterministic_nested_and_bounded():
    pool = [f"s{i}" for i in range(6)]
    assert choose_labeled(pool, 3, seed=1) == choose_labeled(list(reversed(pool)), 3, seed=1)
    assert set(choose_labeled(pool, 2, seed=1)) <= set(choose_labeled(pool, 4, seed=1))
    assert len(choose_labeled(pool, 6, seed=1)) == 6
    with pytest.raises(SsmtlError, match=r"asked for 7 .* only 6"):
        choose_labeled(pool, 7, seed=1)


def _cache(path, frames: dict[str, int], unlabeled=(), splits: dict[str, str] | None = None) -> SliceCache:
    """A cache with ``frames[subject]`` volumes per subject (like ED/ES frames)."""
    image = np.zeros((2, 8, 8), np.float32)
    label = np.zeros((2, 8, 8), np.uint8)
    with CacheWriter(path, force=False, attrs={"class_names": {"0": "background", "1": "fg"}}) as writer:
        for subject, n in frames.items():
            for frame in range(n):
                attrs = {"spacing": np.array([1.0, 1.0, 1.0]), "frame": frame}
                if splits and subject in splits:
                    attrs["split"] = splits[subject]
                writer.add_volume(subject, image, None if subject in unlabeled else label, attrs)
    return SliceCache(path)


def test_volumes_of_one_subject_stay_together(tmp_path):
    frames = {f"p{i}": 2 for i in range(7)}
    cache = _cache(tmp_path / "c.h5", frames, unlabeled={"p6"})
    assert len(cache.volumes) == 14
    split = split_cache(cache, seed=0)
    assert split["source"] == "random"
    assert split["unlabeled"] == ["p6"]
    owner = {}
    for part in ("train", "val", "test", "unlabeled"):
        for index in volumes_of(cache, split[part], labeled_only=False):
            owner.setdefault(cache.volumes[index].subject, set()).add(part)
    assert all(len(parts) == 1 for parts in owner.values())
    assert len(volumes_of(cache, split["test"])) == 2 * len(split["test"])


def test_split_stored_in_cache_takes_precedence(tmp_path):
    frames = {f"p{i}": 2 for i in range(5)}
    cache = _cache(tmp_path / "c.h5", frames, splits={"p3": "test", "p4": "val"})
    split = split_cache(cache, seed=0)
    assert split["source"] == "cache"
    assert split["test"] == ["p3"] and split["val"] == ["p4"]
    assert split["train"] == ["p0", "p1", "p2"]


def test_conflicting_stored_split_is_an_error(tmp_path):
    path = tmp_path / "c.h5"
    image = np.zeros((2, 8, 8), np.float32)
    with CacheWriter(path, force=False, attrs={"class_names": {"0": "background", "1": "fg"}}) as writer:
        writer.add_volume("p0", image, image.astype(np.uint8), {"spacing": np.ones(3), "split": "train"})
        writer.add_volume("p0", image, image.astype(np.uint8), {"spacing": np.ones(3), "split": "test"})
        writer.add_volume("p1", image, image.astype(np.uint8), {"spacing": np.ones(3)})
    with pytest.raises(SsmtlError, match="p0"):
        split_cache(SliceCache(path), seed=0)
