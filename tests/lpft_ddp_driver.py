"""LP-FT on two processes (started by tests/test_finetune_recipe.py through `accelerate launch`).

Fine-tunes from scratch with ``lp_steps=2`` for 4 steps and has every rank write
``<out>/rank<r>.pt``: its encoder's state dict before the first step and after each step,
so the test can tell that the encoder stays put during the LP phase and that, once it
trains, both ranks hold the same encoder (its gradients are all-reduced).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch


def main(cache: str, out: str) -> None:
    import ssmtl.downstream.finetune as finetune
    from ssmtl.downstream.config import FinetuneConfig
    from ssmtl.host.registry import get_registry

    states: dict[int, dict[str, torch.Tensor]] = {}

    class WatchedLoop(finetune.TrainingLoop):
        def encoder(self):
            return self.accelerator.unwrap_model(self.model).model.network.encoder

        def step(self, batches, step):
            if step == 0:
                states[0] = {k: v.detach().clone() for k, v in self.encoder().state_dict().items()}
            outcome = super().step(batches, step)
            states[step + 1] = {k: v.detach().clone() for k, v in self.encoder().state_dict().items()}
            return outcome

    finetune.TrainingLoop = WatchedLoop
    registry = get_registry()
    config = FinetuneConfig.model_validate(dict(
        data=cache, out=Path(out) / "run", labeled_volumes=1, validation="none", model={"base_channels": 4, "depth": 2},
        train={"steps": 4, "batch_size": 2, "lp_steps": 2, "log_every": 1, "mixed_precision": "no"}), context={"registry": registry})
    finetune.run_finetune(config, registry=registry, progress=False)
    from accelerate import PartialState

    torch.save(states, Path(out) / f"rank{PartialState().process_index}.pt")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
