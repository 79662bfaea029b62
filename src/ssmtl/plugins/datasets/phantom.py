"""The built-in ``phantom`` dataset: generated, labelled cardiac CT or MR volumes.

Why it exists
    It is the embedded default data of ssmtl. ``make demo``, the test suite and the
    benchmarks run the whole pipeline (cache build, self-supervised pre-training on
    slices, whole-heart segmentation fine-tuning) on it without downloading anything
    or touching patient data, and every run sees exactly the same volumes for a
    given ``seed``.

Anatomy
    Each subject is a 3D thorax in canonical RAS orientation (x: right -> left,
    y: posterior -> anterior, z: inferior -> superior; slices along z): an elliptic
    body with a subcutaneous fat layer, two lungs above a domed diaphragm, the liver
    in the inferior slices, a vertebra with its spinal canal, the sternum, and a
    heart in the middle ~60% of the slices. The heart is built from ellipsoids
    around a tilted long axis (apex left-anterior-inferior): the LV cavity inside a
    closed myocardial wall, the RV wrapped as a crescent around the septum, the left
    and right atria at the base, pericardial fat around it all, and the aorta
    (ascending from the LV, the arch in the top slices and the descending aorta
    beside the spine through every slice). Because everything is a smooth 3D
    shape, consecutive slices are continuous and the same relative slice position
    shows similar anatomy in every subject, which is what slice-order and
    position-aware pretext tasks rely on.

Variability
    ``variability="realistic"`` (the default) draws each subject from the
    inter-subject variability of clinical cardiac CT / MR: heart size, shape, position
    and orientation, LV wall thickness, field of view, coverage and slice spacing (so
    subjects differ in voxel size and number of slices), contrast phase, coil bias,
    noise, and blood-filled neighbours labelled background (pulmonary trunk, superior
    vena cava); every range and its source is in
    :mod:`~ssmtl.plugins.datasets.phantom_variability`. ``variability="low"`` is the
    original phantom, unchanged for the same seed (about +-15 % in body and heart size,
    +-10 % in intensities, a fixed grid): quick demos and tests.

Labels
    The MM-WHS structures: 1 myocardium (of the LV, as in MM-WHS), 2 left atrium,
    3 left ventricle, 4 right atrium, 5 right ventricle, 6 aorta (ascending, arch
    and descending). The thin RV and atrial walls look like muscle but are
    background, as in MM-WHS.

Domains
    ``ct``: contrast-enhanced cardiac CT in Hounsfield units (air -1000, lung -850,
    fat -100, soft tissue 45, myocardium 100, blood 300-340, bone 700), a small
    additive shading and Gaussian noise of about 20 HU.
    ``mr``: balanced-SSFP-like cine MR in arbitrary units (blood ~500, fat ~420,
    myocardium ~130, lung ~20, bone ~60), a strong multiplicative bias field in
    [0.7, 1.3] and Rician noise. Myocardium is darker than blood in both, but fat
    is brighter than myocardium only in MR, and the intensity scales differ, so
    transferring between the domains is not trivial. CT and MR subjects with the
    same index are different virtual patients (unpaired, as in MM-WHS).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import Field

from ssmtl.api import DatasetConfig, DatasetSpec, hookimpl, RawVolume, Seed, VolumeItem, VolumeSource
from ssmtl.plugins.datasets.phantom_anatomy import CLASS_NAMES, generate_subject
from ssmtl.plugins.datasets.phantom_variability import Variability


class PhantomConfig(DatasetConfig):
    """Options of the generated cardiac phantom."""

    name: Literal["phantom"] = Field("phantom", description="Dataset plugin name.")
    subjects: int = Field(16, ge=1, le=10000, description="Number of generated subjects (volumes).")
    domain: Literal["ct", "mr"] = Field(
        "ct", description="Imaging domain: 'ct' (contrast CT, HU) or 'mr' (bSSFP-like MR, arbitrary units)."
    )
    size: int = Field(
        64, ge=16, le=1024, description="In-plane grid size in voxels (size x size) over a fixed field of view."
    )
    num_slices: int = Field(
        32, ge=4, le=1024, description="Number of axial slices over a 160 mm cranio-caudal extent (variability=realistic: the nominal count; each subject's coverage and slice spacing vary around it)."
    )
    variability: Literal["low", "realistic"] = Field(
        "realistic", description="Inter-subject variability: 'realistic' (clinical ranges of anatomy and acquisition, see docs/datasets.md) or 'low' (the original phantom, for quick demos)."
    )
    seed: Seed = Field(
        0, description="Random seed; the same seed always generates the same subjects."
    )


@dataclass
class PhantomItem(VolumeItem):
    """One generated subject; generation happens in :meth:`load`, in the worker."""

    index: int
    seed: int
    domain: Literal["ct", "mr"]
    size: int
    num_slices: int
    variability: Variability = "low"
    has_label = True  # every phantom is generated with its label map (not a dataclass field)

    def load(self) -> RawVolume:
        image, label, spacing = generate_subject(
            self.index,
            seed=self.seed,
            domain=self.domain,
            size=self.size,
            num_slices=self.num_slices,
            variability=self.variability,
        )
        return RawVolume(
            image=image,
            spacing=spacing,
            modality=self.domain,
            label=label,
            affine=np.diag([*spacing, 1.0]),
        )


def build_source(config: PhantomConfig) -> VolumeSource:
    """The :class:`VolumeSource` of ``config.subjects`` lazily generated subjects."""
    items: list[VolumeItem] = [
        PhantomItem(
            subject=f"phantom_{config.domain}_{index:03d}",
            # the original (low) phantom keeps its original source name
            source=f"phantom:{config.domain}:seed={config.seed}:index={index}"
            + ("" if config.variability == "low" else f":variability={config.variability}"),
            index=index,
            seed=config.seed,
            domain=config.domain,
            size=config.size,
            num_slices=config.num_slices,
            variability=config.variability,
        )
        for index in range(config.subjects)
    ]
    return VolumeSource(
        items=items,
        class_names=dict(CLASS_NAMES),
        description=(
            f"{config.subjects} generated {config.domain.upper()} cardiac phantoms "
            f"({config.size}x{config.size}x{config.num_slices}, seed {config.seed}, {config.variability} variability)"
        ),
    )


@hookimpl
def ssmtl_register_datasets():
    return [
        DatasetSpec(
            name="phantom",
            config_model=PhantomConfig,
            factory=build_source,
            description="Generated cardiac CT/MR phantom with whole-heart labels (built-in demo data)",
        )
    ]
