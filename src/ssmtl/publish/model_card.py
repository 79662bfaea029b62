"""The model card (``README.md``) of an exported model: YAML front matter as model hubs read it,
then what the weights are, what they were trained on and how, how well they did, how to
load them, and what they must not be used for."""

from __future__ import annotations

import json
import math
from typing import Any

import yaml

from ssmtl.publish.runs import RunInfo

PAPER = ("Dong, Kampffmeyer & Voiculescu, *Self-supervised multi-task representation learning for "
         "sequential medical images*, ECML PKDD 2021")


def _front_matter(info: RunInfo, config: dict[str, Any]) -> str:
    modalities = sorted((info.data.get("modalities") or {}).keys())
    meta = {
        "library_name": "ssmtl",
        "license": "other",
        "pipeline_tag": "image-segmentation" if config["part"] == "finetuned" else "image-feature-extraction",
        "tags": ["medical-imaging", "self-supervised-learning", "ssmtl", config["format"],
                 *filter(None, [info.network.get("name")]), *modalities],
    }
    return "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n"


def _fmt(value: Any, digits: int) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _shape(shape: list[Any]) -> str:
    return "(" + ", ".join(map(str, shape)) + ")"


def _inputs(info: RunInfo, config: dict[str, Any]) -> list[str]:
    spec = config["inputs"]["images"]
    lines = [f"- input `images`: float32, shape {_shape(spec['shape'])}; height and width multiples of "
             f"{spec['size_multiple_of']} (trained on {spec['trained_size'][0]} x {spec['trained_size'][1]} slices)."]
    preprocess = info.data.get("preprocess") or {}
    if preprocess:
        lines.append(f"- intensities as the ssmtl cache stores them: CT clipped to the HU window "
                     f"{preprocess.get('ct_window')} and mapped to [0, 1]; MR clipped to the percentiles "
                     f"{preprocess.get('mr_percentiles')} of the foreground, then z-scored; slices reoriented to "
                     "the canonical orientation and resampled in-plane.")
    else:
        lines.append("- intensities as the ssmtl cache stores them (CT: HU window mapped to [0, 1]; MR: percentile "
                     "clipping and z-score); the cache was not readable when this card was written.")
    for name, shape in config["outputs"].items():
        lines.append(f"- output `{name}`: float32, shape {_shape(shape)}")
    parity = config["parity"]
    if parity.get("checked"):
        lines.append(f"- checked against torch on an input of shape {_shape(parity['input_shape'])} with "
                     f"{parity['runtime']}: largest absolute difference {parity['max_abs_error']:.2g} "
                     f"(tolerance {parity['tolerance']:g}).")
    else:
        lines.append(f"- not checked against torch: {parity.get('reason')}.")
    return lines


def _data(info: RunInfo) -> list[str]:
    data = info.data
    modalities = ", ".join(f"{m}: {n}" for m, n in (data.get("modalities") or {}).items()) or "unknown"
    lines = [f"- cache fingerprint `{data.get('fingerprint')}`" + (f" (dataset `{data['dataset']}`)" if data.get("dataset") else "")]
    if "subjects" in data:
        lines.append(f"- {data['subjects']} subjects, {data.get('volumes')} volumes (modality: {modalities}), "
                     f"slices of {' x '.join(map(str, data.get('slice_shape') or []))} pixels")
    if info.kind == "pretrain":
        lines.append(f"- pre-training read {data.get('trained_on')} volumes (the cache's training subjects; "
                     "held-out validation and test subjects stay out by default)")
    else:
        lines.append(f"- fine-tuned on {len(info.labeled_subjects)} labeled subject(s): {', '.join(info.labeled_subjects)}")
    return lines


def _training(info: RunInfo) -> list[str]:
    tasks = ", ".join(f"`{name}`" for name in info.tasks) or "none"
    network = ", ".join(f"{k}={v}" for k, v in info.network.items() if k != "name")
    lines = [f"- network `{info.network.get('name')}` ({network})"]
    if info.kind == "pretrain":
        train = (info.config.get("train") or {})
        lines += [f"- self-supervised pretext tasks trained at once: {tasks}",
                  f"- {info.steps} steps, batch {train.get('batch_size')} sequences, peak learning rate {train.get('lr')}, "
                  f"seed {info.config.get('seed')}"]
    else:
        start = "random initialisation (scratch)" if info.init in (None, "none") else f"the pre-training run `{info.init}` (tasks: {tasks})"
        lines += [f"- started from {start}", f"- head `{(info.head or {}).get('name')}`: {info.num_classes} classes",
                  f"- {info.steps} fine-tuning steps"]
    return lines


def _evaluation(info: RunInfo) -> list[str]:
    results = info.evaluation
    if results is None:
        if info.kind == "pretrain":
            return ["Pre-training has no score of its own: fine-tune it (`ssmtl finetune --init RUN`) and evaluate "
                    "the fine-tuned run (`ssmtl evaluate`)."]
        return ["This run was not evaluated; `ssmtl evaluate RUN` writes `eval.json`, and a new export "
                "then reports it here."]
    n = len(results.get("test_subjects") or [])
    lines = [f"3D Dice and HD95 per structure on the {n} held-out `{results.get('split', 'test')}` subject(s) "
             f"({results.get('space', 'cache')} grid):", "", "| structure | Dice | HD95 (mm) |", "|---|---|---|"]
    for name in results.get("class_names") or []:
        scores = (results.get("per_class") or {}).get(name) or {}
        lines.append(f"| {name} | {_fmt(scores.get('dice'), 3)} | {_fmt(scores.get('hd95'), 2)} |")
    lines.append(f"| **mean** | **{_fmt(results.get('mean_dice'), 3)}** | **{_fmt(results.get('mean_hd95'), 2)}** |")
    if results.get("init_saw_test_subjects"):
        lines += ["", "The pre-training saw the test subjects' images (without labels): these scores are transductive."]
    return lines


def _usage(config: dict[str, Any]) -> list[str]:
    fmt, file = config["format"], config["file"]
    if fmt == "torchscript":
        code = ["import torch", "", f'model = torch.jit.load("{file}").eval()',
                "outputs = model(torch.zeros(1, 1, 64, 64))  # plain PyTorch, no ssmtl needed"]
    elif fmt == "onnx":
        code = ["import numpy as np", "import onnxruntime", "", f'session = onnxruntime.InferenceSession("{file}")',
                'outputs = session.run(None, {"images": np.zeros((1, 1, 64, 64), np.float32)})']
    elif config.get("native_class"):
        module, _, name = config["native_class"]["path"].rpartition(".")
        strict = "True" if config["part"] == "network" else "False  # the encoder's entries only"
        code = ["import json", "from safetensors.torch import load_file", f"from {module} import {name}", "",
                'kwargs = json.load(open("config.json"))["native_class"]["kwargs"]',
                f"net = {name}(**kwargs)", f'net.load_state_dict(load_file("{file}"), strict={strict})']
    else:
        code = ["import ssmtl", "", "model = ssmtl.load_network(\"RUN_DIR\")  # the run this folder was exported from",
                "# or the weights alone: safetensors.torch.load_file(\"" + file + "\"), under the network's own key names"]
    return ["```python", *code, "```"]


def render_model_card(info: RunInfo, config: dict[str, Any]) -> str:
    part, fmt = config["part"], config["format"]
    what = config["part_description"]
    lines = [
        _front_matter(info, config),
        f"# {info.name}: {part} ({fmt})", "",
        f"{what[0].upper()}{what[1:]}, from the ssmtl {'pre-training' if info.kind == 'pretrain' else 'fine-tuning'} "
        f"run `{info.name}`. ssmtl implements self-supervised multi-task pre-training on the 2D slices of CT and MR "
        f"volumes ({PAPER}).", "",
        "## Input and output", "", *_inputs(info, config), "",
        "## Data", "", *_data(info), "",
        "## Training", "", *_training(info), "",
        "## Evaluation", "", *_evaluation(info), "",
        "## How to use", "", *_usage(config), "",
        "## Intended use and limits", "",
        "- **Research use only.** This model is not a medical device and has not been validated for clinical use; "
        "do not use it for diagnosis, treatment or any decision about a patient.",
        f"- It was trained on {info.data.get('subjects', 'an unknown number of')} subjects of one cache"
        + (f" (dataset `{info.data['dataset']}`)" if info.data.get("dataset") else "") + ". How it behaves on other "
        "scanners, protocols, populations, fields of view or intensity normalisations is unknown; a model trained on "
        "generated data demonstrates the pipeline and means nothing clinically.",
        "- It sees one 2D slice at a time, in the orientation, spacing and intensity scale of the ssmtl cache it was "
        "trained on; inputs prepared otherwise give meaningless outputs.",
    ]
    if part != "finetuned":
        lines.append("- Self-supervised features are a starting point for fine-tuning, not a segmentation model.")
    lines += ["", "## Configuration", "", "<details><summary>the run's resolved configuration</summary>", "",
              "```json", json.dumps(info.config, indent=2, default=str), "```", "", "</details>", ""]
    return "\n".join(lines)
