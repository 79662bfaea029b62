"""Loss weighting schemes against their papers' formulas, on hand-made loss curves."""

from __future__ import annotations

import math

import pytest
import torch

from ssmtl.pretraining.weighting import (
    DynamicWeightAverage,
    FixedWeighting,
    UncertaintyWeighting,
    build_weighting,
    micro_batches_per_pass,
)

NAMES = ["a", "b", "c"]


def _losses(values) -> dict[str, torch.Tensor]:
    return {n: torch.tensor(float(v)) for n, v in zip(NAMES, values)}


# -- fixed ----------------------------------------------------------------------------


def test_fixed_weights_and_warmup_ramp():
    w = FixedWeighting(NAMES, {"a": 1.0, "b": 2.0, "c": 0.5}, {"b": 10})
    total, weights = w(_losses([1.0, 3.0, 4.0]), step=5)
    assert weights.tolist() == pytest.approx([1.0, 1.0, 0.5])  # b: 2 * 5/10
    assert float(total) == pytest.approx(1.0 * 1 + 1.0 * 3 + 0.5 * 4)


# -- uncertainty (Kendall et al. 2018) ------------------------------------------------


def _kendall_reference(losses, log_vars, weights, ramps):
    """sum_i w_i r_i (exp(-s_i) L_i + s_i), written out term by term."""
    total = 0.0
    for loss, s, w, r in zip(losses, log_vars, weights, ramps):
        total += w * r * (math.exp(-s) * loss + s)
    return total


def test_uncertainty_total_matches_the_formula_with_priors_and_ramps():
    w = UncertaintyWeighting(NAMES, {"a": 1.0, "b": 2.0, "c": 0.5}, {"c": 4})
    with torch.no_grad():
        w.log_vars.copy_(torch.tensor([0.3, -0.7, 1.1]))
    losses = [2.0, 0.5, 3.0]
    total, weights = w(_losses(losses), step=1)
    ramps = [1.0, 1.0, 0.25]
    assert float(total.detach()) == pytest.approx(_kendall_reference(losses, [0.3, -0.7, 1.1], [1.0, 2.0, 0.5], ramps), rel=1e-6)
    expected = [p * r * math.exp(-s) for p, r, s in zip([1.0, 2.0, 0.5], ramps, [0.3, -0.7, 1.1])]
    assert weights.tolist() == pytest.approx(expected, rel=1e-6)


def test_uncertainty_converges_to_the_prior_over_the_loss():
    """At the optimum exp(-s_i) = 1/L_i, so the effective weight is w_i / L_i (not 1/L_i)."""
    priors = {"a": 1.0, "b": 4.0, "c": 0.25}
    w = UncertaintyWeighting(NAMES, priors, {})
    losses = [2.0, 0.5, 8.0]
    opt = torch.optim.SGD(w.parameters(), lr=0.05)
    for _ in range(3000):
        opt.zero_grad()
        total, weights = w(_losses(losses), step=100)
        total.backward()
        opt.step()
    expected = [priors[n] / loss for n, loss in zip(NAMES, losses)]
    assert weights.tolist() == pytest.approx(expected, rel=1e-3)


def test_uncertainty_regulariser_is_ramped_with_its_task():
    w = UncertaintyWeighting(NAMES, {"a": 1.0, "b": 1.0, "c": 1.0}, {"b": 10})
    total, _ = w(_losses([1.0, 5.0, 2.0]), step=0)
    total.backward()
    grad = w.log_vars.grad.tolist()
    assert grad[1] == 0.0  # b is still at ramp 0: no pull on its log-variance
    assert grad[0] == pytest.approx(-1.0 + 1.0)  # d/ds (exp(-s) L + s) at s=0, L=1
    assert grad[2] == pytest.approx(-2.0 + 1.0)


# -- DWA (Liu et al. 2019) ------------------------------------------------------------


def _dwa_reference(curve: list[list[float]], window: int, temperature: float) -> list[list[float]]:
    """Eq. (7) of the paper with epochs = windows of ``window`` steps, in plain Python."""
    k = len(curve[0])
    means: list[list[float]] = []  # mean loss of every complete window
    out = []
    for t, losses in enumerate(curve):
        current = t // window
        if current < 2:
            out.append([1.0] * k)
        else:
            ratios = [means[current - 1][i] / means[current - 2][i] for i in range(k)]
            exps = [math.exp(r / temperature) for r in ratios]
            out.append([k * e / sum(exps) for e in exps])
        if (t + 1) % window == 0:
            chunk = curve[t + 1 - window:t + 1]
            means.append([sum(row[i] for row in chunk) / window for i in range(k)])
    return out


def _curve(steps: int) -> list[list[float]]:
    """a falls 500x over the run, b is flat, c falls then rises; with per-step wiggles."""
    rows = []
    for t in range(steps):
        wiggle = 1.0 + 0.2 * math.sin(1.7 * t)
        rows.append([500.0 ** (-t / (steps - 1)) * wiggle, 1.0 * wiggle, 0.5 + 0.4 * abs(t - steps / 2) / steps * wiggle])
    return rows


@pytest.mark.parametrize("window,temperature", [(5, 2.0), (7, 0.5), (1, 2.0)])
def test_dwa_matches_the_paper_on_a_hand_made_curve(window, temperature):
    curve = _curve(40)
    w = DynamicWeightAverage(NAMES, {n: 1.0 for n in NAMES}, {}, temperature=temperature, window=window)
    got = [w(_losses(row), step=t)[1].tolist() for t, row in enumerate(curve)]
    expected = _dwa_reference(curve, window, temperature)
    for t, (g, e) in enumerate(zip(got, expected)):
        assert g == pytest.approx(e, rel=1e-5), f"step {t}"


def test_dwa_moves_the_weights_of_a_fast_falling_loss():
    """The per-step EMA it replaces gave 0.98-1.02 to a loss falling 500x; window means do not.

    Per window of 10 of 60 steps the loss falls by 500^(-10/59) = 0.349, so with T = 2:
    3 exp(0.349/2) / (exp(0.349/2) + 2 exp(1/2)) = 0.795 for it, 1.102 for the flat tasks.
    """
    curve = [[500.0 ** (-t / 59), 1.0, 1.0] for t in range(60)]
    w = DynamicWeightAverage(NAMES, {n: 1.0 for n in NAMES}, {}, temperature=2.0, window=10)
    weights = [w(_losses(row), step=t)[1] for t, row in enumerate(curve)]
    assert weights[-1].tolist() == pytest.approx([0.795, 1.102, 1.102], abs=2e-3)


def test_dwa_priors_and_ramps_multiply_its_factor():
    w = DynamicWeightAverage(NAMES, {"a": 2.0, "b": 1.0, "c": 1.0}, {"c": 100}, window=1)
    for t, row in enumerate([[4.0, 1.0, 1.0], [2.0, 1.0, 1.0], [1.0, 1.0, 1.0]]):
        _, weights = w(_losses(row), step=t)
    ref = _dwa_reference([[4.0, 1.0, 1.0], [2.0, 1.0, 1.0], [1.0, 1.0, 1.0]], 1, 2.0)[-1]
    assert weights.tolist() == pytest.approx([2.0 * ref[0], ref[1], 0.02 * ref[2]], rel=1e-6)


def test_dwa_skips_non_finite_losses_in_its_means():
    curve = [[1.0, 1.0, 1.0], [float("nan"), 1.0, 1.0], [3.0, 1.0, 1.0], [1.0, 2.0, 1.0]]
    w = DynamicWeightAverage(NAMES, {n: 1.0 for n in NAMES}, {}, window=2)
    for t, row in enumerate(curve):
        w(_losses(row), step=t)
    assert w.mean_2.tolist() == pytest.approx([1.0, 1.0, 1.0])  # the NaN step left out of a's mean
    assert w.mean_1.tolist() == pytest.approx([2.0, 1.5, 1.0])


def test_dwa_state_dict_resumes_mid_window_exactly():
    curve = _curve(30)
    whole = DynamicWeightAverage(NAMES, {n: 1.0 for n in NAMES}, {}, window=4)
    expected = [whole(_losses(row), step=t)[1] for t, row in enumerate(curve)]
    first = DynamicWeightAverage(NAMES, {n: 1.0 for n in NAMES}, {}, window=4)
    for t, row in enumerate(curve[:13]):
        first(_losses(row), step=t)
    resumed = DynamicWeightAverage(NAMES, {n: 1.0 for n in NAMES}, {}, window=4)
    resumed.load_state_dict(first.state_dict())
    for t, row in enumerate(curve[13:], start=13):
        assert torch.equal(resumed(_losses(row), step=t)[1], expected[t])


def test_dwa_default_window_is_one_pass_and_needs_data():
    w = build_weighting("dwa", NAMES, {n: 1.0 for n in NAMES}, {})
    with pytest.raises(RuntimeError, match="on_data"):
        w(_losses([1, 1, 1]), step=0)
    notes = w.on_data(micro_batches_per_pass(num_slices=352, global_batch=16))
    assert w.window == 22 and "one pass" in notes[0]
    assert micro_batches_per_pass(353, 16) == 23
    configured = build_weighting("dwa", NAMES, {n: 1.0 for n in NAMES}, {}, window=5)
    configured.on_data(22)
    assert configured.window == 5


# -- weighting.normalise: each loss over its mean of the first N steps ---------------------------------


def test_normalise_divides_by_the_mean_so_far_then_by_the_fixed_mean():
    """Hand computation, fixed weights (1, 2), N = 2 steps, the second step in two micro-batches."""
    w = FixedWeighting(["a", "b"], {"a": 1.0, "b": 2.0}, {}, normalise_steps=2)
    feed = [  # (step, loss a, loss b)
        (0, 4.0, 0.02),
        (1, 2.0, 0.05),  # micro-batch 1 of step 1
        (1, 6.0, 0.05),  # micro-batch 2 of step 1
        (2, 3.0, 0.01),  # from here on the divisor is fixed: mean over the first 3 micro-batches
        (7, 9.0, 0.10),
    ]
    divisors = [(4.0, 0.02), (3.0, 0.035), (4.0, 0.04), (4.0, 0.04), (4.0, 0.04)]
    for (step, a, b), (ca, cb) in zip(feed, divisors):
        total, weights = w({"a": torch.tensor(a), "b": torch.tensor(b)}, step)
        assert float(total) == pytest.approx(1.0 * a / ca + 2.0 * b / cb, rel=1e-6)
        assert weights.tolist() == pytest.approx([1.0 / ca, 2.0 / cb], rel=1e-6)  # what the raw loss was multiplied by
    assert float(w.scale.count[0]) == 3  # steps 2 and 7 added nothing


def test_normalise_gradient_is_the_weight_over_the_divisor():
    w = FixedWeighting(["a", "b"], {"a": 1.0, "b": 1.0}, {}, normalise_steps=5)
    a, b = torch.tensor(8.0, requires_grad=True), torch.tensor(0.5, requires_grad=True)
    w({"a": torch.tensor(4.0), "b": torch.tensor(1.5)}, 0)
    total, _ = w({"a": a, "b": b}, 1)  # divisors: mean(4, 8) = 6, mean(1.5, 0.5) = 1
    total.backward()
    assert float(a.grad) == pytest.approx(1 / 6) and float(b.grad) == pytest.approx(1.0)  # no gradient through c


def test_normalise_leaves_non_finite_losses_out_and_keeps_the_sign():
    w = FixedWeighting(["a", "b"], {"a": 1.0, "b": 1.0}, {}, normalise_steps=3)
    total, weights = w({"a": torch.tensor(float("nan")), "b": torch.tensor(-0.5)}, 0)
    assert math.isnan(float(total))  # the step is skipped by the loop, as without normalisation
    assert weights.tolist() == pytest.approx([1.0, 2.0])  # a: nothing finite yet -> 1; b: |-0.5|
    total, _ = w({"a": torch.tensor(3.0), "b": torch.tensor(-1.5)}, 1)
    assert float(total) == pytest.approx(3.0 / 3.0 + (-1.5) / 1.0)  # b's divisor mean(0.5, 1.5) = 1: still negative


def test_normalise_under_uncertainty_weighting_and_dwa():
    u = UncertaintyWeighting(["a", "b"], {"a": 1.0, "b": 1.0}, {}, normalise_steps=1)
    with torch.no_grad():
        u.log_vars.copy_(torch.tensor([0.5, -0.5]))
    total, weights = u({"a": torch.tensor(2.0), "b": torch.tensor(0.1)}, 0)
    assert float(total.detach()) == pytest.approx(math.exp(-0.5) * 1 + 0.5 + math.exp(0.5) * 1 - 0.5, rel=1e-6)
    assert weights.tolist() == pytest.approx([math.exp(-0.5) / 2.0, math.exp(0.5) / 0.1], rel=1e-6)
    d = build_weighting("dwa", ["a", "b"], {"a": 1.0, "b": 1.0}, {}, window=1, normalise_steps=1)
    assert any("weighting.normalise" in n for n in d.on_data(10)) and any("dwa" in n for n in d.on_data(10))


def test_normalise_state_resumes_exactly():
    def fresh():
        return FixedWeighting(NAMES, {n: 1.0 for n in NAMES}, {}, normalise_steps=4)

    torch.manual_seed(0)
    curve = [(t, torch.rand(3) * torch.tensor([5.0, 0.1, 1.0])) for t in range(6)]
    whole = fresh()
    expected = [whole(_losses(v.tolist()), t)[0] for t, v in curve]
    first = fresh()
    for t, v in curve[:2]:
        first(_losses(v.tolist()), t)
    resumed = fresh()
    resumed.load_state_dict(first.state_dict())  # what the checkpoint carries
    assert {"scale.total", "scale.count"} <= set(first.state_dict())
    for (t, v), want in zip(curve[2:], expected[2:]):
        torch.testing.assert_close(resumed(_losses(v.tolist()), t)[0], want)
    assert "scale.total" not in FixedWeighting(NAMES, {n: 1.0 for n in NAMES}, {}).state_dict()  # off: no new keys


def _normalise_on_rank(rank: int, init: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    w = FixedWeighting(["a"], {"a": 1.0}, {}, normalise_steps=2)
    losses = {0: [2.0, 6.0], 1: [4.0, 12.0]}[rank]  # each process its own losses
    weights = [w({"a": torch.tensor(v)}, t)[1].item() for t, v in enumerate(losses)]
    torch.save(weights, f"{out}.{rank}")
    dist.destroy_process_group()


def test_normalise_divides_by_the_same_number_on_every_process(tmp_path):
    import torch.multiprocessing as mp

    out = str(tmp_path / "weights")
    mp.spawn(_normalise_on_rank, args=(f"file://{tmp_path / 'rendezvous'}", out), nprocs=2, join=True)
    both = [torch.load(f"{out}.{rank}") for rank in (0, 1)]
    # step 0: mean(2, 4) = 3; step 1: mean(2, 4, 6, 12) = 6, on both processes
    assert both[0] == both[1] == pytest.approx([1 / 3, 1 / 6])


def test_normalise_in_a_run_logs_the_divided_weights(tiny_cache, tmp_path, capfd):
    import json

    import ssmtl

    out = tmp_path / "run"
    settings = {"model.base_channels": 4, "model.depth": 2, "tasks.contrastive.queue_size": 16, "data.num_workers": 0,
                "weighting.normalise": True, "weighting.normalise_steps": 2, "train.log_every": 1}
    ssmtl.pretrain(tiny_cache, out, steps=3, batch_size=2, settings=settings, progress=False)
    assert "weighting.normalise: each task's loss is divided by its mean over the first 2 steps" in capfd.readouterr().err
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"tasks"' in line]
    first = records[0]["tasks"]
    for task in first.values():  # step 1 (index 0): divided by its own loss, so loss x weight = 1
        assert task["loss"] * task["weight"] == pytest.approx(1.0, rel=1e-4)
    losses = {n: [r["tasks"][n]["loss"] for r in records] for n in first}
    for n, values in losses.items():  # step 3: fixed divisor, the mean of steps 1 and 2
        assert records[2]["tasks"][n]["weight"] == pytest.approx(2 / (abs(values[0]) + abs(values[1])), rel=1e-4)
