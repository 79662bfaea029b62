"""An exponential moving average of the fine-tuned weights (``train.select: ema``).

After every optimizer step that was made (a step skipped for a non-finite loss is not),
each floating entry of the model's state dict (parameters and normalisation statistics)
becomes ``avg <- decay * avg + (1 - decay) * w``; integer entries (BatchNorm's batch
counter) are copied. The average starts from the weights the run starts from, so after
``n`` updates it still holds ``decay ** n`` of them (:attr:`WeightAverage.start_share`,
recorded in run.json): 0.99 keeps 0.004 % after 1000 steps and averages over about the
last 100 (``1 / (1 - decay)``); 0.999, MoCo's momentum, would still hold 37 % of the start
after 1000 steps.

The average and its update count are part of every checkpoint (``ema.safetensors``), so
a resumed run keeps the same average as an uninterrupted one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ssmtl.api.errors import SsmtlError
from ssmtl.storage.files import load_tensors, save_tensors

EMA_WEIGHTS = "ema.safetensors"  # inside each checkpoint directory


class WeightAverage:
    """The running average of ``model``'s state dict (same keys, on the model's device)."""

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"the EMA decay must lie in (0, 1), got {decay}")
        self.model, self.decay = model, decay
        self.weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.updates = 0

    @property
    def start_share(self) -> float:
        """The weight the starting weights still have in the average: ``decay ** updates``."""
        return self.decay ** self.updates

    @torch.no_grad()
    def update(self) -> None:
        for key, value in self.model.state_dict().items():
            average = self.weights[key]
            if average.is_floating_point():
                average.mul_(self.decay).add_(value.detach().to(average.dtype), alpha=1.0 - self.decay)
            else:
                average.copy_(value)
        self.updates += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        """CPU copies of the average, keyed like the model's state dict."""
        return {k: v.detach().to("cpu", copy=True) for k, v in self.weights.items()}

    def record(self) -> dict[str, Any]:
        return {"decay": self.decay, "updates": self.updates, "start_share": self.start_share}

    # -- checkpoints ---------------------------------------------------------------------
    def save(self, directory: Path) -> dict[str, Any]:
        """Write the average into a checkpoint being assembled; the JSON state to record with it."""
        save_tensors(Path(directory) / EMA_WEIGHTS, self.weights)
        return {"ema": {"decay": self.decay, "updates": self.updates}}

    def load(self, directory: Path, state: dict[str, Any]) -> None:
        """Restore from a checkpoint written by :meth:`save`."""
        path = Path(directory) / EMA_WEIGHTS
        saved = state.get("ema")
        if not path.is_file() or not isinstance(saved, dict) or not isinstance(saved.get("updates"), int):
            raise SsmtlError(f"{directory}: the checkpoint holds no EMA of the weights ({EMA_WEIGHTS}); "
                             "it was not written by a run with train.select=ema")
        weights = load_tensors(path, expected=self.weights, what="EMA weights")
        for key, value in weights.items():
            self.weights[key].copy_(value)
        self.updates = saved["updates"]
