"""A plugin package whose every plugin fails in one call, installed for subprocesses only.

:func:`install_broken_plugin` writes the module and a ``.dist-info`` folder (the metadata
and ``entry_points.txt`` pip would write) into a folder; a process with that folder on
``PYTHONPATH`` discovers it through the ``ssmtl`` entry-point group like any installed
package, and nothing is installed into the test environment itself.
"""

from __future__ import annotations

from pathlib import Path

DISTRIBUTION = "ssmtl-broken-test"
VERSION = "0.1"
MODULE = "ssmtl_broken_test"

SOURCE = '''
from typing import Literal

import torch

from dataclasses import dataclass

from ssmtl.api import (DatasetConfig, DatasetSpec, DownstreamHead, HeadConfig, HeadSpec, NetworkConfig, NetworkSpec,
                       PretextTask, TaskConfig, TaskOutput, TaskSpec, VolumeItem, VolumeSource, hookimpl)


def task(name, forward=None, init=None, on_data=None):
    config = type(f"{name}Config", (TaskConfig,), {"__annotations__": {"name": Literal[name]}, "name": name})

    class Task(PretextTask):
        def __init__(self, config, network):
            super().__init__(config, network)
            if init:
                init()

        def on_data(self, info):
            return on_data() if on_data else []

        def forward(self, ctx):
            return forward(ctx)

    return TaskSpec(name, config, Task)


def boom(where):
    def fail(*args):
        raise ValueError(f"boom in {where}")
    return fail


def loss(value):
    return lambda ctx: TaskOutput(value)


@hookimpl
def ssmtl_register_tasks():
    return [
        task("raise-init", forward=loss(torch.zeros(())), init=boom("__init__")),
        task("raise-forward", forward=boom("forward")),
        task("raise-on-data", forward=loss(torch.zeros(())), on_data=boom("on_data")),
        task("none-forward", forward=lambda ctx: None),
        task("vector-loss", forward=loss(torch.zeros(3))),
        task("integer-loss", forward=loss(torch.tensor(1))),
        task("string-loss", forward=loss("0.5")),
    ]


class BrokenDatasetConfig(DatasetConfig):
    name: Literal["raise-dataset"] = "raise-dataset"


class WrongDatasetConfig(DatasetConfig):
    name: Literal["wrong-dataset"] = "wrong-dataset"


class FailingLoadConfig(DatasetConfig):
    name: Literal["raise-load"] = "raise-load"


@dataclass
class FailingItem(VolumeItem):
    def load(self):
        raise KeyError("no such field")


@hookimpl
def ssmtl_register_datasets():
    return [DatasetSpec("raise-dataset", BrokenDatasetConfig, boom("the dataset factory")),
            DatasetSpec("wrong-dataset", WrongDatasetConfig, lambda config: ["not", "a", "source"]),
            DatasetSpec("raise-load", FailingLoadConfig,
                        lambda config: VolumeSource(items=[FailingItem("s1", "broken://s1")], class_names={})),]


class BrokenHeadConfig(HeadConfig):
    name: Literal["raise-head"] = "raise-head"


@hookimpl
def ssmtl_register_heads():
    return [HeadSpec("raise-head", BrokenHeadConfig, boom("the head factory"))]


class BrokenNetworkConfig(NetworkConfig):
    name: Literal["raise-network"] = "raise-network"


@hookimpl
def ssmtl_register_networks():
    return [NetworkSpec("raise-network", BrokenNetworkConfig, boom("the network factory"))]
'''


def install_broken_plugin(folder: Path) -> Path:
    """Write the package into ``folder`` (put it on PYTHONPATH); returns ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{MODULE}.py").write_text(SOURCE)
    info = folder / f"{MODULE}-{VERSION}.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {DISTRIBUTION}\nVersion: {VERSION}\n")
    (info / "entry_points.txt").write_text(f"[ssmtl]\nbroken = {MODULE}\n")
    return folder
