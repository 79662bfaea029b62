"""How strong the random views are (:class:`AugmentConfig`).

Apart from the augmentation that reads it (:mod:`ssmtl.training.augment`), so that a config can
be read, validated and shown without importing torch.
"""

from __future__ import annotations

from pydantic import BaseModel, Field, model_validator

from ssmtl.api.rules import CONFIG_RULES


class AugmentConfig(BaseModel):
    """Strength of the random views. Ranges are sampled uniformly per sample."""

    model_config = CONFIG_RULES
    flip: float = Field(0.5, ge=0, le=1, description="Probability of a mirror flip along each in-plane axis the data allows (the cache's flip_axes, declared by the dataset: 0 = rows, 1 = columns); no flip on data that declares none, such as the heart, whose mirror image is another anatomy.")
    rotate: float = Field(15.0, ge=0, le=180, description="Maximum rotation in degrees.")
    crop_scale: tuple[float, float] = Field((0.6, 1.0), description="Side length of the random crop as a fraction of the slice (then resized back).")
    translate: float = Field(0.1, ge=0, le=0.5, description="Maximum shift as a fraction of the slice.")
    contrast: float = Field(0.3, ge=0, le=1, description="Contrast factor range 1 +/- contrast.")
    brightness: float = Field(0.2, ge=0, le=2, description="Additive shift range, in units of the sample's std.")
    gamma: tuple[float, float] = Field((0.7, 1.5), description="Gamma range (applied on the min-max rescaled slice).")
    blur: float = Field(0.3, ge=0, le=1, description="Probability of a Gaussian blur (sigma 0.1-1.5 px).")
    noise: float = Field(0.05, ge=0, le=1, description="Std of additive Gaussian noise, in units of the sample's std.")

    @model_validator(mode="after")
    def _ranges(self):
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError("crop_scale must satisfy 0 < low <= high <= 1")
        glo, ghi = self.gamma
        if not 0 < glo <= ghi:
            raise ValueError("gamma must satisfy 0 < low <= high")
        return self
