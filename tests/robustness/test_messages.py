"""#15 class 7: messages that said the wrong thing, or nothing. Each case now gets one line that
names what is really wrong (the path, the flag, the environment variable)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from ingest_helpers import write_dicom_series
from robustness.harness import Case, assert_all_held, run_cases, ssmtl_cli
from ssmtl.host.registry import get_registry

TINY = ["--steps", "1", "--batch-size", "2", "--set", "model.base_channels=4", "--set", "model.depth=2",
        "--set", "data.num_workers=0", "--set", "tasks.contrastive.queue_size=16"]


def test_each_message_names_the_real_problem(ssmtl_tiny_cache, tmp_path):
    cache = ssmtl_tiny_cache
    folder = tmp_path / "existing"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    one_slice = tmp_path / "one-slice"
    write_dicom_series(one_slice / "series", np.zeros((6, 5, 1), dtype=np.float32))
    out = tmp_path / "run"
    built = tmp_path / "built.h5"

    def pretrain(name, *args, message, env=None):
        return Case(name, ssmtl_cli("pretrain", "--data", cache, "--out", out, *TINY, *args), message=message,
                    inputs=[cache], absent=[out], watch=[tmp_path], env=env or {})

    cases = [
        Case("cache out is a directory", ssmtl_cli("cache", "build", "--dataset", "phantom", "--out", folder),
             message=f"{folder}: is a directory", inputs=[folder], watch=[tmp_path]),
        Case("cache out is a directory, --force", ssmtl_cli("cache", "build", "--dataset", "phantom", "--out", folder, "--force"),
             message=f"{folder}: is a directory", inputs=[folder], watch=[tmp_path]),
        Case("one-slice DICOM series", ssmtl_cli("cache", "build", "--dataset", "dicom", "--path", one_slice, "--out", built),
             message="series (a single image); a volume needs a series of 2 or more slices", inputs=[one_slice],
             absent=[built], watch=[tmp_path]),
        pretrain("task twice", "--task", "order", "--task", "order", message="--task order: given twice"),
        pretrain("task with an empty weight", "--task", "order:", message="--task 'order:'"),
        Case("value of the wrong type", ssmtl_cli("pretrain", "--steps", "many"), message="Invalid value for '--steps'"),
        Case("unknown option", ssmtl_cli("pretrain", "--stpes", "5"), message="No such option: --stpes"),
        Case("config show xml", ssmtl_cli("config", "show", "--format", "xml"), message="--format 'xml'"),
        pretrain("bad yes/no variable", message="SSMTL_DEBUG='maybe'", env={"SSMTL_DEBUG": "maybe"}),
        pretrain("bad --no-plugins variable", message="SSMTL_NO_PLUGINS='sometimes'", env={"SSMTL_NO_PLUGINS": "sometimes"}),
        pretrain("misspelt variable", message="SSMTL_TRIAN__STEPS: not a setting", env={"SSMTL_TRIAN__STEPS": "5"}),
        pretrain("bad value in a variable", message="SSMTL_TRAIN__LR='fast'", env={"SSMTL_TRAIN__LR": "fast"}),
        Case("bad fine-tuning variable", ssmtl_cli("finetune", "--data", cache, "--out", out, "--steps", "1"),
             message="SSMTL_FINETUNE__SEED='-1'", env={"SSMTL_FINETUNE__SEED": "-1"}, inputs=[cache], absent=[out]),
        Case("bad voxel cap", ssmtl_cli("cache", "info", cache), message="SSMTL_MAX_VOXELS='0'",
             env={"SSMTL_MAX_VOXELS": "0"}, inputs=[cache]),
    ]
    assert_all_held(run_cases(cases))


def test_a_flag_overrides_a_bad_variable_and_a_missing_allowed_plugin_is_reported(tmp_path):
    from ssmtl.pretraining.config import resolve_pretrain_config

    # the flag wins, so the variable's bad value is never used and never blamed
    config = resolve_pretrain_config(registry=get_registry(), flags={"train.lr": 0.5}, environ={"SSMTL_TRAIN__LR": "fast"})
    assert config.train.lr == 0.5
    from ssmtl.api import ConfigError

    with pytest.raises(ConfigError, match="environment variable SSMTL_TRAIN__STEPZ='5': .*train.stepz"):
        resolve_pretrain_config(registry=get_registry(), environ={"SSMTL_TRAIN__STEPZ": "5"})
    from ssmtl.settings.sources import check_environment

    known = {"train": None, "seed": None, "finetune": ["seed", "train"]}
    check_environment(known, {"SSMTL_TRAIN__ANYTHING": "1", "SSMTL_FINETUNE__SEED": "1", "SSMTL_DEBUG": "yes", "HOME": "/"})
    for name, needle in [("SSMTL_FINETUNE__STEPZ", "SSMTL_FINETUNE__FIELD; known: seed, train"),
                         ("SSMTL_FINETUNE", "SSMTL_FINETUNE__FIELD"), ("SSMTL_TRIAN__STEPS", "known: finetune, seed, train")]:
        with pytest.raises(ConfigError, match=re.escape(f"environment variable {name}: not a setting of ssmtl")) as info:
            check_environment(known, {name: "1"})
        assert needle in str(info.value)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSMTL_")}
    result = subprocess.run([sys.executable, "-m", "ssmtl", "plugins"], capture_output=True, text=True, timeout=120,
                            env={**env, "SSMTL_PLUGINS": "no-such-plugin", "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0 and "warning: SSMTL_PLUGINS names no-such-plugin" in result.stderr


def test_a_run_made_with_a_relative_cache_path_evaluates_from_anywhere(ssmtl_tiny_cache, tmp_path):
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir()
    elsewhere.mkdir()
    shutil.copy(ssmtl_tiny_cache, work / "data.h5")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    trained = subprocess.run(ssmtl_cli("finetune", "--data", "data.h5", "--out", "run", "--steps", "1", "--batch-size", "2",
                                       "--labeled-volumes", "1", "--set", "model.base_channels=4", "--set", "model.depth=2"),
                             cwd=work, capture_output=True, text=True, timeout=300, env=env)
    assert trained.returncode == 0, trained.stderr
    outcome = run_cases([Case("evaluate from another directory", ssmtl_cli("evaluate", work / "run"), exit_code=0,
                              cwd=elsewhere, inputs=[work / "data.h5"])])
    assert_all_held(outcome)
    assert (work / "run" / "eval.json").is_file()
