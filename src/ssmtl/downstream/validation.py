"""Fine-tuning that knows when it is done: validation volumes, the best step, a plateau.

**Which volumes validate** (``validation``, recorded in ``split.json`` and ``run.json``):

* ``auto`` (default): the split's ``val`` subjects when it has some (stored in the cache
  by ``cache build --val-fraction``, or drawn with ``val_fraction``); otherwise up to
  ``val_volumes`` labeled training subjects that the label budget leaves unused (drawn
  with the labeled seed, never among the budget's); otherwise none.
* ``budget``: carve ``max(1, round(0.2 n))`` of the ``n`` budget subjects for
  validation and train on the rest (for a user who has exactly ``n`` labels); needs n >= 2.
* ``none``: no validation.

With no validation volume the run says so on stderr and in ``run.json`` and trains for
the fixed schedule (``--steps auto`` then means ``max_steps``); nothing is selected.

**When**: every ``validate_every`` steps and at the last step, the model (eval mode)
predicts every validation volume on the cache grid and scores it with the same 3D Dice
as ``ssmtl evaluate`` (:func:`~ssmtl.downstream.metrics.dice_per_class`, then
:func:`~ssmtl.downstream.metrics.summarise`: the mean over structures of the per-structure
means over volumes). A score above the best by more than ``min_delta`` is a new best:
its weights are kept (in memory and in every checkpoint, as ``best.safetensors``) and
become ``model.safetensors`` at the end (``train.select: best``; with ``last`` or ``ema``
the curve and the best step are recorded but select nothing). With ``steps: auto``
training stops once ``patience`` steps have passed without a new best (or at
``max_steps``); with LP-FT (``lp_steps``) the patience counts from the encoder's first
step at the earliest, so a run cannot stop before its encoder has trained.

Resume is exact: the best score, its step, the curve and the best weights are part of
every checkpoint, so a resumed run selects the same step as an uninterrupted one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ssmtl.api.errors import SsmtlError
from ssmtl.storage.files import check_shape, load_tensors, save_tensors
from ssmtl.downstream.metrics import dice_per_class, summarise
from ssmtl.downstream.predictor import Predictor

VALIDATION_SOURCES = ("auto", "budget", "none")
BEST_WEIGHTS = "best.safetensors"  # inside each checkpoint directory
_BUDGET_FRACTION = 0.2


@dataclass
class ValidationPlan:
    """Which subjects train and which validate, and why."""

    train: list[str]
    val: list[str]
    source: str  # "split", "unused labeled subjects", "carved from the budget", "none"
    reason: str

    def record(self) -> dict[str, Any]:
        return {"source": self.source, "subjects": self.val, "reason": self.reason}


def plan_validation(split: dict[str, Any], labeled: list[str], mode: str, val_volumes: int, seed: int) -> ValidationPlan:
    """The validation subjects for a run whose label budget chose ``labeled`` from ``split["train"]``."""
    budget = len(labeled)
    if mode == "none":
        return ValidationPlan(labeled, [], "none", "validation is off (validation: none)")
    if mode == "budget":
        if budget < 2:
            return ValidationPlan(labeled, [], "none", f"validation: budget needs at least 2 labeled subjects, the budget is {budget}")
        order = [labeled[i] for i in np.random.default_rng(seed).permutation(budget)]
        n_val = max(1, int(math.floor(_BUDGET_FRACTION * budget + 0.5)))
        return ValidationPlan(sorted(order[n_val:]), sorted(order[:n_val]), "carved from the budget",
                              f"{n_val} of the {budget} labeled subjects validate, {budget - n_val} train")
    stored = list(split.get("val") or [])
    if stored:
        where = "stored in the cache" if split.get("source") == "cache" else "drawn with val_fraction"
        return ValidationPlan(labeled, sorted(stored), "split", f"the split's {len(stored)} val subject(s), {where}")
    unused = sorted(set(split.get("train") or []) - set(labeled))
    if unused and val_volumes > 0:
        order = [unused[i] for i in np.random.default_rng(seed).permutation(len(unused))]
        chosen = sorted(order[:val_volumes])
        return ValidationPlan(labeled, chosen, "unused labeled subjects",
                              f"{len(chosen)} labeled training subject(s) outside the budget of {budget}")
    return ValidationPlan(labeled, [], "none",
                          f"no room for validation: {budget} labeled subject(s) train, none is left over and the split has no val subjects")


@dataclass
class ValidationState:
    """What a checkpoint keeps of validation (JSON), besides the best weights."""

    best_dice: float | None = None
    best_step: int | None = None
    last_step: int = 0
    stopped: bool = False
    curve: list[list[float]] = field(default_factory=list)  # [step, mean Dice]

    def to_json(self) -> dict[str, Any]:
        return {"best_dice": self.best_dice, "best_step": self.best_step, "last_step": self.last_step,
                "stopped": self.stopped, "curve": self.curve}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None, where: Path | str = "checkpoint.json") -> "ValidationState":
        """Read back :meth:`to_json`; an edited state is one error naming ``where``."""
        if not data:
            return cls()
        number = (int, float, type(None))
        check_shape(data, Path(where), "the validation state", {"best_dice": number, "best_step": (int, type(None)),
                                                                "last_step": int, "stopped": bool, "curve": list})
        if any(not isinstance(p, list) or len(p) != 2 or not all(isinstance(v, (int, float)) for v in p) for p in data.get("curve", [])):
            raise SsmtlError(f"{where}: the validation state: 'curve' should list [step, Dice] pairs (edited or damaged?)")
        return cls(**{k: data[k] for k in ("best_dice", "best_step", "last_step", "stopped", "curve") if k in data})


class Validator:
    """Scores the model on the validation volumes, tracks the best step, decides when to stop.

    Every process runs it alike (the weights and normalisation buffers are the same on all
    of them), so they take the same decision without communicating.
    """

    def __init__(self, cache, volumes: list[int], model, device, *, every: int, patience: int | None,
                 min_delta: float, num_classes: int, keep_best: bool = True, plateau_from: int = 0):
        self.cache, self.volumes, self.model = cache, volumes, model
        self.predictor = Predictor(model, torch.device(device))
        self.every, self.patience, self.min_delta = every, patience, min_delta
        self.num_classes = num_classes
        self.keep_best = keep_best  # False: the best step is reported, its weights are not kept
        self.plateau_from = plateau_from  # no plateau counts before this step (LP-FT: the encoder's first step)
        self.state = ValidationState()
        self.best_weights: dict[str, torch.Tensor] | None = None

    def score(self) -> float:
        """Mean 3D Dice over the validation volumes (cache grid), as ``ssmtl evaluate`` averages it."""
        per_volume = []
        for index in self.volumes:
            image, label = self.cache.read_volume(index)
            prediction = self.predictor.cache_grid(image)
            per_volume.append({"dice": dice_per_class(prediction, label, self.num_classes)})
        return float(summarise(per_volume)["mean_dice"])

    def due(self, done: int, last: int) -> bool:
        return done % self.every == 0 or done == last

    def __call__(self, done: int, last: int) -> bool:
        """Validate after ``done`` steps if due; True when training should stop (a plateau)."""
        if not self.due(done, last):
            return False
        dice = self.score()
        self.state.curve.append([done, dice])
        self.state.last_step = done
        best = self.state.best_dice
        if not math.isnan(dice) and (best is None or dice > best + self.min_delta):
            self.state.best_dice, self.state.best_step = dice, done
            if self.keep_best:
                self.best_weights = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
        if (self.patience is not None and self.state.best_step is not None
                and done - max(self.state.best_step, self.plateau_from) >= self.patience):
            self.state.stopped = True
        return self.state.stopped

    def score_weights(self, weights: dict[str, torch.Tensor]) -> float:
        """The validation Dice of ``weights`` (a state dict of the model); the model's own weights
        are put back afterwards."""
        own = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        try:
            self.model.load_state_dict(weights, strict=True)
            return self.score()
        finally:
            self.model.load_state_dict(own, strict=True)

    # -- checkpoints ---------------------------------------------------------------------
    def save(self, directory: Path) -> dict[str, Any]:
        """Write the best weights into a checkpoint being assembled; the JSON state to record with it."""
        if self.best_weights is not None:
            save_tensors(Path(directory) / BEST_WEIGHTS, self.best_weights)
        return {"validation": self.state.to_json()}

    def load(self, directory: Path, state: dict[str, Any]) -> None:
        """Restore from a checkpoint written by :meth:`save`."""
        self.state = ValidationState.from_json(state.get("validation"), Path(directory) / "checkpoint.json")
        path = Path(directory) / BEST_WEIGHTS
        self.best_weights = load_tensors(path, what="best weights") if path.is_file() else None
