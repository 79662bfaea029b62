"""Named views and the per-step feature cache shared by all tasks.

A *view* is a batch of network inputs derived from the sampled sequences (for
example the augmented sequence, or a masked copy). :class:`StepContext` builds
each view at most once per step and runs the shared encoder (and decoder) on it
at most once, however many tasks ask: tasks that need the same view share one
forward pass, and no input is encoded twice.

Built-in views (N = batch size x sequence length k):

* ``raw``: the sampled slices, un-augmented, (N, 1, H, W).
* ``sequence``: one random view per sequence (same crop/flip/rotation for its k
  slices, per-slice intensity jitter).
* ``sequence_b``: a second, independent random view of the same slices (MoCo keys,
  dense correspondence).

Tasks may also *transform* a view every task sees (``PretextTask.view_transforms``):
``reconstruct`` masks the shared ``sequence`` view itself by default, so one
encoder + decoder pass serves the encoder tasks and the dense tasks alike.

The decoder runs on every slice of a view, or (``train.decoder_slices="one"``) on
one random slice per sequence: ``ctx.decoder_rows`` says which rows of the flat
view ``ctx.decode`` returned, and ``ctx.decoded(t)`` picks the same rows of any
per-slice tensor. Dense tasks take their targets through it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any, Callable, Mapping

import torch
from einops import rearrange

from ssmtl.api.errors import SsmtlError
from ssmtl.api.network import SharedNetwork, global_pool


class _SelectRows(torch.autograd.Function):
    """``x.index_select(0, rows)`` whose gradient has ``x``'s own strides.

    index_select's backward scatters into a new *contiguous* tensor. With channels_last
    features that gradient meets the encoder tasks' channels_last gradient in an ``add``
    and then the ReLU backward, and element-wise kernels on mixed layouts run on a slow
    strided path (30x slower for a ReLU backward on CPU, bf16 or fp32).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(rows)
        ctx.layout = (x.shape, x.stride())
        return x.index_select(0, rows)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (rows,) = ctx.saved_tensors
        shape, stride = ctx.layout
        grad_input = torch.empty_strided(shape, stride, dtype=grad.dtype, device=grad.device).zero_()
        # distinct rows: a copy, not an add (index_add_ into channels_last bf16 was 20x slower on CPU)
        return grad_input.index_copy_(0, rows, grad), None


def select_rows(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Rows ``rows`` of ``x`` (dim 0; ``rows`` distinct, as ``decoder_rows`` are); the gradient
    keeps ``x``'s memory format."""
    return _SelectRows.apply(x, rows) if x.requires_grad else x.index_select(0, rows)

@dataclass
class SequenceBatch:
    """What the data loader yields: B sequences of k slices from one volume each."""

    slices: torch.Tensor  # (B, k, H, W) float
    positions: torch.Tensor  # (B, k) normalised slice position in [0, 1]
    volume: torch.Tensor  # (B,) int64 volume index in the cache
    slice_index: torch.Tensor  # (B, k) int64 slice index in the volume

    @property
    def batch_size(self) -> int:
        return self.slices.shape[0]

    @property
    def sequence_length(self) -> int:
        return self.slices.shape[1]

    def to(self, device, non_blocking: bool = True) -> "SequenceBatch":
        return SequenceBatch(*(t.to(device, non_blocking=non_blocking) for t in (self.slices, self.positions, self.volume, self.slice_index)))

    def flat_positions(self) -> torch.Tensor:
        """(B*k,) positions, in the row order of every view."""
        return rearrange(self.positions, "b k -> (b k)")


@dataclass
class View:
    """A batch of network inputs. ``theta`` maps view pixels to raw-slice pixels."""

    images: torch.Tensor  # (N, 1, H, W)
    theta: torch.Tensor | None = None  # (N, 2, 3) affine_grid convention
    group: int = 1  # consecutive samples that come from one sequence


ViewBuilder = Callable[["StepContext"], View]
#: ``augmenter(images (N, 1, H, W), group) -> (augmented images, theta (N, 2, 3))``: one
#: random view, the same spatial transform for each run of ``group`` consecutive samples.
Augmenter = Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]
ViewTransform = Callable[["StepContext", View], View]
DECODER_SLICES = ("all", "one")


def _raw(ctx: "StepContext") -> View:
    b = ctx.batch
    # the k slices of a sequence become k consecutive rows of one channel each
    images = rearrange(b.slices, "b k h w -> (b k) 1 h w")
    return View(images=images, theta=None, group=b.sequence_length)


def _augmented(ctx: "StepContext") -> View:
    raw = ctx.view("raw")
    images, theta = ctx.augmenter(raw.images, raw.group)
    return View(images=images, theta=theta, group=raw.group)


BUILTIN_VIEWS: dict[str, ViewBuilder] = {"raw": _raw, "sequence": _augmented, "sequence_b": _augmented}


def task_views(tasks: Mapping[str, Any]) -> tuple[dict[str, ViewBuilder], dict[str, list[ViewTransform]]]:
    """The view builders (built-in + ``task.view_builders()``) and, per view, the
    transforms (``task.view_transforms()``, in task order) of a set of tasks by name.

    Raises :class:`SsmtlError` for a view defined twice or a transform of an unknown view.
    """
    builders = dict(BUILTIN_VIEWS)
    for name, task in tasks.items():
        for view, builder in task.view_builders().items():
            if view in BUILTIN_VIEWS:
                raise SsmtlError(f"task {name!r} defines view {view!r}, which is a built-in view; prefix it, e.g. '{name}/{view}'")
            if view in builders:
                raise SsmtlError(f"task {name!r} defines view {view!r}, which another task already defines")
            builders[view] = builder
    transforms: dict[str, list[ViewTransform]] = {}
    for name, task in tasks.items():
        for view, transform in task.view_transforms().items():
            if view not in builders:
                raise SsmtlError(f"task {name!r} transforms view {view!r}, which no task defines; known: {', '.join(sorted(builders))}")
            transforms.setdefault(view, []).append(transform)
    return builders, transforms


class StepContext:
    """Per-step cache of views and of the shared network's features on them."""

    def __init__(
        self,
        batch: SequenceBatch,
        network: SharedNetwork,
        augmenter: Augmenter,
        builders: dict[str, ViewBuilder],
        step: int = 0,
        memory_format: torch.memory_format = torch.contiguous_format,
        transforms: dict[str, list[ViewTransform]] | None = None,
        decoder_slices: str = "all",
    ):
        if decoder_slices not in DECODER_SLICES:
            raise ValueError(f"decoder_slices must be one of {DECODER_SLICES}, got {decoder_slices!r}")
        self.batch = batch
        self.network = network
        self.augmenter = augmenter
        self.builders = builders
        self.step = step
        self.memory_format = memory_format  # of every view's images (channels_last with train.channels_last)
        self.transforms = transforms or {}
        self.decoder_slices = decoder_slices
        self._views: dict[str, View] = {}
        self._encoded: dict[str, list[torch.Tensor]] = {}
        self._decoded: dict[str, torch.Tensor] = {}

    def view(self, name: str) -> View:
        if name not in self._views:
            if name not in self.builders:
                raise KeyError(f"unknown view {name!r}; known: {', '.join(sorted(self.builders))}")
            view = self.builders[name](self)
            for transform in self.transforms.get(name, ()):
                view = transform(self, view)
            if self.memory_format != torch.contiguous_format:
                view = replace(view, images=view.images.contiguous(memory_format=self.memory_format))
            self._views[name] = view
        return self._views[name]

    def encode(self, name: str) -> list[torch.Tensor]:
        """Multi-scale encoder features of a view (full resolution first)."""
        if name not in self._encoded:
            self._encoded[name] = self.network.encoder(self.view(name).images)
        return self._encoded[name]

    @cached_property
    def decoder_rows(self) -> torch.Tensor | None:
        """Flat indices (into every view's N = B x k rows) of the slices the decoder runs
        on this step, the same for every view; ``None`` when it runs on all of them.

        With ``decoder_slices="one"`` and k > 1: one slice per sequence, drawn at random
        (from torch's RNG, so a resumed run draws the same ones).
        """
        b, k = self.batch.batch_size, self.batch.sequence_length
        if self.decoder_slices == "all" or k == 1:
            return None
        device = self.batch.slices.device
        return torch.arange(b, device=device) * k + torch.randint(k, (b,), device=device)

    def decoded(self, tensor: torch.Tensor) -> torch.Tensor:
        """The rows of a per-slice tensor (N, ...) that match ``decode``'s output."""
        rows = self.decoder_rows
        return tensor if rows is None else tensor.index_select(0, rows)

    def decode(self, name: str) -> torch.Tensor:
        """Full-resolution decoder features of a view (reuses its encoder pass), for the
        rows ``decoder_rows`` selects: (N, C, H, W), or (B, C, H, W) with one slice per sequence."""
        if name not in self._decoded:
            feats = self.encode(name)
            if self.decoder_rows is not None:
                feats = [select_rows(f, self.decoder_rows).contiguous(memory_format=self.memory_format) for f in feats]
            self._decoded[name] = self.network.decoder(feats)
        return self._decoded[name]

    @property
    def encoded_views(self) -> tuple[str, ...]:
        """Names of the views the encoder has run on so far this step, in the order first asked."""
        return tuple(self._encoded)

    @property
    def decoded_views(self) -> tuple[str, ...]:
        """Names of the views the decoder has run on so far this step, in the order first asked."""
        return tuple(self._decoded)

    def pooled(self, name: str) -> torch.Tensor:
        """Globally pooled bottleneck features, (N, C)."""
        return global_pool(self.encode(name)[-1])
