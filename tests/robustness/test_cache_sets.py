"""#27 class 9: sets that are not one build. ``cache verify`` compares the shards' build options and
their contents' digests, not only their subject names: shards of builds with another phantom seed,
``--ct-window``, ``--split-seed``, ``--test-fraction`` or number of shards are not one build; a
cache copied under another name is refused when the copies are opened together (each subject would
count twice), naming both paths."""

from __future__ import annotations

import shutil

import pytest
from robustness.harness import Case, assert_all_held, run_cases, ssmtl_cli

from ssmtl.api import InputFileError
from ssmtl.data.build import build_cache
from ssmtl.data.cache import SliceCache
from ssmtl.data.cache_set import open_caches
from ssmtl.data.preprocess import PreprocessConfig
from ssmtl.data.shards import check_shards
from ssmtl.host.registry import get_registry

PHANTOM = {"subjects": 4, "size": 16, "num_slices": 4, "variability": "low"}
#: what each other build of shard 2/2 changes, and the build option a message must name
VARIANTS = {
    "seed 9": ({"dataset_options": {**PHANTOM, "seed": 9}}, "dataset_config.seed 9 (not 0)"),
    "ct window": ({"preprocess": PreprocessConfig(size=16, ct_window=(-100.0, 200.0))}, "preprocess.ct_window [-100.0, 200.0]"),
    "split seed": ({"split_seed": 7}, "split.seed 7 (not 0)"),
    "test fraction": ({"test_fraction": 0.5}, "split.test_fraction 0.5 (not 0.3)"),
    "three shards": ({"shard": (2, 3)}, "shards 3 (not 2)"),
}


def shard(out, index=1, count=2, **changes):
    options = {"dataset": "phantom", "dataset_options": dict(PHANTOM), "preprocess": PreprocessConfig(size=16),
               "out": out, "registry": get_registry(), "shard": (index, count), **changes}
    return build_cache(**options)


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    root = tmp_path_factory.mktemp("shard-builds")
    made = {"one": shard(root / "one-1.h5"), "two": shard(root / "one-2.h5", 2)}
    for name, (changes, _) in VARIANTS.items():
        made[name] = shard(root / f"{name.replace(' ', '-')}-2.h5", **{"shard": (2, 2), **changes})
    return made


def test_verify_refuses_shards_of_other_builds(builds, tmp_path):
    one = builds["one"]
    cases = [Case("one build", ssmtl_cli("cache", "verify", one, builds["two"]), exit_code=0, inputs=[one, builds["two"]])]
    for name in ("seed 9", "ct window", "split seed"):
        other = builds[name]
        cases.append(Case(name, ssmtl_cli("cache", "verify", one, other), inputs=[one, other],
                          message=f"not one build: {other} (shard 2/2) was built with {VARIANTS[name][1]}"))
    outcomes = run_cases(cases)
    assert_all_held(outcomes)
    assert "complete: 2/2 shards hold all 4 subjects once" in outcomes[0].stdout
    assert all(f"unlike {one} (shard 1/2)" in o.stderr for o in outcomes[1:])


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_every_build_option_is_compared(builds, name):
    [check] = check_shards([SliceCache(builds["one"]), SliceCache(builds[name])])
    assert not check.complete
    assert any(VARIANTS[name][1] in line for line in check.problems()), check.problems()
    # training on them together is refused too, naming both files
    with pytest.raises(InputFileError, match="not shards of one build") as info:
        open_caches([builds["one"], builds[name]])
    assert str(builds[name]) in str(info.value) and str(builds["one"]) in str(info.value)


def test_one_build_is_complete_and_trains_as_one(builds):
    [check] = check_shards([SliceCache(builds["one"]), SliceCache(builds["two"])])
    assert check.complete and check.problems() == []
    assert len(open_caches([builds["one"], builds["two"]]).volumes) == 4


def test_a_copy_under_another_name_is_refused_naming_both(builds, tmp_path):
    original = tmp_path / "site.h5"
    shutil.copy(builds["one"], original)
    shutil.copy(original, tmp_path / "site-copy.h5")
    # not a shard any more: drop the shard marks, so only the contents' digest can tell
    import h5py

    for path in (original, tmp_path / "site-copy.h5"):
        with h5py.File(path, "a") as f:
            for key in ("shard", "shard_listing", "shard_subjects"):
                del f.attrs[key]
    copy = tmp_path / "site-copy.h5"
    message = f"{copy}: holds exactly the volumes of {original}"
    cases = [
        Case("copy, cache info", ssmtl_cli("cache", "info", original, copy), message=message, inputs=[original, copy]),
        Case("copy, cache verify", ssmtl_cli("cache", "verify", original, copy), message=message, inputs=[original, copy]),
    ]
    assert_all_held(run_cases(cases))
    with pytest.raises(InputFileError, match="would count every subject twice"):
        open_caches(tmp_path)
    # a copy of one shard beside its original: said as such, with the digests compared
    twice = tmp_path / "twice.h5"
    shutil.copy(builds["one"], twice)
    [check] = check_shards([SliceCache(builds["one"]), SliceCache(builds["two"]), SliceCache(twice)])
    assert f"shard 1/2 given twice (identical copies): {builds['one']}, {twice}" in check.problems()
