"""Writing label maps (and class probabilities) on a scan's own voxel grid.

Arrays arrive in the file's own axis order (i, j, k) with its
:class:`~ssmtl.api.SourceGeometry`; every file is written atomically (a hidden
temporary in the output folder, renamed when complete).

Formats (``ssmtl predict --format``):

* ``nifti`` (default): ``NAME.nii.gz``. For a NIfTI input the input's header is the
  template, so qform, sform (and their codes), units and orientation are the input's,
  bit for bit; otherwise both qform and sform hold the scan's affine (code 1, scanner).
  Label maps are uint8 with the NIfTI ``label`` intent.
* ``same``: the input's own format where ssmtl can write it honestly: NIfTI stays NIfTI
  (``.nii`` or ``.nii.gz``), NRRD is written as ``.nrrd`` (a ``.nhdr`` input too: one file
  instead of a header and a detached data file), MetaImage as ``.mha`` (``.mhd`` too), with
  the input's LPS direction, origin and spacing. A **DICOM series** becomes an ``.nrrd``
  file with the series' LPS geometry: a segmentation in DICOM means a DICOM-SEG object,
  whose required study, series and frame-of-reference context ssmtl does not reproduce,
  and writing label values into CT-like image slices would pretend to be something it is
  not. NRRD keeps the series' geometry exactly and every DICOM viewer family
  (3D Slicer, ITK-SNAP, MITK) overlays it.

Probabilities are always NIfTI (``NAME_probabilities.nii.gz``): a 4D (i, j, k, class)
uint8 array with slope 1/255, so readers that apply the NIfTI scaling get floats in [0, 1]
at a quarter of the float32 size.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from ssmtl.api.volumes import SourceGeometry
from ssmtl.storage.files import atomic_write

#: File formats, as :attr:`~ssmtl.api.SourceGeometry.format` names them (formats, not dataset plugins).
NIFTI, NRRD, MHA, DICOM = "nifti", "nrrd", "mha", "dicom"
SAME = "same"
FORMATS = (NIFTI, SAME)
#: What ``--format same`` writes for each source format (anything else: NIfTI).
SAME_FORMAT = {NIFTI: NIFTI, NRRD: NRRD, MHA: MHA, DICOM: NRRD}
EXTENSIONS = {NIFTI: ".nii.gz", NRRD: ".nrrd", MHA: ".mha"}
#: Probability quantisation: stored value v means probability v / 255.
PROBABILITY_LEVELS = 255


def output_format(choice: str, source_format: str, input_path: Path) -> tuple[str, str]:
    """(format, extension) of the label map for an input of ``source_format`` under ``--format choice``."""
    fmt = SAME_FORMAT.get(source_format, NIFTI) if choice == SAME else NIFTI
    extension = EXTENSIONS[fmt]
    if fmt == NIFTI and choice == SAME and input_path.name.lower().endswith(".nii"):
        extension = ".nii"  # an uncompressed input stays uncompressed
    return fmt, extension


def _nifti(data: np.ndarray, geometry: SourceGeometry, template: Path | None, what: str):
    import nibabel as nib

    if template is not None and geometry.format == NIFTI:
        header = nib.load(str(template)).header.copy()
        image = nib.Nifti1Image(data, None, header)  # the header's own qform and sform, codes included
    else:
        image = nib.Nifti1Image(data, geometry.affine)
        image.set_qform(geometry.affine, code=1)
        image.set_sform(geometry.affine, code=1)
    image.set_data_dtype(data.dtype)
    image.header["descrip"] = f"ssmtl {what}".encode()[:79]
    return image


def _save_nifti(path: Path, image) -> None:
    compressed = path.name.lower().endswith(".gz")

    def write(tmp: Path) -> None:
        raw = image.to_bytes()
        tmp.write_bytes(gzip.compress(raw, compresslevel=4) if compressed else raw)

    atomic_write(path, write)


def _save_itk(path: Path, data: np.ndarray, geometry: SourceGeometry) -> None:
    import SimpleITK as sitk

    affine_lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(geometry.affine, dtype=np.float64)
    spacing = np.linalg.norm(affine_lps[:3, :3], axis=0)
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(data, (2, 1, 0))))  # (k, j, i) for ITK
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(o) for o in affine_lps[:3, 3]])
    image.SetDirection([float(v) for v in (affine_lps[:3, :3] / spacing).ravel()])
    atomic_write(path, lambda tmp: sitk.WriteImage(image, str(tmp), True), suffix=path.suffix)


def write_label_map(path: Path, labels: np.ndarray, geometry: SourceGeometry, fmt: str,
                    template: Path | None = None) -> Path:
    """Write a uint8 (i, j, k) label map on ``geometry`` as ``fmt`` (``nifti``, ``nrrd`` or ``mha``) at ``path``."""
    labels = np.asarray(labels, dtype=np.uint8)
    if fmt == NIFTI:
        image = _nifti(labels, geometry, template, "predict label map")
        image.header.set_intent("label")
        image.header.set_slope_inter(1.0, 0.0)
        _save_nifti(path, image)
    else:
        _save_itk(path, labels, geometry)
    return path


def write_probabilities(path: Path, probabilities: np.ndarray, geometry: SourceGeometry,
                        template: Path | None = None) -> Path:
    """Write (i, j, k, class) probabilities quantised to uint8 (value / 255) as a 4D NIfTI."""
    image = _nifti(np.asarray(probabilities, dtype=np.uint8), geometry, template, "class probabilities x255")
    image.header.set_slope_inter(1.0 / PROBABILITY_LEVELS, 0.0)
    _save_nifti(path, image)
    return path
