"""Which weights a fine-tuning run keeps, and why (``train.select``), as run.json records it.

* ``best`` (default): the weights of the validation step with the best Dice
  (:class:`~ssmtl.downstream.validation.Validator`); with no validation volume, the last
  step's (recorded as ``selection: last``).
* ``last``: the last step's weights of a fixed schedule; validation still runs, and its
  curve and best step are recorded, but it selects nothing.
* ``ema``: the exponential moving average of the weights at the last step
  (:class:`~ssmtl.downstream.ema.WeightAverage`).

``validation.dice`` is always the validation Dice of the kept weights (the EMA's is scored
once at the end); ``stop_reason`` says why training ended: ``plateau`` (``steps: auto``,
``patience`` steps without a new best), ``max_steps`` (``steps: auto`` ran to ``max_steps``)
or ``schedule end`` (a fixed number of steps ran).
"""

from __future__ import annotations

from typing import Any

SELECTED = {
    "best": "the best validation Dice",
    "last": "the last step's weights (select: last; validation is reported, it selects nothing)",
    "ema": "the exponential moving average of the weights at the last step (select: ema)",
}


def stop_reason(train, stopped: bool, steps_run: int, total: int) -> str:
    """``plateau``, ``max_steps`` or ``schedule end``."""
    if stopped and steps_run < total:
        return "plateau"
    return "max_steps" if train.steps == "auto" else "schedule end"


def selection_record(train, validator, plan, steps_run: int, total: int, *, ema=None,
                     ema_dice: float | None = None) -> dict[str, Any]:
    """What run.json says about the steps: how many ran, which weights were kept, and why."""
    state = validator.state if validator is not None else None
    stopped = state is not None and state.stopped
    record: dict[str, Any] = {"steps": steps_run, "steps_requested": train.steps, "schedule_steps": total}
    selection = train.select
    if selection == "best" and (state is None or state.best_step is None):
        selection = "last"  # nothing validated: nothing to select from
    selected_step = state.best_step if selection == "best" else steps_run
    record.update({"selected_step": selected_step, "selection": selection,
                   "stop_reason": stop_reason(train, stopped, steps_run, total),
                   "stopped_early": stopped and steps_run < total})
    if ema is not None:
        record["ema"] = ema.record()
    if state is None or not state.curve:
        reason = "the last step (no validation)" if train.select == "best" else SELECTED[selection]
        record["validation"] = {**plan.record(), "dice": None, "selected": reason}
        return record
    last_dice = state.curve[-1][1] if state.curve[-1][0] == steps_run else None
    dice = {"best": state.best_dice, "last": last_dice, "ema": ema_dice}[selection]
    record["validation"] = {**plan.record(), "dice": dice, "selected": SELECTED[selection],
                            "best_step": state.best_step, "best_dice": state.best_dice,
                            "every": train.validate_every, "min_delta": train.min_delta,
                            "patience": validator.patience, "curve": state.curve}
    return record
