"""``ssmtl export --format monai-bundle``: a fine-tuning run as a MONAI bundle.

The folder follows the MONAI bundle specification::

    configs/metadata.json    what the model is (version, task, classes, network_data_format)
    configs/logging.conf     how MONAI's workflow logs
    configs/inference.json   the whole inference: load, reorient, prepare the slices as the
                             training cache did (over the whole field of view), infer them in
                             sliding windows as ``ssmtl predict`` does, map back, save
    models/model.ts          network + head as TorchScript (images -> class logits), with
                             metadata.json and inference.json inside as extra files
    scripts/ssmtl_slices.py  ssmtl's slice preparation and its inverse as one MONAI transform
                             (numpy, torch and MONAI only: :mod:`ssmtl.publish.bundle_slices`)
    docs/README.md           the model card (written by the export once the model is checked)
    LICENSE                  the terms of the weights (see the model card's license)

Why TorchScript: a bundle must run where ssmtl is not installed, and ssmtl's U-Net, the
head, and a third party's network plugin are ssmtl modules; a traced module needs only
torch. (For a run of the ``monai-basic-unet`` network the safetensors export also loads
into MONAI's own ``BasicUNet``; the bundle still uses the traced network + head, so every
network is served the same way.)

Run it with MONAI alone::

    python -m monai.bundle run --config_file configs/inference.json --bundle_root . \\
        --dataset_dir SCANS --output_dir OUT
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ssmtl._version import __version__
from ssmtl.api.errors import SsmtlError
from ssmtl.api.heads import DownstreamHead
from ssmtl.downstream.predictor import GAUSSIAN_SIGMA, Windows
from ssmtl.storage.files import save_json, save_text
from ssmtl.publish.formats import save_torchscript
from ssmtl.publish.parts import PartModule
from ssmtl.publish.runs import modality_names, RunInfo

MODEL_FILE = "models/model.ts"
SCRIPT_FILE = "scripts/ssmtl_slices.py"
SCHEMA = "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20220324.json"
#: slices per batch and windows per network call, as ``ssmtl predict``'s default ``--batch-size``
SLICES_PER_CALL = 32
#: ``ssmtl predict``'s default windows (overlap and blend; no test-time flips)
PREDICT_WINDOWS = Windows()
#: configs/logging.conf, which MONAI's workflows read (Python's logging.config file format)
LOGGING = """[loggers]
keys=root

[handlers]
keys=console

[formatters]
keys=plain

[logger_root]
level=INFO
handlers=console

[handler_console]
class=StreamHandler
level=INFO
formatter=plain
args=(sys.stdout,)

[formatter_plain]
format=%(asctime)s - %(name)s - %(levelname)s - %(message)s
"""


def check_bundle_part(info: RunInfo, part: PartModule) -> None:
    """A bundle serves a fine-tuning run's segmentation: network + head, with the recorded preprocessing."""
    if info.kind != "finetune" or part.name != "finetuned":
        raise SsmtlError("--format monai-bundle exports a fine-tuning run's network + head (class logits), whose "
                         "inference config segments scans; use --format safetensors/torchscript/onnx for other parts")
    head = part.module.head
    if type(head).predict is not DownstreamHead.predict or type(head).probabilities is not DownstreamHead.probabilities:
        raise SsmtlError(f"--format monai-bundle: the head {head.name!r} has its own prediction rule; a MONAI bundle "
                         "takes the arg-max of the softmax of its logits, so it cannot serve this head")
    if not info.preprocess:
        raise SsmtlError(f"{info.path}: the run records no preprocessing and its training cache is not readable; "
                         "a MONAI bundle needs both to prepare scans as the run was trained")


def inference_config(info: RunInfo, size: int) -> dict[str, Any]:
    """``configs/inference.json``: every step of inference, with the training cache's numbers."""
    pre = info.preprocess or {}
    return {
        "imports": ["$import glob", "$import os", "$import numpy", "$import torch"],
        "bundle_root": ".",
        "dataset_dir": "$os.path.join(@bundle_root, 'data')",
        "output_dir": "$os.path.join(@bundle_root, 'eval')",
        "datalist": "$sorted(glob.glob(os.path.join(@dataset_dir, '*.nii.gz')) + glob.glob(os.path.join(@dataset_dir, '*.nii')))",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": "$torch.jit.load(os.path.join(@bundle_root, 'models', 'model.ts'), map_location='cpu')",
        "network": "$@network_def.to(@device).eval()",
        "slices": {  # how the training cache prepared slices (ssmtl's PreprocessConfig), and how to map back
            "size": int(pre.get("size", size)), "spacing": pre.get("spacing"),
            "ct_window": list(pre.get("ct_window", (-250.0, 750.0))), "mr_percentiles": list(pre.get("mr_percentiles", (1.0, 99.0))),
            "modality": "auto", "field_of_view": "whole", "resample": "auto",
        },
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": "image", "image_only": True},
            {"_target_": "EnsureChannelFirstd", "keys": "image"},
            {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS", "labels": [["L", "R"], ["P", "A"], ["I", "S"]]},
            {"_target_": "scripts.ssmtl_slices.SsmtlSlicesd", "keys": "image", "size": "@slices#size",
             "spacing": "@slices#spacing", "ct_window": "@slices#ct_window", "mr_percentiles": "@slices#mr_percentiles",
             "modality": "@slices#modality", "field_of_view": "@slices#field_of_view", "resample": "@slices#resample"},
        ]},
        "dataset": {"_target_": "Dataset", "data": "$[{'image': f} for f in @datalist]", "transform": "@preprocessing"},
        # ssmtl predict's windows: the cache's slice size, overlapping by half, blended with nnU-Net's Gaussian
        # (scripts.ssmtl_slices.infer_slices gives it SLICES_PER_CALL slices at a time, as predict's batches)
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": ["@slices#size", "@slices#size"],
                    "sw_batch_size": SLICES_PER_CALL, "overlap": PREDICT_WINDOWS.overlap, "mode": PREDICT_WINDOWS.blend,
                    "sigma_scale": GAUSSIAN_SIGMA},
        "postprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "Activationsd", "keys": "pred", "softmax": True},
            {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image",
             "nearest_interp": False, "to_tensor": True},
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
            {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "output_postfix": "seg",
             "output_dtype": "$numpy.uint8", "resample": False, "separate_folder": False, "print_log": False},
        ]},
        "run": [{"_target_": "scripts.ssmtl_slices.predict_all", "dataset": "@dataset", "inferer": "@inferer",
                 "network": "@network", "postprocessing": "@postprocessing", "device": "@device"}],
    }


def _versions() -> dict[str, str]:
    from importlib import metadata

    found = {}
    for name in ("monai", "torch", "numpy", "nibabel"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def bundle_metadata(info: RunInfo, config: dict[str, Any], size: int, license_text: str) -> dict[str, Any]:
    """``configs/metadata.json``."""
    versions = _versions()
    classes = {str(k): v for k, v in sorted(info.class_names.items(), key=lambda kv: int(kv[0]))}
    modalities = "/".join(m.upper() for m in modality_names(info.data)) or "CT or MR"
    evaluation = info.evaluation or {}
    return {
        "schema": SCHEMA,
        "version": "0.1.0",
        "changelog": {"0.1.0": f"exported by ssmtl {__version__} from the fine-tuning run {info.name}"},
        "monai_version": versions.get("monai", ""),
        "pytorch_version": versions.get("torch", "").split("+")[0],
        "numpy_version": versions.get("numpy", ""),
        "required_packages_version": {"nibabel": versions.get("nibabel", "")},
        "task": f"Slice-wise 2D segmentation of {modalities} volumes ({info.num_classes} classes)",
        "description": (f"{config['part_description'][0].upper()}{config['part_description'][1:]}, from the ssmtl fine-tuning "
                        f"run {info.name}; scans are prepared slice by slice as its training cache was, and the label "
                        "map is written on each scan's own grid. Research use only, not for clinical use."),
        "authors": "the exporter of this run (ssmtl records no author)",
        "copyright": license_text,
        "data_source": str(info.data.get("dataset") or "an ssmtl slice cache"),
        "data_type": "nibabel",
        "image_classes": f"one channel, {modalities}, reoriented to RAS, resampled in-plane and normalised by the bundle",
        "label_classes": classes,
        "pred_classes": classes,
        "eval_metrics": {k: evaluation[k] for k in ("mean_dice", "mean_hd95") if isinstance(evaluation.get(k), (int, float))},
        "intended_use": "Research use only; not a medical device, not for diagnosis or treatment",
        "references": ["Dong, Kampffmeyer & Voiculescu, Self-supervised multi-task representation learning for "
                       "sequential medical images, ECML PKDD 2021"],
        "network_data_format": {
            "inputs": {"image": {
                "type": "image", "format": "magnitude", "modality": modalities, "num_channels": 1,
                "spatial_shape": [size, size], "dtype": "float32", "value_range": [], "is_patch_data": True,
                "channel_def": {"0": "image"}}},
            "outputs": {"pred": {
                "type": "image", "format": "segmentation", "num_channels": int(info.num_classes or 0),
                "spatial_shape": [size, size], "dtype": "float32", "value_range": [], "is_patch_data": True,
                "channel_def": classes}},
        },
    }


def write_bundle(folder: Path, info: RunInfo, part: PartModule, size: int, config: dict[str, Any],
                 license_text: str) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """Write the bundle's files into ``folder`` (``docs/`` stays for the card, written once the model
    is checked); returns (the TorchScript file, metadata, inference config)."""
    folder = Path(folder)
    for sub in ("configs", "models", "scripts", "docs"):
        (folder / sub).mkdir(exist_ok=True)
    inference = inference_config(info, size)
    metadata = bundle_metadata(info, config, size, license_text)
    save_json(folder / "configs" / "inference.json", inference)
    save_json(folder / "configs" / "metadata.json", metadata)
    save_text(folder / "configs" / "logging.conf", LOGGING)
    source = Path(__file__).with_name("bundle_slices.py").read_text()
    save_text(folder / "scripts" / "__init__.py", '"""Code this MONAI bundle runs (written by ssmtl export)."""\n')
    save_text(folder / SCRIPT_FILE, source)
    model = folder / MODEL_FILE
    example = torch.randn(2, part.module.network.info.in_channels, size, size, generator=torch.Generator().manual_seed(0))
    save_torchscript(part.module, model, example, {"metadata.json": json.dumps(metadata), "inference.json": json.dumps(inference)})
    return model, metadata, inference

