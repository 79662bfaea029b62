"""The module named by this package's ``ssmtl`` entry point: hook implementations only.

Keeping the hooks apart from the task and dataset code keeps what ssmtl imports at
start-up obvious, and lets tests register the plugin in-process
(``ssmtl_registry_factory(ssmtl_rotation.plugin)``) exactly as the entry point does.
"""

from __future__ import annotations

from ssmtl.api import DatasetSpec, hookimpl, TaskSpec

from ssmtl_rotation.png_stack import PngStackConfig, build_source
from ssmtl_rotation.rotation import RotationConfig, RotationTask


@hookimpl
def ssmtl_register_tasks():
    return [
        TaskSpec(
            name="rotation",
            config_model=RotationConfig,
            factory=RotationTask,
            description="Predict the 0/90/180/270 degree rotation of each slice from pooled encoder features (encoder).",
        )
    ]


@hookimpl
def ssmtl_register_datasets():
    return [
        DatasetSpec(
            name="png-stack",
            config_model=PngStackConfig,
            factory=build_source,
            description="A folder of volumes, each a sub-folder of PNG/TIFF slices sorted by file name",
        )
    ]
