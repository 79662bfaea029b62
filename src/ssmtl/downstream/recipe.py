"""The fine-tuning recipe: which parameters are the encoder, the decoder and the head, how
each is optimised, and how far each moved.

* **Parts.** In the fine-tuned model (:class:`~ssmtl.downstream.model.FinetuneModel`)
  ``network.encoder.*`` is the encoder, every other ``network.*`` parameter the decoder
  (the rest of the shared network), and ``head.*`` the head.
* **Optimiser.** One AdamW group pair (decayed / not decayed) per part
  (:func:`~ssmtl.training.optim.build_optimizer`): the head at ``train.lr``, the encoder at
  ``train.lr * encoder_lr_scale``, the decoder at ``train.lr * decoder_lr_scale``. The head's
  groups come first, so the ``lr`` that ``metrics.jsonl`` logs is ``train.lr``'s schedule.
* **LP-FT** (``lp_steps``): the encoder is frozen for the first ``lp_steps`` steps (see
  :class:`~ssmtl.downstream.model.SegmentationObjective`) and joins at step ``lp_steps``, where
  the schedule **restarts** for every part: warm-up, then a cosine to 0 at the last step.
  Kumar et al. 2022 (LP-FT) train the linear probe to convergence, then fine-tune the whole
  network from it with a schedule of its own; here the first phase's cosine anneals the
  head and decoder on frozen features, and the second phase is an ordinary fine-tuning from
  there. The restart also gives the encoder's first updates the warm-up: its Adam moments
  start at zero when it joins, so without one its first steps move every weight by about
  the full learning rate whatever its gradient. (Taleb et al. 2020 unfreeze after 20 epochs
  at a constant 1e-4, which either reading matches.)
* **Weight change** (:func:`weight_change`): ``‖w − w₀‖ / ‖w₀‖`` over all floating parameters
  of a part (one global norm), from the weights the run started from to the kept ones.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch
from torch import nn

from ssmtl.training.optim import ParamPart, build_optimizer

ENCODER, DECODER, HEAD = "encoder", "decoder", "head"
#: parameter-name prefixes of each part in the fine-tuned model's state dict (first match wins)
PREFIXES = {HEAD: "head.", ENCODER: "network.encoder.", DECODER: "network."}


def part_of(name: str) -> str | None:
    """``encoder``, ``decoder`` or ``head`` for a key of the fine-tuned model's state dict."""
    return next((part for part, prefix in PREFIXES.items() if name.startswith(prefix)), None)


def finetune_parts(train, *, within: str = "") -> list[ParamPart]:
    """The optimiser's parts: head first (at ``train.lr``), then the encoder and the decoder at
    their scales; ``within`` is the fine-tuned model's name inside the optimised module."""
    return [
        ParamPart(HEAD, (within + PREFIXES[HEAD],), 1.0),
        ParamPart(ENCODER, (within + PREFIXES[ENCODER],), train.encoder_lr_scale, joins_at=train.lp_steps),
        ParamPart(DECODER, (within + PREFIXES[DECODER],), train.decoder_lr_scale),
    ]


def build_finetune_optimizer(objective: nn.Module, train, total_steps: int):
    """``(AdamW, LambdaLR)`` of the recipe for ``objective`` (a :class:`SegmentationObjective`,
    whose fine-tuned model is its ``model``)."""
    return build_optimizer(objective, lr=train.lr, weight_decay=train.weight_decay, warmup_steps=train.warmup_steps,
                           total_steps=total_steps, parts=finetune_parts(train, within="model."),
                           restarts=[train.lp_steps] if train.lp_steps else [])


def start_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """CPU copies of ``model``'s floating parameters (not its buffers): w₀ of :func:`weight_change`."""
    return {name: p.detach().to("cpu", copy=True) for name, p in model.named_parameters() if p.is_floating_point()}


def weight_change(start: Mapping[str, torch.Tensor], weights: Mapping[str, torch.Tensor]) -> dict[str, float | None]:
    """``{"encoder": x, "decoder": y}``: ``‖w − w₀‖ / ‖w₀‖`` of each part, over the parameters of
    ``start`` (w₀), one norm per part over all of them, in float64; None for a part without
    parameters or with ``‖w₀‖ = 0``."""
    moved = {ENCODER: 0.0, DECODER: 0.0}
    size = {ENCODER: 0.0, DECODER: 0.0}
    for name, w0 in start.items():
        part = part_of(name)
        if part not in moved:
            continue
        w0 = w0.detach().double().cpu()
        w = weights[name].detach().double().cpu()
        moved[part] += float(torch.sum((w - w0) ** 2))
        size[part] += float(torch.sum(w0 ** 2))
    return {part: (math.sqrt(moved[part]) / math.sqrt(size[part]) if size[part] > 0 else None) for part in moved}


def schedule_text(train, total: int) -> str:
    """The learning-rate schedule in words, as run.json records it."""
    warm = f"warm-up {train.warmup_steps} step(s), then " if train.warmup_steps else ""
    if not train.lp_steps:
        return f"{warm}cosine to 0 at step {total}"
    return (f"LP phase (steps 1-{train.lp_steps}, encoder frozen): {warm}cosine to 0 at step {train.lp_steps}; "
            f"FT phase (steps {train.lp_steps + 1}-{total}, everything trains): restarted, {warm}cosine to 0 at step {total}")


def recipe_record(config, total: int) -> dict[str, Any]:
    """What run.json says about how the network was fine-tuned (the ``recipe``)."""
    train = config.train
    scratch = config.init.strip().lower() == "none"
    encoder = "frozen" if config.freeze_encoder else ("lp-ft" if train.lp_steps else "trained")
    record = {
        "encoder": encoder,
        "encoder_init": "random" if scratch else "pre-trained",
        "decoder_init": "random" if scratch or config.init_parts == "encoder" else "pre-trained",
        "lr": train.lr,
        "encoder_lr_scale": train.encoder_lr_scale,
        "decoder_lr_scale": train.decoder_lr_scale,
        "warmup_steps": train.warmup_steps,
        "grad_clip": train.grad_clip,
        "lp_steps": train.lp_steps,
        "schedule": schedule_text(train, total),
        "select": train.select,
        "ema_decay": train.ema_decay if train.select == "ema" else None,
    }
    if encoder == "frozen" and scratch:
        record["control"] = "frozen random encoder: the floor of the frozen protocol"
    return record
