"""`ssmtl cache build` makes one flag per field of each dataset plugin's config model.

A tiny in-process dataset plugin (``stripes``) gets the same flags and ``--help`` as the
built-ins: its fields become options, its descriptions their help, its model converts
and validates the values.
"""

from __future__ import annotations

import subprocess
import sys
import types
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pytest
from pydantic import Field

from ssmtl.api import DatasetConfig, DatasetSpec, RawVolume, VolumeItem, VolumeSource, hookimpl
from ssmtl.data.cache import SliceCache


class StripesConfig(DatasetConfig):
    name: Literal["stripes"] = "stripes"
    count: int = Field(2, ge=1, description="Number of generated volumes.")
    levels: list[float] = Field(default_factory=lambda: [0.0, 1.0], description="Intensity of each stripe.")
    flipped: bool = Field(False, description="Stripes run along y instead of x.")
    tag: str = Field("s", description="Subject name prefix.")


@dataclass
class StripesItem(VolumeItem):
    levels: tuple[float, ...] = ()
    flipped: bool = False

    def load(self) -> RawVolume:
        image = np.resize(np.repeat(np.asarray(self.levels, np.float32), 4), 16)[:, None, None] * np.ones((16, 16, 4), np.float32)
        return RawVolume(image=image.transpose(1, 0, 2) if self.flipped else image, spacing=(1.0, 1.0, 2.0), modality="mr")


def make_stripes(config: StripesConfig) -> VolumeSource:
    # the subject names spell out what the model received, with its types
    shape = f"{'flip' if config.flipped else 'flat'}-{len(config.levels)}"
    items = [StripesItem(f"{config.tag}{i}-{shape}", "generated", tuple(config.levels), config.flipped) for i in range(config.count)]
    return VolumeSource(items=items, class_names={0: "background"})


def stripes_plugin() -> types.ModuleType:
    plugin = types.ModuleType("stripes_plugin")
    plugin.ssmtl_register_datasets = hookimpl(lambda: [DatasetSpec("stripes", StripesConfig, make_stripes, "Generated stripes.")])
    plugin.ssmtl_register_datasets.__name__ = "ssmtl_register_datasets"
    return plugin


@pytest.fixture
def build(ssmtl_cli, tmp_path):
    def run(*args):
        return ssmtl_cli("cache", "build", "--out", tmp_path / "s.h5", "--size", "16", *args, plugins=[stripes_plugin()])

    return run


def subjects(path) -> list[str]:
    return [v.subject for v in SliceCache(path).volumes]


def test_fields_become_flags_that_reach_the_model(build, tmp_path):
    result = build("--dataset", "stripes", "--count", "3", "--levels", "[0.5, 2, 4]", "--flipped", "--tag", "007-")
    assert result.exit_code == 0, result.stderr
    # int, list (YAML flow), bool flag and text that looks like a number all arrived typed
    assert subjects(tmp_path / "s.h5") == ["007-0-flip-3", "007-1-flip-3", "007-2-flip-3"]


def test_defaults_no_flag_and_set_after_the_flags(build, tmp_path):
    assert build("--dataset", "stripes", "--no-flipped", "--count", "5", "--set", "dataset.count=1").exit_code == 0
    assert subjects(tmp_path / "s.h5") == ["s0-flat-2"]


def test_the_model_validates_the_values(build):
    result = build("--dataset", "stripes", "--count", "zero")
    assert result.exit_code == 2
    assert "error: invalid stripes option stripes.count: Input should be a valid integer" in result.stderr
    assert "stripes.count: Input should be greater than or equal to 1" in build("--dataset", "stripes", "--count", "0").stderr


def test_an_option_of_another_dataset_names_the_datasets_own(build):
    result = build("--dataset", "stripes", "--subjects", "3")
    assert result.exit_code == 2
    assert "--subjects is not an option of dataset 'stripes' (its options: --flip-axes, --count, --levels, --flipped, --tag" in result.stderr


def test_help_lists_every_datasets_options_with_their_descriptions(ssmtl_cli):
    text = " ".join(ssmtl_cli("cache", "build", "--help", plugins=[stripes_plugin()], env={"COLUMNS": "200"}).stdout.split())
    for line in ("--count", "stripes: Number of generated volumes.", "--levels", "--flipped", "--no-flipped",
                 "--subjects", "phantom: Number of generated subjects", "--images", "nifti: Directory of image volumes"):
        assert line in text, line


def test_dataset_help_lists_its_own_options_and_defaults(ssmtl_cli):
    text = " ".join(ssmtl_cli("cache", "build", "--dataset", "stripes", "--help", plugins=[stripes_plugin()],
                              env={"COLUMNS": "200"}).stdout.split())
    assert "--count" in text and "--levels" in text and "--flipped" in text
    assert "Intensity of each stripe. (default: [0.0, 1.0])" in text and "Subject name prefix. (default: s)" in text
    # other datasets' options are hidden here (still parsed, to name the mistake)
    assert "Number of generated subjects" not in text and "Directory of image volumes" not in text
    assert "--out" in text and "--set" in text  # the command's own options stay


def test_without_the_plugin_its_flags_do_not_exist(ssmtl_cli, tmp_path):
    result = ssmtl_cli("--no-plugins", "cache", "build", "--dataset", "phantom", "--count", "3", "--out", tmp_path / "x.h5",
                       plugins=[stripes_plugin()])
    assert result.exit_code == 2 and "No such option: --count" in result.stderr


def test_top_level_help_loads_no_plugin():
    code = ("import sys\nfrom typer.testing import CliRunner\nfrom ssmtl.cli.app import app\n"
            "for args in (['--help'], ['cache', '--help']):\n    assert CliRunner().invoke(app, args).exit_code == 0\n"
            "print(sorted(m for m in ('torch', 'ssmtl.plugins') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
