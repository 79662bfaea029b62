#!/usr/bin/env python3
"""Framework overhead: an ssmtl ``--task contrastive`` step against a hand-written MoCo v2 step.

A (``ssmtl``): :meth:`ssmtl.pretraining.engine.Trainer.step`, built exactly as ``ssmtl
pretrain --task contrastive`` builds it (Accelerate, the task plugin, the shared
view/feature cache, loss weighting, metrics, the non-finite check, the EMA hook).

B (``hand``): :class:`HandMoCo` below, a minimal MoCo v2 loop in plain PyTorch,
written from the paper/reference (He et al. 2020; Chen et al. 2020): the same
U-Net encoder (``ssmtl.host.networks.build_network(config.model).encoder``), the same 2-layer
projection MLP, an EMA key encoder, a queue of K keys and InfoNCE, the same AdamW
parameter groups, learning-rate schedule, gradient clipping and autocast
precision. Both augment their two views with ``ssmtl.training.augment.augment``, so
the data work is equal, and both start from identical weights and queue: a check
runs two steps of each from the same RNG state and reports that the losses agree.

Both run on the same pre-fetched batches (read from a phantom cache built into a
temporary folder). After a warm-up, blocks of ``--steps`` steps alternate
(A B, B A, ...), and the result is the median over blocks of the per-step time
ratio ssmtl / hand. Target: <= 1.10.

Usage: ``python benchmarks/step_overhead.py [--size 64] [--batch-size 16]
[--base-channels 16] [--steps 5] [--blocks 12] [--mixed-precision no|bf16|fp16]
[--device auto] [--threads N] [--profile]``.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from ssmtl.training.augment import augment  # noqa: E402
from ssmtl.host.networks import build_network  # noqa: E402

TARGET = 1.10


class HandMoCo:
    """One MoCo v2 training step in plain PyTorch (the reference, facebookresearch/moco ``builder.py``)."""

    def __init__(self, config, queue_size: int, device: torch.device):
        task = config.tasks["contrastive"]
        self.augment_config = config.augment
        self.temperature, self.momentum = task.temperature, task.momentum
        self.grad_clip = config.train.grad_clip
        self.device = device
        network = build_network(config.model, common.registry())
        self.encoder = network.encoder.to(device)
        width = network.info.bottleneck_channels
        hidden = task.hidden_dim or width
        self.projection = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, task.projection_dim)).to(device)
        self.key_encoder = copy.deepcopy(self.encoder).requires_grad_(False)
        self.key_projection = copy.deepcopy(self.projection).requires_grad_(False)
        self.queue = F.normalize(torch.randn(queue_size, task.projection_dim, device=device), dim=1)
        self.pointer = 0
        self.params = [p for m in (self.encoder, self.projection) for p in m.parameters()]
        self.optimizer = torch.optim.AdamW(  # no weight decay on norms and biases
            [{"params": [p for p in self.params if p.ndim > 1], "weight_decay": config.train.weight_decay},
             {"params": [p for p in self.params if p.ndim <= 1], "weight_decay": 0.0}],
            lr=config.train.lr,
        )
        warmup, total = config.train.warmup_steps, config.train.steps

        def factor(step: int) -> float:  # linear warm-up, then cosine decay
            if step < warmup:
                return (step + 1) / warmup
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)
        precision = config.train.mixed_precision
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        self.scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None

    def copy_state_from(self, trainer) -> None:
        """Start from exactly ssmtl's weights and queue (for the equivalence check)."""
        module = trainer.unwrapped
        task = module.tasks["contrastive"]
        self.encoder.load_state_dict(module.network.encoder.state_dict())
        self.projection.load_state_dict(task.projection.state_dict())
        self.key_encoder.load_state_dict(task.key_encoder.state_dict())
        self.key_projection.load_state_dict(task.key_projection.state_dict())
        self.queue.copy_(task.queue.keys)
        self.pointer = int(task.queue.pointer)

    def _embed(self, encoder: nn.Module, projection: nn.Module, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(projection(encoder(images)[-1].mean(dim=(-2, -1))), dim=1)

    def step(self, batches: list, step: int) -> torch.Tensor:
        (batch,) = batches
        k = batch.slices.shape[1]
        x = batch.slices.reshape(-1, 1, *batch.slices.shape[-2:])
        with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32, enabled=self.autocast_dtype is not None):
            view_q, _ = augment(x, self.augment_config, group=k)
            query = self._embed(self.encoder, self.projection, view_q)
            with torch.no_grad():
                view_k, _ = augment(x, self.augment_config, group=k)
                key = self._embed(self.key_encoder, self.key_projection, view_k).to(query.dtype)
            positive = (query * key).sum(dim=1, keepdim=True)
            negative = query @ self.queue.to(query.dtype).t()
            logits = torch.cat([positive, negative], dim=1).float() / self.temperature
            loss = F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long, device=logits.device))
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        if self.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            m = self.momentum
            for online, target in ((self.encoder, self.key_encoder), (self.projection, self.key_projection)):
                for p, p_k in zip(online.parameters(), target.parameters()):
                    p_k.mul_(m).add_(p.detach(), alpha=1 - m)
            index = (self.pointer + torch.arange(len(key), device=key.device)) % len(self.queue)
            self.queue[index] = key.float()
            self.pointer = (self.pointer + len(key)) % len(self.queue)
        return loss.detach()


def equivalence_check(trainer, hand: HandMoCo, batches: list, steps: int = 2) -> dict:
    """Run ``steps`` steps of each from the same state and RNG seed; the losses must agree."""
    hand.copy_state_from(trainer)
    ours, theirs = [], []
    for s in range(steps):
        torch.manual_seed(1000 + s)
        ours.append(float(trainer.step([batches[s]], s).losses[0]))
        torch.manual_seed(1000 + s)
        theirs.append(float(hand.step([batches[s]], s)))
    diff = max(abs(a - b) for a, b in zip(ours, theirs))
    return {"loss_ssmtl": ours, "loss_hand": theirs, "max_abs_diff": diff, "same_loss": diff <= 1e-3 * max(1.0, abs(ours[0]))}


def profile(runners: dict, steps: int, top: int = 12) -> dict:
    """torch.profiler self-CPU time of the top ops of each variant (printed to stderr too)."""
    from torch.profiler import ProfilerActivity, profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    out = {}
    for name, run in runners.items():
        with torch_profile(activities=activities) as prof:
            run(steps)
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top)
        common.log(f"--- profile: {name} ({steps} steps)\n{table}")
        events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
        out[name] = {e.key: {"calls": e.count, "self_cpu_ms_per_step": round(e.self_cpu_time_total / 1e3 / steps, 3)} for e in events}
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=64, help="slice size in pixels (phantom cache)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--base-channels", type=int, default=16)
    parser.add_argument("--steps", type=int, default=2, help="steps per timed block")
    parser.add_argument("--blocks", type=int, default=20, help="timed blocks per variant (interleaved)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps per variant first")
    parser.add_argument("--mixed-precision", choices=["no", "bf16", "fp16"], default="no")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--profile", action="store_true", help="also profile both variants (torch.profiler)")
    args = parser.parse_args(argv)

    device = common.resolve_device(args.device)
    common.set_threads(args.threads)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="ssmtl-bench-") as tmp:
        cache_path = common.phantom_cache(Path(tmp), args.size)
        config = common.run_config(
            ["contrastive"],
            # bn_mode=none: the hand loop normalises each batch whole, as plain MoCo in one process
            # does; split BN (the task's default) is a method choice with its own cost (docs/tasks.md),
            # not framework overhead, so both sides compute the same thing
            [f"train.batch_size={args.batch_size}", f"model.base_channels={args.base_channels}",
             "train.steps=100000", "data.num_workers=0", "tasks.contrastive.bn_mode=none"],
            cache_path, args.mixed_precision,
        )
        accelerator = common.accelerator_for(config, device)
        trainer, cache, volumes = common.cache_trainer(config, accelerator, cache_path)
        queue_size = trainer.unwrapped.tasks["contrastive"].queue.size
        hand = HandMoCo(config, queue_size, accelerator.device)
        batches = common.prefetch(cache, volumes, config, trainer.sequence_length, 8, accelerator.device)

        check = equivalence_check(trainer, hand, batches)
        common.log(f"equivalence: ssmtl {check['loss_ssmtl']} hand {check['loss_hand']}")
        ours, theirs = common.StepRunner(trainer.step, batches), common.StepRunner(hand.step, batches)
        runners = {"ssmtl": ours.run, "hand": theirs.run}
        for run in runners.values():
            run(args.warmup)
        t0 = time.perf_counter()
        times = common.interleaved(runners, args.blocks, args.steps, accelerator.device)
        ratio = common.block_ratios(times["ssmtl"], times["hand"])
        profiled = profile(runners, args.steps) if args.profile else None

    slices = args.batch_size * trainer.sequence_length
    result = {
        "benchmark": "step_overhead",
        "hardware": common.hardware(accelerator.device),
        "settings": {
            "task": "contrastive", "size": args.size, "batch_size": args.batch_size, "sequence_length": trainer.sequence_length,
            "slices_per_step": slices, "base_channels": args.base_channels, "depth": config.model.depth,
            "queue_size": queue_size, "mixed_precision": args.mixed_precision, "steps_per_block": args.steps,
            "blocks": args.blocks, "warmup_steps": args.warmup, "timed_seconds": round(time.perf_counter() - t0, 1),
        },
        "equivalence": check,
        "ssmtl": common.summary(times["ssmtl"]),
        "hand": common.summary(times["hand"]),
        "ratio": ratio,
        "target": TARGET,
        "target_met": ratio["median"] <= TARGET,
    }
    if profiled is not None:
        result["profile"] = profiled
    common.emit(result)
    return result


if __name__ == "__main__":
    main()
