"""The model card (``README.md``) of an exported model: YAML front matter as model hubs read it,
then what the weights are, what they were trained on and how, how well they did, how to
load them, and what they must not be used for.

**License.** ssmtl (Apache-2.0) does not decide the terms of the weights it trains: they
follow the terms of the training data, which ssmtl cannot know. Unless the exporter names a
license (``--license``, one of the Hugging Face hub's identifiers), the card says
``license: other`` with ``license_name: training-data-terms`` and ``license_link: LICENSE``,
and the folder's ``LICENSE`` explains what to decide before sharing.

**Shareable.** A card carries no absolute local path (paths become their last component)
and no subject identifier: subject ids are often file names or DICOM patient ids, so the card
names subjects by their pseudonyms (``subject-007``: :mod:`ssmtl.data.pseudonyms`), or only
counts them when the cache is gone. ``ssmtl export --identify-subjects`` names them by their
real ids, for internal use, and says so at the top of the card.
"""

from __future__ import annotations

import json
import math
from typing import Any

import yaml

from ssmtl._version import __version__
from ssmtl.api.errors import SsmtlError
from ssmtl.data.shareable import path_name, shareable
from ssmtl.publish.runs import modality_names, RunInfo

PAPER = ("Dong, Kampffmeyer & Voiculescu, *Self-supervised multi-task representation learning for "
         "sequential medical images*, ECML PKDD 2021")
UNSET_LICENSE = "training-data-terms"
LICENSE_FILE = "LICENSE"
#: the license identifiers the Hugging Face hub accepts (huggingface.co/docs/hub/repositories-licenses)
HUB_LICENSES = frozenset("""
apache-2.0 mit openrail bigscience-openrail-m creativeml-openrail-m bigscience-bloom-rail-1.0 bigcode-openrail-m afl-3.0
artistic-2.0 bsl-1.0 bsd bsd-2-clause bsd-3-clause bsd-3-clause-clear c-uda cc cc0-1.0 cc-by-2.0 cc-by-2.5 cc-by-3.0
cc-by-4.0 cc-by-sa-3.0 cc-by-sa-4.0 cc-by-nc-2.0 cc-by-nc-3.0 cc-by-nc-4.0 cc-by-nd-4.0 cc-by-nc-nd-3.0 cc-by-nc-nd-4.0
cc-by-nc-sa-2.0 cc-by-nc-sa-3.0 cc-by-nc-sa-4.0 cdla-sharing-1.0 cdla-permissive-1.0 cdla-permissive-2.0 wtfpl ecl-2.0
epl-1.0 epl-2.0 etalab-2.0 eupl-1.1 agpl-3.0 gfdl gpl gpl-2.0 gpl-3.0 lgpl lgpl-2.1 lgpl-3.0 isc lppl-1.3c ms-pl mpl-2.0
odc-by odbl openrail++ osl-3.0 postgresql ofl-1.1 ncsa unlicense zlib pddl lgpl-lr unknown
""".split())
def check_license(license: str | None) -> str | None:
    """A hub license identifier (lower case), or None for the default; anything else is refused."""
    if license is None:
        return None
    name = license.strip().lower()
    if name not in HUB_LICENSES:
        raise SsmtlError(f"--license {license}: not a license identifier of the Hugging Face hub (e.g. apache-2.0, "
                         "cc-by-4.0, cc-by-nc-4.0, mit); leave it out to describe the terms in LICENSE yourself")
    return name


def license_text(info: RunInfo) -> str:
    """The ``LICENSE`` of an export whose license the exporter did not name."""
    data = f"the dataset `{info.data['dataset']}`" if info.data.get("dataset") else "its training data"
    return (f"Terms of use of these weights: not set.\n\n"
            f"These weights were trained by ssmtl {__version__} on {data}. ssmtl itself is licensed under "
            "Apache-2.0, but it does not set the terms of the weights it trains: they are bound by the terms of the "
            "data they were trained on (many medical imaging datasets allow research use only and forbid "
            "redistribution), which ssmtl cannot know.\n\n"
            "Before sharing, decide the terms and either export again with `ssmtl export --license ID` (a license "
            "identifier of the Hugging Face hub, e.g. cc-by-nc-4.0) or replace this file and the `license_name` of "
            "README.md with the actual terms.\n")


def _model_index(info: RunInfo, config: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The evaluation as the hub's ``model-index`` (3D Dice per structure and their mean), or None."""
    results = info.evaluation
    if config["part"] != "finetuned" or not results:
        return None

    def finite(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

    per_class = results.get("per_class") or {}
    metrics = [{"type": "dice", "name": f"3D Dice: {name}", "value": round(float(per_class[name]["dice"]), 4)}
               for name in results.get("class_names") or [] if finite((per_class.get(name) or {}).get("dice"))]
    if finite(results.get("mean_dice")):
        metrics.insert(0, {"type": "dice", "name": "mean 3D Dice", "value": round(float(results["mean_dice"]), 4)})
    if not metrics:
        return None
    dataset = str(info.data.get("dataset") or "ssmtl-cache")
    fingerprint = str(info.data.get("fingerprint") or "")[:12]
    return [{"name": info.name, "results": [{
        "task": {"type": "image-segmentation", "name": "Image Segmentation"},
        "dataset": {"type": dataset, "name": f"{dataset} (cache {fingerprint})", "split": str(results.get("split", "test"))},
        "metrics": metrics,
    }]}]


def front_matter(info: RunInfo, config: dict[str, Any], license: str | None) -> dict[str, Any]:
    """The card's YAML metadata, as the Hugging Face hub reads it."""
    extra = ["monai", "monai-bundle"] if config["format"] == "monai-bundle" else []
    meta: dict[str, Any] = {
        "library_name": "ssmtl",
        "license": license or "other",
        **({} if license else {"license_name": UNSET_LICENSE, "license_link": LICENSE_FILE}),
        "pipeline_tag": "image-segmentation" if config["part"] == "finetuned" else "image-feature-extraction",
        "tags": list(dict.fromkeys(["medical-imaging", "self-supervised-learning", "ssmtl", config["format"], *extra,
                                    *filter(None, [info.network.get("name")]), *modality_names(info.data)])),
    }
    index = _model_index(info, config)
    if index is not None:
        meta["model-index"] = index
    return meta


def _front_matter(info: RunInfo, config: dict[str, Any], license: str | None) -> str:
    return "---\n" + yaml.safe_dump(front_matter(info, config, license), sort_keys=False, allow_unicode=True) + "---\n"


def _fmt(value: Any, digits: int) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _shape(shape: list[Any]) -> str:
    return "(" + ", ".join(map(str, shape)) + ")"


def _inputs(info: RunInfo, config: dict[str, Any]) -> list[str]:
    spec = config["inputs"]["images"]
    trained = spec.get("trained_size")
    size = (f"trained on {trained[0]} x {trained[1]} slices" if trained else
            "the slice size it was trained at is not recorded and its cache is not readable")
    lines = [f"- input `images`: float32, shape {_shape(spec['shape'])}; height and width multiples of "
             f"{spec['size_multiple_of']} ({size})."]
    preprocess = info.preprocess or {}
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
    counts = data.get("modalities")
    modalities = (", ".join(f"{m}: {n}" for m, n in counts.items()) if isinstance(counts, dict)
                  else ", ".join(modality_names(data))) or "unknown"
    lines = [f"- cache fingerprint `{data.get('fingerprint')}`" + (f" (dataset `{data['dataset']}`)" if data.get("dataset") else "")]
    if "subjects" in data:
        lines.append(f"- {data['subjects']} subjects, {data.get('volumes')} volumes (modality: {modalities}), "
                     f"slices of {' x '.join(map(str, data.get('slice_shape') or []))} pixels")
    if info.kind == "pretrain":
        lines.append(f"- pre-training read {data.get('trained_on')} volumes (the cache's training subjects; "
                     "held-out validation and test subjects stay out by default)")
    else:
        lines.append(f"- fine-tuned on {len(info.labeled_subjects)} labeled subject(s){named(info, info.labeled_subjects)}")
    return lines


def named(info: RunInfo, subjects: list[str]) -> str:
    """`` (subject-002, subject-007)``: the subjects as a shareable file names them; nothing when
    the cache is gone and no pseudonym can be looked up."""
    if not subjects or not (info.names.known or info.names.identify):
        return ""
    return " (" + ", ".join(info.names.subjects(subjects)) + ")"


def identified_warning(info: RunInfo) -> str | None:
    """The line a file written with ``--identify-subjects`` opens with, or None."""
    if not info.names.identify:
        return None
    return ("Internal use only: this file names subjects by their real identifiers (written with "
            "--identify-subjects). Do not share or publish it; write it again without that flag to share it.")


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
        start = ("random initialisation (scratch)" if info.init in (None, "none")
                 else f"the pre-training run `{path_name(str(info.init))}` (tasks: {tasks})")
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
    tested = list(results.get("test_subjects") or [])
    lines = [f"3D Dice and HD95 per structure on the {len(tested)} held-out `{results.get('split', 'test')}` subject(s)"
             f"{named(info, tested)} ({results.get('space', 'cache')} grid):", "", "| structure | Dice | HD95 (mm) |", "|---|---|---|"]
    for name in results.get("class_names") or []:
        scores = (results.get("per_class") or {}).get(name) or {}
        lines.append(f"| {name} | {_fmt(scores.get('dice'), 3)} | {_fmt(scores.get('hd95'), 2)} |")
    lines.append(f"| **mean** | **{_fmt(results.get('mean_dice'), 3)}** | **{_fmt(results.get('mean_hd95'), 2)}** |")
    if results.get("init_saw_test_subjects"):
        lines += ["", "The pre-training saw the test subjects' images (without labels): these scores are transductive."]
    return lines


def _usage(config: dict[str, Any]) -> list[str]:
    fmt, file = config["format"], config["file"]
    channels, (height, width) = config["inputs"]["images"]["shape"][1], config["inputs"]["images"]["trace_size"]
    if fmt == "monai-bundle":
        return ["With MONAI alone (no ssmtl needed), from this folder: every NIfTI scan of `SCANS` gets a label map "
                "`OUT/NAME_seg.nii.gz` on its own grid.", "", "```bash",
                "python -m monai.bundle run --config_file configs/inference.json --bundle_root . "
                "--dataset_dir SCANS --output_dir OUT", "```", "",
                f"`{file}` alone is the network + head as TorchScript: slices prepared as `configs/inference.json` "
                f"prepares them, ({channels}, {height}, {width}) each, give class logits."]
    if fmt == "torchscript":
        code = ["import torch", "", f'model = torch.jit.load("{file}").eval()',
                f"outputs = model(torch.zeros(1, {channels}, {height}, {width}))  # plain PyTorch, no ssmtl needed"]
    elif fmt == "onnx":
        code = ["import numpy as np", "import onnxruntime", "", f'session = onnxruntime.InferenceSession("{file}")',
                f'outputs = session.run(None, {{"images": np.zeros((1, {channels}, {height}, {width}), np.float32)}})']
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


def _license_line(license: str | None) -> str:
    if license:
        return f"`{license}`, as the exporter chose (`ssmtl export --license {license}`)."
    return ("Not set: the terms of these weights follow the terms of their training data, which ssmtl cannot know. "
            f"Read `{LICENSE_FILE}` and decide them before sharing (`ssmtl export --license ID`).")


def render_model_card(info: RunInfo, config: dict[str, Any], license: str | None = None, *, metadata: bool = True) -> str:
    """The card: YAML front matter (``metadata``), then the text. ``license``: a hub identifier, or None (unset)."""
    part, fmt = config["part"], config["format"]
    what = config["part_description"]
    warning = identified_warning(info)
    lines = [
        *([_front_matter(info, config, license)] if metadata else []),
        f"# {info.name}: {part} ({fmt})", "",
        *([f"**{warning}**", ""] if warning else []),
        f"{what[0].upper()}{what[1:]}, from the ssmtl {'pre-training' if info.kind == 'pretrain' else 'fine-tuning'} "
        f"run `{info.name}`. ssmtl implements self-supervised multi-task pre-training on the 2D slices of CT and MR "
        f"volumes ({PAPER}).", "",
        "## Input and output", "", *_inputs(info, config), "",
        "## Data", "", *_data(info), "",
        "## Training", "", *_training(info), "",
        "## Evaluation", "", *_evaluation(info), "",
        "## How to use", "", *_usage(config), "",
        "## License", "", _license_line(license), "",
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
              "```json", json.dumps(shareable(info.config), indent=2, default=str), "```", "", "</details>", ""]
    return "\n".join(lines)
