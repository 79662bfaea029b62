"""Writing one part in one format, and checking that what was written computes what torch does.

* ``safetensors``: the weights (no code; load them into the network's class);
* ``torchscript``: ``torch.jit.trace`` of the part, loadable with plain ``torch.jit.load``
  (torch 2.13 marks TorchScript deprecated in favour of ``torch.export``; it still saves and
  loads, and it is what other code and runtimes take today);
* ``onnx``: the TorchScript-based exporter of ``torch.onnx`` (``dynamo=False``: it needs no
  ``onnxscript``), opset 17, with dynamic batch, height and width.

TorchScript files are written without their debug records (``*.debug_pkl``): those hold the
absolute paths of the Python files the modules were traced from (the local installation, a
user's home), and a shareable file carries no local path. ``torch.jit.load`` does not need them.

The parity check runs the written file (``torch.jit.load``, onnxruntime) on a fresh input
of another batch size and compares every output with the torch module's; the largest
absolute difference is recorded in the export's ``config.json``.
"""

from __future__ import annotations

import importlib.util
import io
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from ssmtl.api.errors import SsmtlError
from ssmtl.storage.files import atomic_write, save_tensors
from ssmtl.publish.parts import PartModule

FORMATS = ("safetensors", "torchscript", "onnx")
WEIGHTS_FILE = {"safetensors": "model.safetensors", "torchscript": "model.pt", "onnx": "model.onnx"}
INPUT_NAME = "images"
OPSET = 17
#: what the exported file may differ from torch by (float32, CPU)
TOLERANCE = 1e-4


def example_input(in_channels: int, size: int, batch: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, in_channels, size, size, generator=generator)


def save_torchscript(module: torch.nn.Module, path: Path, example: torch.Tensor, extra_files: dict[str, str] | None = None) -> None:
    """``torch.jit.trace`` of ``module`` at ``path`` (atomically), without the debug records that
    name local source paths; ``extra_files`` are stored inside (``torch.jit.load(_extra_files=...)``)."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # shape checks traced as constants; the deprecation of TorchScript
        traced = torch.jit.trace(module, example)
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer, _extra_files=extra_files or {})

    def write(tmp: Path) -> None:
        with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as source, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as target:
            for entry in source.infolist():
                if not entry.filename.endswith(".debug_pkl"):
                    target.writestr(entry, source.read(entry.filename))

    atomic_write(path, write)


def write_part(part: PartModule, fmt: str, path: Path, example: torch.Tensor) -> None:
    """``part`` in format ``fmt`` at ``path`` (atomically)."""
    if fmt == "safetensors":
        save_tensors(path, part.weights)
    elif fmt == "torchscript":
        save_torchscript(part.module, path, example)
    elif fmt == "onnx":
        if importlib.util.find_spec("onnx") is None:
            raise SsmtlError("--format onnx needs the onnx package: pip install 'ssmtl[onnx]'")
        # every output its own height and width: encoder scales are not the input's size, and a
        # shared name would tell runtimes they are (onnxruntime then warns while reusing buffers)
        axes = {INPUT_NAME: {0: "batch", 2: "height", 3: "width"}}
        axes.update({name: {0: "batch", 2: f"{name}_height", 3: f"{name}_width"} for name in part.outputs})

        def export(tmp: Path) -> None:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the legacy exporter's deprecation and tracer warnings
                torch.onnx.export(part.module, (example,), str(tmp), input_names=[INPUT_NAME], output_names=part.outputs,
                                  dynamic_axes=axes, opset_version=OPSET, dynamo=False)

        atomic_write(path, export)
    else:
        raise SsmtlError(f"--format {fmt}: unknown format; use one of {', '.join(FORMATS)}")


def _torch_outputs(part: PartModule, images: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        out = part.module(images)
    return list(out) if isinstance(out, tuple) else [out]


def _max_error(expected: list[torch.Tensor], actual: list[Any]) -> float:
    if len(expected) != len(actual):
        raise SsmtlError(f"the exported model returns {len(actual)} outputs, torch {len(expected)}")
    return max(float((torch.as_tensor(a) - e).abs().max()) for e, a in zip(expected, actual))


def check_parity(part: PartModule, fmt: str, path: Path, images: torch.Tensor) -> dict[str, Any]:
    """Run the written file on ``images``: ``{"max_abs_error", "runtime", "tolerance"}``; raises when
    the error exceeds :data:`TOLERANCE`. An ONNX file without onnxruntime installed is not checked."""
    if fmt == "safetensors":
        from safetensors.torch import load_file

        saved = load_file(str(path))
        error = max((float((saved[k].float() - v.float()).abs().max()) for k, v in part.weights.items() if v.numel()), default=0.0)
        runtime = "safetensors (weights compared)"
    elif fmt == "torchscript":
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            out = torch.jit.load(str(path))(images)
        error = _max_error(_torch_outputs(part, images), list(out) if isinstance(out, (tuple, list)) else [out])
        runtime = f"torch.jit {torch.__version__}"
    else:
        if importlib.util.find_spec("onnxruntime") is None:
            return {"checked": False, "reason": "onnxruntime is not installed (pip install 'ssmtl[onnx]')"}
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        error = _max_error(_torch_outputs(part, images), session.run(None, {INPUT_NAME: images.numpy()}))
        runtime = f"onnxruntime {onnxruntime.__version__}"
    if not error <= TOLERANCE:
        raise SsmtlError(f"{path}: the exported model differs from torch by {error:.3g} (more than {TOLERANCE:g})")
    return {"checked": True, "max_abs_error": error, "tolerance": TOLERANCE, "runtime": runtime,
            "input_shape": list(images.shape)}
