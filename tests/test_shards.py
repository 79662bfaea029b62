"""``cache build --shard I/N``: disjoint, balanced parts that together equal a full build; ``cache verify`` on a set."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from ssmtl.api.errors import InputFileError, SsmtlError
from ssmtl.cli.app import app
from ssmtl.host.registry import build_registry
from ssmtl.data.build import build_cache
from ssmtl.data.cache import SliceCache
from ssmtl.data.cache_set import open_caches
from ssmtl.data.preprocess import PreprocessConfig
from ssmtl.data.shards import parse_shard

runner = CliRunner()
PHANTOM = {"subjects": 5, "size": 32, "num_slices": 6}


def build(out, shard=None):
    return build_cache(dataset="phantom", dataset_options=PHANTOM, preprocess=PreprocessConfig(size=32), out=out,
                       registry=build_registry(external=False), test_fraction=0.4, val_fraction=0.2, shard=shard)


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    (root / "parts").mkdir()
    return {"full": build(root / "full.h5"), "parts": [build(root / "parts" / f"p{i}.h5", (i, 2)) for i in (1, 2)],
            "root": root}


def by_subject(cache: SliceCache) -> dict:
    return {v.subject: v for v in cache.volumes}


def test_shards_are_disjoint_balanced_and_equal_the_full_build(builds):
    full = SliceCache(builds["full"])
    parts = [SliceCache(p) for p in builds["parts"]]
    subjects = sorted(by_subject(full))
    # round robin over the sorted subjects
    assert sorted(by_subject(parts[0])) == subjects[0::2] and sorted(by_subject(parts[1])) == subjects[1::2]
    assert [p.attrs["shard"] for p in parts] == [[1, 2], [2, 2]]
    assert parts[0].attrs["shard_listing"] == parts[1].attrs["shard_listing"]
    assert parts[0].attrs["shard_subjects"] == subjects
    whole = by_subject(full)
    splits = set()
    for part in parts:
        for subject, meta in by_subject(part).items():
            reference = whole[subject]
            splits.add(meta.split)
            assert meta.split == reference.split, subject  # the split is the full build's
            image, label = part.read_volume(meta.index)
            ref_image, ref_label = full.read_volume(reference.index)
            np.testing.assert_array_equal(image, ref_image)
            np.testing.assert_array_equal(label, ref_label)
    assert splits == {"train", "val", "test"}  # every split is exercised


def test_verify_says_complete_or_names_what_is_missing(builds):
    parts = builds["parts"]
    ok = runner.invoke(app, ["--no-plugins", "cache", "verify", str(parts[0].parent)])
    assert ok.exit_code == 0, ok.output
    assert "complete: 2/2 shards hold all 5 subjects once" in ok.output

    half = runner.invoke(app, ["--no-plugins", "cache", "verify", str(parts[0])])
    assert half.exit_code == 2
    error = half.stderr if half.stderr else half.output
    line = [x for x in error.splitlines() if x.startswith("error:")]
    missing = sorted(by_subject(SliceCache(parts[1])))
    assert len(line) == 1 and "missing shard(s) 2/2" in line[0] and ", ".join(missing) in line[0], error

    twice = builds["root"] / "copy.h5"
    shutil.copy(parts[0], twice)
    dup = runner.invoke(app, ["--no-plugins", "cache", "verify", *map(str, parts), str(twice)])
    assert dup.exit_code == 2 and "shard 1/2 given twice" in " ".join(dup.output.split())
    # training on a duplicated shard would read its subjects twice
    with pytest.raises(InputFileError, match="holds shard 1/2 of the same build"):
        open_caches([*parts, twice])


def test_training_reads_the_shards_like_the_full_build(builds):
    union = open_caches(builds["parts"][0].parent)
    full = SliceCache(builds["full"])
    assert sorted(v.subject.split("/", 1)[1] for v in union.volumes) == sorted(v.subject for v in full.volumes)
    assert sorted((v.subject.split("/", 1)[1], v.split) for v in union.volumes) == sorted((v.subject, v.split) for v in full.volumes)


@pytest.mark.parametrize("text", ["0/2", "3/2", "x", "1/0", "2"])
def test_a_bad_shard_is_one_error_line(text, tmp_path):
    with pytest.raises(SsmtlError, match="expected I/N"):
        parse_shard(text)
    result = runner.invoke(app, ["--no-plugins", "cache", "build", "--dataset", "phantom", "--out",
                                 str(tmp_path / "x.h5"), "--shard", text])
    assert result.exit_code == 2
    error = result.stderr if result.stderr else result.output
    assert error.startswith(f"error: --shard {text}:") and len(error.strip().splitlines()) == 1, error
    assert not list(tmp_path.iterdir())


def test_parse_shard_and_too_many_shards(tmp_path):
    assert parse_shard("2/4") == (2, 4) and parse_shard(" 1 / 1 ") == (1, 1)
    with pytest.raises(SsmtlError, match="lists only 5 subject"):
        build(tmp_path / "x.h5", (6, 6))
