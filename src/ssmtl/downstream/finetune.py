"""Fine-tuning the shared U-Net plus a downstream head on a few labeled volumes.

The protocol follows the paper's few-label setting: a fixed, subject-level test set
(drawn with ``split_seed`` from the labeled subjects, so every method and every
training seed is scored on the same subjects), ``labeled_volumes`` labeled training
subjects, and 2D training on their slices. The network starts either from a
pre-training export (``init=RUN_DIR``, loaded with ``strict=True``) or from scratch
(``init="none"``), which is the baseline the pre-training is compared against.

Training runs through the same loop and the same run lifecycle as pre-training
(:mod:`ssmtl.training.loop`, :mod:`ssmtl.training.lifecycle`): the same non-finite policy,
clipping, logging, periodic atomic checkpoints and exact ``--resume``. How the network is
trained (lr per part, warm-up, clipping, LP-FT) is :mod:`ssmtl.downstream.recipe`'s; which
weights are kept (best, last, EMA) is :mod:`ssmtl.downstream.selection`'s.

A run directory holds ``config.json``, ``split.json`` (the exact subjects, seeds and
chosen labeled subjects), ``metrics.jsonl``, ``checkpoints/``, ``model.safetensors``
(``network.*`` and ``head.*``) and ``run.json`` (what evaluation needs to rebuild the
model, and where the initial weights came from).
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

from ssmtl._version import __version__
import torch

from ssmtl.api.errors import SsmtlError
from ssmtl.host.registry import Registry
from ssmtl.storage.files import save_json, save_tensors
from ssmtl.training.augment import flip_note
from ssmtl.training.export import check_finite_weights
from ssmtl.training.lifecycle import TrainingRun
from ssmtl.training.loop import TrainingLoop
from ssmtl.training.recorder import Recorder
from ssmtl.data.cache_set import data_record, open_caches
from ssmtl.data.laterality import run_flip_axes
from ssmtl.data.splits import choose_labeled, split_cache, volumes_of
from ssmtl.downstream.config import FinetuneConfig
from ssmtl.downstream.data import LabeledSliceDataset, make_loader
from ssmtl.downstream.ema import WeightAverage
from ssmtl.downstream.recipe import build_finetune_optimizer, recipe_record, start_weights, weight_change
from ssmtl.downstream.records import WEIGHTS
from ssmtl.downstream.selection import selection_record
from ssmtl.downstream.validation import plan_validation, Validator
from ssmtl.downstream.model import (
    FinetuneModel,
    SegmentationObjective,
    build_head,
    initial_network,
    cache_classes,
    check_network,
    resolve_init,
)

def _init_record(config: FinetuneConfig, manifest: dict[str, Any] | None, cache, test: list[str]) -> dict[str, Any]:
    """What run.json says about the initial weights, including whether pre-training saw test subjects:
    a test subject counts as seen when pre-training read one of its scans, matched by source
    (``source_keys``: the same scan under another name or a cache set's prefix, and not another
    cohort's subject of the same name) or, in manifests older than those keys, by subject name."""
    if manifest is None:
        return {"init": "none", "init_manifest": None, "init_saw_test_subjects": []}
    data = manifest.get("data") or {}
    tested = set(test)
    if "source_keys" in data:  # by scan: another cohort's phantom_ct_002 is not this one's
        keys = set(data["source_keys"] or [])
        seen = sorted({v.subject for v in cache.volumes if v.subject in tested and v.source_key in keys})
    else:
        seen = sorted(set(data.get("volumes") or []) & tested)
    return {
        "init": str(resolve_init(config.init)),
        "init_parts": config.init_parts,
        "init_manifest": {
            "tasks": manifest.get("tasks"),
            "steps": manifest.get("steps"),
            "data": {"path": data.get("path"), "fingerprint": data.get("fingerprint")},
            "created": manifest.get("created"),
            "model": manifest.get("model"),
        },
        # self-supervised pre-training on the test images is transductive: flag it, don't hide it
        "init_saw_test_subjects": seen,
    }


def _validator(config: FinetuneConfig, plan, cache, volumes: list[int], model, accelerator, num_classes: int,
               main: bool) -> Validator | None:
    """The run's validator, or None (and a note on stderr) when there is nothing to validate on."""
    train = config.train
    if not volumes:
        if main:
            print(f"note: no validation volumes ({plan.reason}); training for the fixed schedule of "
                  f"{train.schedule_steps} steps and keeping the last step's weights", file=sys.stderr)
        return None
    return Validator(cache, volumes, model, accelerator.device, every=train.validate_every,
                     patience=train.patience if train.steps == "auto" else None, min_delta=train.min_delta,
                     num_classes=num_classes, keep_best=train.select == "best", plateau_from=train.lp_steps)


def _on_logged(validator: Validator, total: int, out: Path, main: bool, recorder: Recorder):
    """Validate when due; record the curve in validation.json, metrics.jsonl and the trackers
    (so curves.png draws it); say whether to stop."""

    def on_logged(done: int) -> bool:
        if not validator.due(done, total):
            return False
        stop = validator(done, total)
        recorder.log({"step": done, "val_dice": validator.state.curve[-1][1]})
        if main:
            save_json(out / "validation.json", validator.state.to_json())
        return stop

    return on_logged


def run_finetune(config: FinetuneConfig, registry: Registry, *, progress: bool = True, resume: bool = False) -> dict[str, Any]:
    """Fine-tune ``config.init`` (or a fresh network) on ``config.labeled_volumes`` labeled subjects.

    The run's life (run directory, lock, resume, ``config.json``, trackers, the loop) is
    :class:`~ssmtl.training.lifecycle.TrainingRun`'s, as for pre-training; this function says
    what it trains (network + head on labeled slices), how it validates, and what it keeps.
    """
    from accelerate.utils import set_seed

    if config.out is None:
        raise SsmtlError("no run directory: pass --out")
    if config.data is None:
        raise SsmtlError("no data: pass --data CACHE.h5")
    config = config.with_defaults(registry)
    train = config.train
    with TrainingRun(Path(config.out), "finetune", "the fine-tuning run", train, resume=resume,
                     find_unused_parameters=train.lp_steps > 0) as run:
        accelerator, main = run.accelerator, run.main
        # every input is checked, and every plugin built, before the run directory is created
        cache = open_caches(config.data)
        num_classes, class_names = cache_classes(cache)
        preprocess = cache.attrs.get("preprocess")  # of a set: checks each modality was normalised alike
        split = split_cache(cache, seed=config.split_seed, test_fraction=config.test_fraction, val_fraction=config.val_fraction)
        labeled_seed = config.split_seed if config.labeled_seed is None else config.labeled_seed
        labeled = choose_labeled(split["train"], config.labeled_volumes, labeled_seed)
        plan = plan_validation(split, labeled, config.validation, config.val_volumes, labeled_seed)
        train_volumes, val_volumes = volumes_of(cache, plan.train), volumes_of(cache, plan.val)
        for v in train_volumes + val_volumes:
            cache.read_label(v)  # class ids the cache does not name are refused now, not in a loader worker
        set_seed(config.seed)
        network, manifest = initial_network(config, registry)
        check_network(network, cache)
        head = build_head(registry, config.head, config.head_options, network, num_classes)
        init = _init_record(config, manifest, cache, split["test"])
        if init["init_saw_test_subjects"] and main:
            print(
                f"warning: the pre-training of {init['init']} used {len(init['init_saw_test_subjects'])} of the "
                f"{len(split['test'])} test subject(s) (unlabeled); results are transductive", file=sys.stderr,
            )
        flip_axes, flip_notes = run_flip_axes(cache)  # the data's laterality: run.json records it for predict
        flip_notes += filter(None, [flip_note(config.augment, flip_axes)])
        model = FinetuneModel(network, head, registry)
        start = start_weights(model)  # w0 of the weight change: rebuilt alike (same seed, same export) on resume
        objective = SegmentationObjective(model, config.augment, config.freeze_encoder, train.lp_steps, flip_axes)
        total = train.schedule_steps
        optimizer, scheduler = build_finetune_optimizer(objective, train, total)
        prepared, optimizer, scheduler = accelerator.prepare(objective, optimizer, scheduler)
        ema = WeightAverage(model, train.ema_decay) if train.select == "ema" else None

        record = config.model_dump(mode="json")
        recorder = run.open(
            names=[config.head], config=record, fingerprint={**record, "data_fingerprint": cache.fingerprint},
            inputs=[("--data", config.data), ("--init", resolve_init(config.init))],
            records={"split.json": _split_record(config, cache, split, labeled, labeled_seed, plan, train_volumes, val_volumes)},
            notes=flip_notes,
        )
        validator = _validator(config, plan, cache, val_volumes, model, accelerator, num_classes, main)
        keepers = [k for k in (validator, ema) if k is not None]  # state a checkpoint keeps besides the loop's
        recorder.checkpoint_extras = lambda directory: {k: v for keeper in keepers for k, v in keeper.save(directory).items()}
        dataset = LabeledSliceDataset(cache, train_volumes)
        batches = run.resume(lambda start: _on_device(make_loader(
            dataset, batches=total * train.grad_accum, batch_size=train.batch_size, seed=config.seed,
            rank=accelerator.process_index, world=accelerator.num_processes, start=start * train.grad_accum,
            class_balance=config.class_balance, num_workers=config.num_workers), accelerator.device))
        if run.found is not None:
            for keeper in keepers:
                keeper.load(run.found.path, run.found.state)
        stopped = validator is not None and validator.state.stopped  # a resumed run that had already stopped
        loop = TrainingLoop(accelerator, prepared, optimizer, scheduler, train, [config.head],
                            after_step=None if ema is None else lambda step: ema.update())
        on_logged = None if validator is None else _on_logged(validator, total, run.out, main, recorder)
        result = run.train(loop, batches, run.start_step if stopped else total, progress=progress, label="finetune",
                           slices_per_step=train.batch_size * train.grad_accum * accelerator.num_processes,
                           on_logged=on_logged)

        final_loss = result.last.get("loss")
        ema_dice = validator.score_weights(ema.weights) if ema is not None and validator is not None else None
        selection = selection_record(train, validator, plan, result.steps, total, ema=ema, ema_dice=ema_dice)
        if selection["selection"] == "best":
            weights = validator.best_weights
            if weights is None:  # a checkpoint's state names a best step but holds no best weights
                raise SsmtlError(f"{run.out}: the best validation step {selection['selected_step']} has no saved weights; "
                                 "resume from an earlier checkpoint or start a new run")
        else:
            weights = ema.state_dict() if ema is not None else {k: v.detach().cpu() for k, v in model.state_dict().items()}
        moved = weight_change(start, weights)
        if main and progress:
            print(f"weight change of the kept weights (step {selection['selected_step']}, {selection['selection']}), "
                  f"|w - w0| / |w0|: encoder {_number(moved['encoder'])}, decoder {_number(moved['decoder'])}",
                  file=sys.stderr)

        def write_outputs() -> None:
            check_finite_weights(weights, str(run.out / WEIGHTS))
            save_tensors(run.out / WEIGHTS, weights)
            save_json(run.out / "run.json", {
                **init,
                "ssmtl_version": __version__,
                "data": {**data_record(cache, config.data), "dataset": cache.attrs.get("dataset"),
                         # {modality: training volumes}, the shape every reader of run.json uses (records.modality_counts)
                         "modalities": dict(sorted(Counter(cache.volumes[v].modality for v in train_volumes).items()))},
                "preprocess": preprocess,  # how `ssmtl predict` prepares new scans
                "num_classes": num_classes,
                "class_names": {str(c): n for c, n in class_names.items()},
                "flip_axes": list(flip_axes),  # mirror flips the data allows (0 = rows, 1 = columns), e.g. for TTA
                "model": network.config.model_dump(mode="json"),
                "head": head.config.model_dump(mode="json"),
                "labeled_volumes": config.labeled_volumes,
                "labeled_subjects": labeled,
                "train_subjects": plan.train,
                **selection,
                "seconds": result.seconds,
                "final_loss": final_loss,
                "recipe": recipe_record(config, total),
                "weight_change": moved,
            })

        run.finish(write_outputs)
    return {
        "run_dir": str(run.out),
        "init": init["init"],
        **selection,
        "seconds": result.seconds,
        "final_loss": final_loss,
        "weight_change": moved,
        "num_classes": num_classes,
        "labeled_subjects": labeled,
        "train_volumes": [cache.volumes[v].name for v in train_volumes],
        "test_subjects": split["test"],
    }


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def _on_device(loader, device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The loader's batches on ``device``; its iterator is opened now (see :func:`~ssmtl.downstream.data.make_loader`)."""
    batches = iter(loader)
    return ((images.to(device), labels.to(device)) for images, labels in batches)


def _split_record(config: FinetuneConfig, cache, split: dict[str, Any], labeled: list[str], labeled_seed: int, plan,
                  train_volumes: list[int], val_volumes: list[int]) -> dict[str, Any]:
    """``split.json``: the exact subjects, seeds and chosen labeled subjects of the run."""
    return {
        **split,
        "split_seed": config.split_seed,
        "test_fraction": config.test_fraction,
        "labeled_seed": labeled_seed,
        "labeled_volumes": config.labeled_volumes,
        "labeled": labeled,
        "train_subjects": plan.train,
        "train_volumes": [cache.volumes[v].name for v in train_volumes],
        "validation": plan.record(),
        "val_volumes": [cache.volumes[v].name for v in val_volumes],
        "test_volumes": [cache.volumes[v].name for v in volumes_of(cache, split["test"])],
        "data": data_record(cache, config.data)["path"],
        "data_fingerprint": cache.fingerprint,
    }
