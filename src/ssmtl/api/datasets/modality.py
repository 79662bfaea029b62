"""Telling CT from MR by the intensities, for files whose header does not say.

CT is calibrated in Hounsfield units, where air is about -1000; MR intensities
are arbitrary and (almost always) non-negative. A volume whose 0.5th intensity
percentile lies below -500 therefore holds air in HU: it is CT.
"""

from __future__ import annotations

import numpy as np

from ssmtl.api.volumes import Modality

CT_DETECTION_PERCENTILE = 0.5
CT_DETECTION_THRESHOLD = -500.0
# The percentile is estimated on a strided subsample of about this many voxels.
_DETECTION_SAMPLE = 2_000_000


def detect_modality(image: np.ndarray) -> Modality:
    """``"ct"`` if the 0.5th intensity percentile is below -500 (air in HU), else ``"mr"``.

    A regular strided subsample of about two million voxels keeps this cheap on
    large volumes; its percentile is a close estimate of the full one.
    """
    step = max(1, round((image.size / _DETECTION_SAMPLE) ** (1 / 3)))
    sample = image[::step, ::step, ::step]
    low = float(np.percentile(sample, CT_DETECTION_PERCENTILE))
    return "ct" if low < CT_DETECTION_THRESHOLD else "mr"
