"""Write phantom subjects as NIfTI scans (and their label maps): files to try `ssmtl predict` on,
or the `nifti` dataset, without real data.

    python examples/phantom_scans.py demo/scans --subjects 2 --seed 7

Writes OUT/images/phantom_ct_000.nii.gz ... and OUT/labels/phantom_ct_000.nii.gz ...; a seed
other than the cache's (0 by default) gives subjects no model has seen. The volumes come from
the `phantom` dataset plugin through the registry, as `ssmtl cache build` gets them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import nibabel as nib
import numpy as np

from ssmtl.host.registry import build_registry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder to write images/ and labels/ into")
    parser.add_argument("--subjects", type=int, default=2)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--domain", choices=("ct", "mr"), default="ct")
    parser.add_argument("--size", type=int, default=64, help="in-plane voxels")
    parser.add_argument("--variability", choices=("low", "realistic"), default="low")
    args = parser.parse_args()
    spec = build_registry(external=False).dataset("phantom")
    config = spec.config_model(subjects=args.subjects, seed=args.seed, domain=args.domain, size=args.size,
                               variability=args.variability)
    for folder in ("images", "labels"):
        (args.out / folder).mkdir(parents=True, exist_ok=True)
    for item in spec.factory(config).items:
        volume = item.load()
        image = nib.Nifti1Image(volume.image.astype(np.float32), volume.affine)
        label = nib.Nifti1Image(volume.label.astype(np.uint8), volume.affine)
        nib.save(image, args.out / "images" / f"{item.subject}.nii.gz")
        nib.save(label, args.out / "labels" / f"{item.subject}.nii.gz")
        print(f"wrote {args.out / 'images' / item.subject}.nii.gz  {volume.image.shape}  {volume.spacing} mm")


if __name__ == "__main__":
    main()
