"""The one predictor of a fine-tuned model: validation, evaluation and ``ssmtl predict`` share it.

As nnU-Net's predictor serves its validation, its evaluation and its inference alike, one
:class:`Predictor` turns a preprocessed volume (D, H, W) into class ids, so what validation
selects on, what evaluation scores and what a user gets are computed the same way:

* :meth:`Predictor.cache_grid`: the head's prediction on the cache grid (validation during
  fine-tuning, and evaluation on the cache grid);
* :meth:`Predictor.native`: the prediction mapped back to a scan's own voxel grid
  (``ssmtl predict`` and evaluation at native resolution). Slices run in batches
  (``batch_size``) under optional autocast; each batch goes back to native resolution on
  the device (:class:`~ssmtl.data.native.InPlaneMap`).

**Whole scans.** The network was trained on ``window x window`` slices (the cache's size).
A slice wider than that (a scan preprocessed over its whole field of view) is predicted
with overlapping sliding windows, MONAI's ``sliding_window_inference``, blended as
:class:`Windows` says; a slice of the window's size is one plain forward pass, exactly
what validation computes. With ``Windows.flip_axes`` each slice is also predicted
mirrored along those in-plane axes and the logits averaged (test-time augmentation, as
nnU-Net's mirroring).

**Back to the scan** (``resample``):

* ``resample="linear"``: class probabilities are interpolated bilinearly to the native
  grid, then the arg-max taken there (as nnU-Net exports its predictions); boundaries
  are smooth where the cache is coarser than the scan.
* ``resample="nearest"``: the head's own prediction on the cache grid, each native voxel
  taking the cache pixel that covers it (blocky where the cache is coarser; the head's
  ``predict`` rule exactly, and lossless where the cache is at least as fine).
* ``resample="auto"`` (default): ``nearest`` where the cache is at least as fine as the
  scan along both in-plane axes, ``linear`` where it is coarser. Measured on real label
  maps (``docs/native.md``): linear recovers more of a structure from a coarser grid,
  and nearest is exact on a finer one, where linear blurs thin structures.
"""

from __future__ import annotations

import itertools
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np
import torch

from ssmtl.api.errors import SsmtlError
from ssmtl.training.accelerator import accelerator_type, mps_available
from ssmtl.data.native import InPlaneMap
from ssmtl.data.scan_writer import PROBABILITY_LEVELS
from ssmtl.data.transform import VolumeTransform

Resample = Literal["auto", "linear", "nearest"]
RESAMPLING = ("auto", "linear", "nearest")
PRECISIONS = ("no", "bf16", "fp16")
BLENDS = ("gaussian", "constant")
#: nnU-Net's default tile step of half a window (tile_step_size 0.5): every pixel away from
#: the scan's edge is seen by at least two windows per axis, and with Gaussian weights each
#: is decided by a window that has it near its centre, with context on every side.
DEFAULT_OVERLAP = 0.5
#: The Gaussian's standard deviation as a fraction of the window (nnU-Net's and MONAI's 1/8).
GAUSSIAN_SIGMA = 0.125
#: In-plane axes of a slice: 0 rows, 1 columns (the ``flip_axes`` of run.json).
IN_PLANE_AXES = (0, 1)


@dataclass(frozen=True)
class Windows:
    """How slices wider than the network's window are predicted, and the test-time flips.

    Attributes:
        overlap: fraction of a window shared with its neighbour along each axis, in [0, 1)
            (nnU-Net's ``tile_step_size`` is ``1 - overlap``).
        blend: ``gaussian`` (a window's centre counts more than its edges, as nnU-Net) or
            ``constant`` (every window alike).
        flip_axes: in-plane axes (0 rows, 1 columns) along which each slice is also predicted
            mirrored; the logits of every combination of flips are averaged. Empty: no TTA.
    """

    overlap: float = DEFAULT_OVERLAP
    blend: str = "gaussian"
    flip_axes: tuple[int, ...] = ()

    def __post_init__(self):
        if not 0.0 <= self.overlap < 1.0:
            raise SsmtlError(f"--overlap {self.overlap}: expected a fraction in [0, 1), e.g. {DEFAULT_OVERLAP}")
        if self.blend not in BLENDS:
            raise SsmtlError(f"--blend {self.blend!r}: use {' or '.join(BLENDS)}")
        bad = [a for a in self.flip_axes if a not in IN_PLANE_AXES]
        if bad:
            raise SsmtlError(f"flip axes {list(self.flip_axes)}: in-plane axes are 0 (rows) and 1 (columns)")

    def flips(self) -> list[tuple[int, ...]]:
        """Every combination of the flip axes, as tensor dims of (N, C, H, W); the first is no flip."""
        axes = sorted(set(self.flip_axes))
        return [tuple(a - 2 for a in combo) for n in range(len(axes) + 1) for combo in itertools.combinations(axes, n)]

    def record(self) -> dict:
        return {"overlap": self.overlap, "blend": self.blend, "tta_flip_axes": sorted(set(self.flip_axes))}


def allowed_flips(run: dict, wanted: bool, log: Callable[[str], None] = print) -> tuple[int, ...]:
    """The in-plane axes ``--tta`` may mirror: the run's ``flip_axes`` (absent: none).

    A lateralised anatomy (the heart) allows no flip: asking for TTA there is one warning
    line, and the prediction runs without it.
    """
    if not wanted:
        return ()
    declared = run.get("flip_axes") or []
    axes = tuple(sorted({int(a) for a in declared if isinstance(a, (int, float)) and int(a) in IN_PLANE_AXES}))
    if not axes:
        log("warning: --tta: the run's data allows no mirrored slice (run.json flip_axes is empty or absent: "
            "mirroring would show another anatomy); predicting without test-time augmentation")
    return axes


def resolve_device(device: str | None) -> torch.device:
    """``auto`` (or None): a CUDA GPU when there is one, else Apple's GPU (MPS), else the CPU;
    otherwise the named device, checked."""
    if device in (None, "auto"):
        return torch.device(accelerator_type())
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise SsmtlError(f"--device {device!r}: not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise SsmtlError(f"--device {device}: no CUDA device is available here; use --device cpu")
    if resolved.type == "mps" and not mps_available():
        raise SsmtlError(f"--device {device}: no Apple GPU (MPS) is available here; use --device cpu")
    return resolved


def autocast(device: torch.device, mixed_precision: str):
    """The autocast context for ``mixed_precision`` (no, bf16, fp16) on ``device``."""
    if mixed_precision not in PRECISIONS:
        raise SsmtlError(f"--mixed-precision {mixed_precision!r}: use {', '.join(PRECISIONS)}")
    if mixed_precision == "no":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if mixed_precision == "bf16" else torch.float16)


def resolve_resampling(resample: str, transform: VolumeTransform) -> str:
    """``linear`` or ``nearest`` for this volume (``auto``: nearest unless the cache is coarser)."""
    if resample not in RESAMPLING:
        raise SsmtlError(f"--resample {resample!r}: use {', '.join(RESAMPLING)}")
    if resample == "auto":
        return "nearest" if min(transform.rows.scale, transform.cols.scale) >= 1.0 else "linear"
    return resample


@dataclass
class NativePrediction:
    """A prediction on the native grid, in slice layout (see :class:`~ssmtl.data.native.InPlaneMap`).

    Attributes:
        labels: uint8 (D, Y, X) class ids.
        probabilities: uint8 (D, C, Y, X) probabilities x 255, or None.
        cache_labels: uint8 (D, H, W) the head's prediction on the cache grid, or None.
    """

    labels: np.ndarray
    probabilities: np.ndarray | None = None
    cache_labels: np.ndarray | None = None


class Predictor:
    """A fine-tuned model on a device, predicting volumes slice batch by slice batch, in eval mode.

    ``window``: the slice size the network was trained on (the cache's); wider slices are
    predicted in sliding windows of that size (None: every slice in one pass).
    """

    def __init__(self, model, device: torch.device, *, batch_size: int = 32, mixed_precision: str = "no",
                 window: int | tuple[int, int] | None = None, windows: Windows = Windows()):
        if batch_size < 1:
            raise SsmtlError(f"--batch-size {batch_size}: expected at least 1")
        self.model = model.to(device).eval()
        self.device = device
        self.batch_size = batch_size
        self.mixed_precision = mixed_precision
        self.window = (window, window) if isinstance(window, int) else (tuple(int(n) for n in window) if window else None)
        self.windows = windows
        autocast(device, mixed_precision)  # checks the name before any work

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.window is None or tuple(x.shape[-2:]) == self.window:
            return self.model(x)  # a slice of the training size: one pass, exactly as validation predicts it
        from monai.inferers import sliding_window_inference

        return sliding_window_inference(x, roi_size=self.window, sw_batch_size=self.batch_size,
                                        predictor=self.model, overlap=self.windows.overlap, mode=self.windows.blend,
                                        sigma_scale=GAUSSIAN_SIGMA)

    def _logits(self, image: np.ndarray, lo: int, hi: int) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(image[lo:hi, None], dtype=np.float32)).to(self.device)
        with autocast(self.device, self.mixed_precision):
            flips = self.windows.flips()
            logits = self._forward(x)
            for dims in flips[1:]:
                logits = logits + self._forward(x.flip(dims)).flip(dims)
            return logits / len(flips) if len(flips) > 1 else logits

    @torch.no_grad()
    def cache_grid(self, image: np.ndarray) -> np.ndarray:
        """(D, H, W) uint8 class ids of a (D, H, W) cache-grid image: the head's own ``predict``.

        The model is put in eval mode first: validation calls this between training steps,
        and the next step puts it back in training mode.
        """
        self.model.eval()
        slices = []
        for lo in range(0, image.shape[0], self.batch_size):
            logits = self._logits(image, lo, min(image.shape[0], lo + self.batch_size))
            slices.append(self.model.head.predict(logits).to("cpu", torch.uint8).numpy())
        return np.concatenate(slices, axis=0) if slices else np.zeros(image.shape, dtype=np.uint8)

    @torch.no_grad()
    def native(self, image: np.ndarray, transform: VolumeTransform, *, resample: Resample = "auto",
               probabilities: bool = False, cache_labels: bool = False,
               on_slices: Callable[[int], None] | None = None) -> NativePrediction:
        """Predict a (D, H, W) cache-grid image and map it to the native grid of ``transform``.

        ``cache_labels`` also keeps the prediction on the cache grid (evaluation scores both).
        """
        self.model.eval()
        resample = resolve_resampling(resample, transform)
        plane = InPlaneMap(transform)
        depth = image.shape[0]
        labels = np.zeros((depth, *plane.native_shape), dtype=np.uint8)
        on_cache = np.zeros(image.shape, dtype=np.uint8) if cache_labels else None
        kept = None
        for lo in range(0, depth, self.batch_size):
            hi = min(depth, lo + self.batch_size)
            logits = self._logits(image, lo, hi)
            head = self.model.head
            probs = head.probabilities(logits).float() if (resample == "linear" or probabilities) else None
            predicted = head.predict(logits).to("cpu", torch.uint8).numpy() if (resample == "nearest" or cache_labels) else None
            if on_cache is not None:
                on_cache[lo:hi] = predicted
            if resample == "linear":
                native = plane.linear(probs)
                labels[lo:hi] = native.argmax(dim=1).to("cpu", torch.uint8).numpy()
            else:
                labels[lo:hi] = plane.nearest(predicted)
                native = plane.linear(probs) if probabilities else None
            if probabilities:
                if kept is None:
                    kept = np.zeros((depth, native.shape[1], *plane.native_shape), dtype=np.uint8)
                kept[lo:hi] = (native * PROBABILITY_LEVELS).round().clamp(0, PROBABILITY_LEVELS).to("cpu", torch.uint8).numpy()
            if on_slices is not None:
                on_slices(hi - lo)
        return NativePrediction(labels=labels, probabilities=kept, cache_labels=on_cache)
