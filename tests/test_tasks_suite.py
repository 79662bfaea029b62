"""The built-in dense and positional pretext tasks: reconstruct, neighbor, position, local-contrastive.

For each task: its loss against a reference written independently here (numpy,
explicit loops), over-fitting a fixed tiny batch, whether it trains the decoder,
and option validation. Plus: one shared forward pass of all six built-in tasks.

Everything runs on 32x32 slices with an 8-channel, depth-2 U-Net on one CPU thread.
"""

from __future__ import annotations

import math
from importlib import metadata

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from ssmtl.training.augment import AugmentConfig, make_augmenter

from ssmtl.api.geometry import apply_affine, correspondence
from ssmtl.pretraining.config import resolve_pretrain_config
from ssmtl.training.optim import parameter_groups
from ssmtl.pretraining.module import build_pretrain_module, sequence_length
from ssmtl.api.errors import ConfigError
from ssmtl.host.registry import builtin_plugins, get_registry
from ssmtl.api.views import BUILTIN_VIEWS, SequenceBatch, StepContext, View
from ssmtl.plugins.tasks import local_contrastive, neighbor, position, reconstruct

from helpers import NetworkPasses

SIZE = 32
SMALL = {"model.base_channels": 8, "model.depth": 2, "seed": 0}
NEW_TASKS = ("reconstruct", "neighbor", "position", "local-contrastive")


@pytest.fixture(autouse=True)
def _one_thread():
    # two cores shared with other processes: one thread is faster and steadier
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_batch(b: int = 4, k: int = 2, size: int = SIZE, depth: int = 16, seed: int = 0) -> SequenceBatch:
    """B sequences of k consecutive slices of synthetic 'volumes': a body ellipse, an
    organ whose radius grows along the volume and a 'spine' that moves with z, so
    neighbouring slices are similar and the position is visible."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    slices, positions, index = [], [], []
    for _ in range(b):
        start = int(torch.randint(0, depth - k + 1, (1,), generator=g))
        cx, cy, phase = (torch.rand(3, generator=g) - 0.5).tolist()
        seq, pos, idx = [], [], []
        for j in range(k):
            z = start + j
            t = z / (depth - 1)
            body = ((xx / 0.85) ** 2 + (yy / 0.65) ** 2 < 1).float()
            radius = 0.15 + 0.25 * t
            organ = (((xx - 0.6 * cx) ** 2 + (yy - 0.5 * cy) ** 2) < radius**2).float()
            spine = (((xx - 0.3 * math.sin(3 * t + phase)) ** 2 + (yy - 0.4) ** 2) < 0.02).float()
            seq.append(0.3 * body + 0.8 * organ * body + 1.2 * spine + 0.2 * xx * t)
            pos.append(t)
            idx.append(z)
        slices.append(torch.stack(seq))
        positions.append(pos)
        index.append(idx)
    return SequenceBatch(torch.stack(slices), torch.tensor(positions), torch.arange(b), torch.tensor(index))


def make_module(tasks: list[str], sets: list[str] = ()):
    config = resolve_pretrain_config(registry=get_registry(), flags=SMALL, tasks=tasks, sets=list(sets), environ={})
    return config, build_pretrain_module(config, get_registry())


def train(module, batch: SequenceBatch, steps: int, lr: float = 3e-3, fixed_views: bool = True) -> list[float]:
    """Plain optimisation loop (the engine's, without Accelerate); returns the total loss per step."""
    optimizer = torch.optim.AdamW(parameter_groups(module, 0.0), lr=lr)
    history = []
    for step in range(steps):
        if fixed_views:
            torch.manual_seed(1234)  # same views, masks, directions and points every step
        total, _, _, _ = module(batch, step)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        with torch.no_grad():
            for task in module.tasks.values():
                task.after_optimizer_step(module.network, step)
        history.append(float(total.detach()))
    return history


def context(batch: SequenceBatch, network, augment: AugmentConfig | None = None, builders=None) -> StepContext:
    return StepContext(batch, network, make_augmenter(augment or AugmentConfig()), builders or dict(BUILTIN_VIEWS))


# -- registration ------------------------------------------------------------------------


def test_registered_as_builtins_and_entry_points():
    registry = get_registry()
    for name in NEW_TASKS:
        assert name in registry.tasks
        assert registry.tasks[name].config_model().name == name
    modules = {f"ssmtl.plugins.tasks.{m}" for m in ("reconstruct", "neighbor", "position", "local_contrastive")}
    assert modules <= set(builtin_plugins())
    assert {p.name for p in registry.plugins if p.builtin} >= modules
    eps = {ep.name: ep.value for ep in metadata.entry_points(group="ssmtl")}
    for m in ("reconstruct", "neighbor", "position", "local_contrastive"):
        assert eps.get(m) == f"ssmtl.plugins.tasks.{m}"


def test_trains_attributes():
    assert reconstruct.ReconstructTask.trains == {"encoder", "decoder"}
    assert neighbor.NeighborTask.trains == {"encoder", "decoder"}
    assert local_contrastive.LocalContrastiveTask.trains == {"encoder", "decoder"}
    assert position.PositionTask.trains == {"encoder"}


def test_every_option_is_documented():
    for module, cls in (
        (reconstruct, reconstruct.ReconstructConfig),
        (neighbor, neighbor.NeighborConfig),
        (position, position.PositionConfig),
        (local_contrastive, local_contrastive.LocalContrastiveConfig),
    ):
        assert "What it trains" in module.__doc__
        for field_name, info in cls.model_fields.items():
            if field_name != "name":
                assert info.description, f"{cls.__name__}.{field_name} has no description"


# -- bad options ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "task, option, value",
    [
        ("reconstruct", "mask_ratio", "1.5"),
        ("reconstruct", "mask_ratio", "0"),
        ("reconstruct", "patch_size", "0"),
        ("reconstruct", "loss", "l3"),
        ("reconstruct", "mode", "inpaint"),
        ("neighbor", "mode", "previous"),
        ("neighbor", "loss", "huber"),
        ("position", "bins", "1"),
        ("position", "mode", "rank"),
        ("local-contrastive", "temperature", "0"),
        ("local-contrastive", "negatives", "volume"),
        ("local-contrastive", "num_points", "1"),
    ],
)
def test_bad_options_fail_naming_the_field(task, option, value):
    with pytest.raises(ConfigError) as err:
        resolve_pretrain_config(registry=get_registry(), flags=SMALL, tasks=[task], sets=[f"tasks.{task}.{option}={value}"], environ={})
    assert f"tasks.{task}.{option}" in str(err.value)


def test_mask_ratio_1_5_message():
    with pytest.raises(ConfigError, match=r"tasks\.reconstruct\.mask_ratio"):
        resolve_pretrain_config(registry=get_registry(), tasks=["reconstruct"], sets=["tasks.reconstruct.mask_ratio=1.5"], environ={})


def test_sequence_length_needed():
    for sets, need in (([], 2), (["tasks.neighbor.mode=middle"], 3)):
        config, module = make_module(["neighbor"], sets)
        assert sequence_length(config, module.tasks) == need
    config, module = make_module(["reconstruct", "position", "local-contrastive"])
    assert sequence_length(config, module.tasks) == 1


# -- reconstruct --------------------------------------------------------------------------------


def _masked_loss_reference(pred, target, mask, kind):
    pred, target = pred.numpy().astype(np.float64), target.numpy().astype(np.float64)
    mask = np.ones(pred.shape, dtype=bool) if mask is None else np.broadcast_to(mask.numpy(), pred.shape)
    total, count = 0.0, 0
    for index in np.ndindex(*pred.shape):
        if mask[index]:
            d = pred[index] - target[index]
            total += abs(d) if kind == "l1" else d * d
            count += 1
    return total / max(count, 1)


@pytest.mark.parametrize("kind", ["l1", "l2"])
@pytest.mark.parametrize("region", ["masked", "all"])
def test_masked_reconstruction_loss_matches_reference(kind, region):
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(3, 1, 6, 5, generator=g)
    target = torch.randn(3, 1, 6, 5, generator=g)
    mask = torch.rand(3, 1, 6, 5, generator=g) < 0.4
    used = mask if region == "masked" else None
    got = reconstruct.masked_reconstruction_loss(pred, target, used, kind)
    assert got.item() == pytest.approx(_masked_loss_reference(pred, target, used, kind), rel=1e-6)


def test_masked_reconstruction_loss_empty_mask_is_zero():
    pred = torch.randn(2, 1, 4, 4, requires_grad=True)
    loss = reconstruct.masked_reconstruction_loss(pred, torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 4, dtype=torch.bool), "l1")
    assert loss.item() == 0.0
    loss.backward()


@pytest.mark.parametrize("fill", ["mean", "zero", "noise"])
def test_mask_patches(fill):
    torch.manual_seed(0)
    images = torch.randn(5, 1, 20, 18)  # 2x2 grid of 8-px cells, margins of 4 / 2 px
    masked, mask = reconstruct.mask_patches(images, 0.5, 8, fill)
    assert mask.shape == (5, 1, 20, 18)
    assert not mask[:, :, 16:].any() and not mask[:, :, :, 16:].any()  # margins untouched
    cells = mask[:, 0, :16, :16].reshape(5, 2, 8, 2, 8)
    assert (cells.all(dim=(2, 4)) == cells.any(dim=(2, 4))).all()  # whole cells
    assert (cells.all(dim=(2, 4)).sum(dim=(1, 2)) == 2).all()  # round(0.5 * 4) cells per image
    assert torch.equal(masked[~mask], images[~mask])
    for i in range(5):
        filled = masked[i][mask[i]]
        if fill == "mean":
            assert torch.allclose(filled, images[i].mean().expand_as(filled))
        elif fill == "zero":
            assert (filled == 0).all()
        else:
            assert not torch.equal(filled, images[i][mask[i]])


def test_swap_patches_is_a_pairwise_exchange_of_cells():
    torch.manual_seed(0)
    n, p, g = 3, 4, 4
    ids = torch.arange(g * g, dtype=torch.float32).view(1, 1, g, g)
    images = ids.repeat_interleave(p, 2).repeat_interleave(p, 3).repeat(n, 1, 1, 1)  # cell c has value c
    swapped, mask = reconstruct.swap_patches(images, num_swaps=3, patch_size=p)
    cells = swapped[:, 0, ::p, ::p].reshape(n, -1).long()  # value now in each cell
    assert torch.equal(swapped, cells.view(n, 1, g, g).float().repeat_interleave(p, 2).repeat_interleave(p, 3))
    for i in range(n):
        moved = (cells[i] != torch.arange(g * g)).nonzero().squeeze(1)
        assert len(moved) == 6  # 3 pairs
        assert torch.equal(cells[i][cells[i][moved]], moved)  # an involution: pairs swapped
        expected = torch.zeros(g * g, dtype=torch.bool)
        expected[moved] = True
        assert torch.equal(mask[i, 0, ::p, ::p].reshape(-1), expected)
    # more swaps than cells allow: capped at half the cells
    swapped, mask = reconstruct.swap_patches(images, num_swaps=100, patch_size=p)
    assert mask.all()


@pytest.mark.parametrize("where", ["shared", "separate"])
def test_masked_view_is_the_sequence_view_with_holes(where):
    config, module = make_module(["reconstruct"], ["tasks.reconstruct.patch_size=8", f"tasks.reconstruct.view={where}"])
    torch.manual_seed(0)
    ctx = module.context(make_batch())
    view = ctx.view("sequence" if where == "shared" else "reconstruct/masked")
    assert isinstance(view, reconstruct.MaskedView)
    torch.manual_seed(0)  # the same augmentation, built without the task's transform
    intact = StepContext(make_batch(), module.network, make_augmenter(config.augment), dict(BUILTIN_VIEWS)).view("sequence")
    assert torch.equal(view.original, intact.images)
    assert torch.equal(view.theta, intact.theta)
    assert torch.equal(view.images[~view.mask], intact.images[~view.mask])
    assert not torch.equal(view.images[view.mask], intact.images[view.mask])
    n = view.images.shape[0]
    altered = torch.arange(n) if where == "separate" else ctx.decoder_rows  # shared: only the decoded slices
    assert where == "separate" or len(altered) == n // make_batch().sequence_length
    kept = torch.ones(n, dtype=torch.bool)
    kept[altered] = False
    assert not view.mask[kept].any() and torch.equal(view.images[kept], intact.images[kept])
    per_row = view.mask[altered].float().mean(dim=(1, 2, 3))
    assert torch.allclose(per_row, torch.full_like(per_row, 10 / 16))  # round(0.6 * 16) of 16 cells
    # shared: every task's `sequence` is the masked one; separate: it stays intact
    assert ctx.view("sequence").images.equal(view.images if where == "shared" else intact.images)
    assert ("reconstruct/masked" in module.builders) == (where == "separate")


@pytest.mark.parametrize("where", ["shared", "separate"])
@pytest.mark.parametrize("policy", ["all", "one"])
def test_reconstruct_loss_is_the_masked_error_on_the_decoded_rows(where, policy):
    config, module = make_module(["reconstruct"], ["tasks.reconstruct.patch_size=8", f"tasks.reconstruct.view={where}",
                                                   f"train.decoder_slices={policy}", "data.sequence_length=3"])
    task = module.tasks["reconstruct"]
    torch.manual_seed(0)
    ctx = module.context(make_batch(b=4, k=3))
    with NetworkPasses(module) as passes:
        out = task(ctx)
    name = "sequence" if where == "shared" else "reconstruct/masked"
    view = ctx.view(name)
    # one encoder and one decoder pass, on the masked view's rows the decoder takes
    assert len(passes.encoder_inputs) == 1 and passes.encoder_inputs[0] is view.images
    assert passes.decoder_rows == [12 if policy == "all" else 4]
    assert ctx.encoded_views == ctx.decoded_views == (name,)
    rows = torch.arange(12) if policy == "all" else ctx.decoder_rows
    if policy == "one":
        assert torch.equal(rows // 3, torch.arange(4))  # one slice of each sequence
    # reference: the decoder on the chosen rows' encoder features, then the squared error on masked pixels
    feats = ctx.encode(name)
    pred = task.head(module.network.decoder([f[rows] for f in feats]))
    err = (pred - view.original[rows]) ** 2
    mask = view.mask[rows]
    assert pred.shape[0] == (12 if policy == "all" else 4)
    assert out.loss.item() == pytest.approx((err[mask]).mean().item(), rel=1e-5)


@pytest.mark.parametrize(
    "sets",
    [
        ["tasks.reconstruct.patch_size=8"],
        ["tasks.reconstruct.mode=restore", "tasks.reconstruct.patch_size=4", "tasks.reconstruct.num_swaps=8", "tasks.reconstruct.loss=l1"],
    ],
    ids=["mask", "restore"],
)
def test_reconstruct_overfits_fixed_batch(sets):
    _, module = make_module(["reconstruct"], sets)
    history = train(module, make_batch(), steps=30)
    assert all(math.isfinite(x) for x in history)
    assert history[-1] < 0.5 * history[0], history


# -- neighbor ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["l1", "l2"])
def test_pixel_loss_matches_reference(kind):
    g = torch.Generator().manual_seed(1)
    pred, target = torch.randn(4, 1, 5, 5, generator=g), torch.randn(4, 1, 5, 5, generator=g)
    got = neighbor.pixel_loss(pred, target, kind)
    assert got.item() == pytest.approx(_masked_loss_reference(pred, target, None, kind), rel=1e-6)


def test_next_pairs_stay_inside_their_sequence():
    torch.manual_seed(0)
    b, k = 50, 3
    index = torch.arange(b * k)
    step, partner = neighbor.next_pairs(index, k)
    assert set(step.tolist()) == {-1, 1}
    assert torch.equal(partner, index + step)
    assert torch.equal(partner // k, index // k)  # same sequence
    assert (step[index % k == 0] == 1).all() and (step[index % k == k - 1] == -1).all()
    middle = step[index % k == 1]
    assert 0 < (middle == 1).float().mean() < 1  # random direction where both exist


@pytest.mark.parametrize("policy", ["all", "one"])
@pytest.mark.parametrize("mode, k", [("next", 2), ("next", 3), ("middle", 3), ("middle", 4)])
def test_neighbor_inputs_and_targets(mode, k, policy):
    config, module = make_module(["neighbor"], [f"tasks.neighbor.mode={mode}", f"train.decoder_slices={policy}"])
    task = module.tasks["neighbor"]
    batch = make_batch(b=3, k=k)
    torch.manual_seed(0)
    ctx = module.context(batch)
    inputs, target = task.prepare(ctx)
    feats = ctx.decode("sequence")
    theta = ctx.view("sequence").theta
    n, c = feats.shape[:2]
    # middle mode needs every slice: it overrides decoder_slices=one
    rows = list(range(3 * k)) if ctx.decoder_rows is None else ctx.decoder_rows.tolist()
    assert len(rows) == (3 if policy == "one" and mode == "next" else 3 * k) == n
    # reference: raw slices (B, k, H, W) warped one by one with the view's transform
    raw = batch.slices.reshape(-1, 1, SIZE, SIZE)
    aligned = torch.stack([apply_affine(raw[i:i + 1], theta[i:i + 1])[0] for i in range(3 * k)])
    if mode == "next":
        assert inputs.shape == (n, c + 1, SIZE, SIZE)
        assert torch.equal(inputs[:, :c], feats)
        direction = inputs[:, c]
        assert (direction == direction[:, :1, :1]).all()
        for row, i in enumerate(rows):
            s = int(direction[row, 0, 0])
            assert s in (-1, 1) and 0 <= i % k + s < k
            assert torch.allclose(target[row], aligned[i + s], atol=1e-6)
    else:
        assert inputs.shape == (3 * (k - 2), 2 * c, SIZE, SIZE)
        row = 0
        for bi in range(3):
            for j in range(1, k - 1):
                assert torch.equal(inputs[row, :c], feats[bi * k + j - 1])
                assert torch.equal(inputs[row, c:], feats[bi * k + j + 1])
                assert torch.allclose(target[row], aligned[bi * k + j], atol=1e-6)
                row += 1
    # the target is the raw (un-jittered) slice: it differs from the augmented view
    assert not torch.allclose(aligned, ctx.view("sequence").images)


@pytest.mark.parametrize("mode, k", [("next", 2), ("middle", 3)])
def test_neighbor_overfits_fixed_batch(mode, k):
    _, module = make_module(["neighbor"], [f"tasks.neighbor.mode={mode}"])
    history = train(module, make_batch(k=k), steps=30)
    assert history[-1] < 0.5 * history[0], history


# -- position ------------------------------------------------------------------------------------------


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_position_regression_loss_by_hand():
    output = torch.tensor([[0.3], [-1.2], [2.0], [0.0]])
    positions = torch.tensor([0.6, 0.1, 0.95, 0.0])
    beta = 0.1
    smooth, squared = [], []
    for o, p in zip(output[:, 0].tolist(), positions.tolist()):
        d = abs(_sigmoid(o) - p)
        smooth.append(0.5 * d * d / beta if d < beta else d - 0.5 * beta)
        squared.append(d * d)
    got = position.position_loss(output, positions, "regress", "smooth_l1", beta=beta)
    assert got.item() == pytest.approx(sum(smooth) / 4, rel=1e-5)
    got = position.position_loss(output, positions, "regress", "mse")
    assert got.item() == pytest.approx(sum(squared) / 4, rel=1e-5)


def test_position_classification_loss_by_hand():
    g = torch.Generator().manual_seed(0)
    bins = 4
    output = torch.randn(5, bins, generator=g)
    positions = torch.tensor([0.0, 0.24, 0.25, 0.99, 1.0])
    labels = [0, 0, 1, 3, 3]  # floor(p * bins), with p = 1 in the last bin
    assert position.position_bins(positions, bins).tolist() == labels
    total = 0.0
    for row, label in zip(output.tolist(), labels):
        m = max(row)
        total += m + math.log(sum(math.exp(v - m) for v in row)) - row[label]
    got = position.position_loss(output, positions, "classify", bins=bins)
    assert got.item() == pytest.approx(total / 5, rel=1e-5)


@pytest.mark.parametrize("sets", [[], ["tasks.position.mode=classify", "tasks.position.bins=4"]], ids=["regress", "classify"])
def test_position_overfits_fixed_batch(sets):
    _, module = make_module(["position"], sets)
    history = train(module, make_batch(), steps=30)
    assert history[-1] < 0.5 * history[0], history


# -- local-contrastive ---------------------------------------------------------------------------------


def _dense_info_nce_reference(za, zb, valid, temperature, negatives):
    za, zb, valid = za.numpy().astype(np.float64), zb.numpy().astype(np.float64), valid.numpy()
    points = []  # (image, view, point, vector) of every kept point
    for n in range(za.shape[0]):
        for v, z in enumerate((za, zb)):
            for p in range(za.shape[1]):
                if valid[n, p]:
                    points.append((n, v, p, z[n, p]))
    losses = []
    for i, (n, v, p, q) in enumerate(points):
        logits, positive = [], None
        for j, (n2, v2, p2, key) in enumerate(points):
            if j == i or (negatives == "image" and n2 != n):
                continue
            logit = float(q @ key) / temperature
            logits.append(logit)
            if n2 == n and p2 == p and v2 != v:
                positive = logit
        m = max(logits)
        losses.append(m + math.log(sum(math.exp(x - m) for x in logits)) - positive)
    return sum(losses) / len(losses)


@pytest.mark.parametrize("negatives", ["image", "batch"])
def test_dense_info_nce_matches_reference(negatives):
    g = torch.Generator().manual_seed(0)
    za = F.normalize(torch.randn(3, 5, 4, generator=g), dim=2)
    zb = F.normalize(za + 0.5 * torch.randn(3, 5, 4, generator=g), dim=2)
    valid = torch.tensor([[1, 1, 0, 1, 1], [1, 0, 0, 0, 1], [0, 1, 1, 1, 0]], dtype=torch.bool)
    for temperature in (0.1, 0.5):
        got = local_contrastive.dense_info_nce(za, zb, valid, temperature, negatives)
        ref = _dense_info_nce_reference(za, zb, valid, temperature, negatives)
        assert got.item() == pytest.approx(ref, rel=1e-5)


def test_dense_info_nce_no_points_is_zero_and_differentiable():
    za = F.normalize(torch.randn(2, 3, 4), dim=2).requires_grad_()
    loss = local_contrastive.dense_info_nce(za, za, torch.zeros(2, 3, dtype=torch.bool))
    assert loss.item() == 0.0
    loss.backward()


def test_sample_points():
    grid = local_contrastive.sample_points(2, 16, "grid", "cpu")
    assert grid.shape == (2, 16, 2)
    assert torch.allclose(grid[0, :4, 0], torch.tensor([-0.75, -0.25, 0.25, 0.75]))  # x varies first
    assert torch.allclose(grid[0, ::4, 1], torch.tensor([-0.75, -0.25, 0.25, 0.75]))
    rand = local_contrastive.sample_points(3, 10, "random", "cpu")
    assert rand.shape == (3, 10, 2) and rand.abs().max() <= 1


def test_corresponding_points_show_the_same_pixels():
    """Points mapped with correspondence(theta_a, theta_b) sample the same content in both views."""
    torch.manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 64), torch.linspace(-1, 1, 64), indexing="ij")
    smooth = (torch.sin(2.5 * xx + 1) * torch.cos(1.7 * yy) + 0.5 * xx * yy).view(1, 1, 64, 64).repeat(6, 1, 1, 1)
    batch = SequenceBatch(smooth.view(6, 1, 64, 64), torch.zeros(6, 1), torch.arange(6), torch.zeros(6, 1, dtype=torch.long))
    augment = AugmentConfig(contrast=0, brightness=0, gamma=(1, 1), blur=0, noise=0, rotate=30, flip=0.5)
    ctx = context(batch, network=None, augment=augment)
    a, b = ctx.view("sequence"), ctx.view("sequence_b")
    points_a = local_contrastive.sample_points(6, 64, "random", "cpu") * 0.8
    points_b = local_contrastive.map_points(points_a, correspondence(a.theta, b.theta))
    valid = (points_b.abs() <= 1).all(dim=2)
    assert valid.float().mean() > 0.3
    # map_points is the affine map written out
    corr = correspondence(a.theta, b.theta)
    manual = torch.stack([corr[:, 0, 0:1] * points_a[..., 0] + corr[:, 0, 1:2] * points_a[..., 1] + corr[:, 0, 2:3],
                          corr[:, 1, 0:1] * points_a[..., 0] + corr[:, 1, 1:2] * points_a[..., 1] + corr[:, 1, 2:3]], dim=-1)
    assert torch.allclose(points_b, manual, atol=1e-6)
    va = local_contrastive.sample_features(a.images, points_a)[:, 0, :, 0]
    vb = local_contrastive.sample_features(b.images, points_b)[:, 0, :, 0]
    assert (va - vb)[valid].abs().max() < 0.05
    # and a wrong correspondence does not
    shuffled = local_contrastive.sample_features(b.images, points_b.flip(1))[:, 0, :, 0]
    assert (va - shuffled).abs().mean() > 0.2


@pytest.mark.parametrize("sets", [[], ["tasks.local-contrastive.negatives=batch", "tasks.local-contrastive.sampling=random"]], ids=["image", "batch"])
def test_local_contrastive_forward(sets):
    config, module = make_module(["local-contrastive"], ["tasks.local-contrastive.num_points=16", *sets])
    torch.manual_seed(0)
    total, losses, _, metrics = module(make_batch(), 0)
    assert math.isfinite(total.item())
    assert 0 < metrics["local-contrastive/kept"].item() <= 1
    total.backward()
    assert module.network.decoder.ups[-1].block[0].weight.grad.abs().sum() > 0


def test_local_contrastive_overfits_fixed_batch():
    _, module = make_module(["local-contrastive"], ["tasks.local-contrastive.num_points=16"])
    history = train(module, make_batch(), steps=30)
    assert history[-1] < 0.5 * history[0], history


# -- decoder training, and sharing ---------------------------------------------------------------------


def _decoder_state(module):
    return {k: v.detach().clone() for k, v in module.network.decoder.named_parameters()}


@pytest.mark.parametrize("task", ["reconstruct", "neighbor", "local-contrastive"])
def test_decoder_tasks_train_the_decoder(task):
    _, module = make_module([task], [f"tasks.{task}.patch_size=8"] if task == "reconstruct" else [])
    assert all(p.requires_grad for p in module.network.decoder.parameters())
    before = _decoder_state(module)
    train(module, make_batch(), steps=3)
    after = _decoder_state(module)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) == len(before), f"unchanged decoder parameters: {set(before) - set(changed)}"


@pytest.mark.parametrize("tasks", [["contrastive"], ["position"], ["contrastive", "position"]])
def test_encoder_tasks_leave_the_decoder_frozen(tasks):
    sets = ["tasks.contrastive.queue_size=32"] if "contrastive" in tasks else []
    _, module = make_module(tasks, sets)
    assert not any(p.requires_grad for p in module.network.decoder.parameters())
    assert any(p.requires_grad for p in module.network.encoder.parameters())
    before = _decoder_state(module)
    encoder_before = [p.detach().clone() for p in module.network.encoder.parameters()]
    train(module, make_batch(), steps=3)
    after = _decoder_state(module)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert any(not torch.equal(a, p) for a, p in zip(encoder_before, module.network.encoder.parameters()))


@pytest.mark.parametrize("where", ["shared", "separate"])
def test_all_tasks_share_one_encoder_pass_per_view(where):
    tasks = ["reconstruct", "neighbor", "local-contrastive", "position", "order", "contrastive"]
    config, module = make_module(tasks, ["tasks.contrastive.queue_size=32", "tasks.reconstruct.patch_size=8",
                                         "tasks.local-contrastive.num_points=16", f"tasks.reconstruct.view={where}"])
    k = sequence_length(config, module.tasks)
    assert k == 3
    torch.manual_seed(0)
    with NetworkPasses(module) as passes:
        total, losses, weights, metrics = module(make_batch(k=k), 0)
    [ctx] = passes.contexts
    expected = {"sequence", "sequence_b"} | ({"reconstruct/masked"} if where == "separate" else set())
    assert set(ctx.encoded_views) == expected and set(ctx.decoded_views) == expected
    # every view through the encoder exactly once (the very images of the view), and the
    # decoder once per view, on one slice per sequence: however many of the six tasks ask
    assert len(passes.encoder_inputs) == len(expected)
    assert {id(x) for x in passes.encoder_inputs} == {id(ctx.view(v).images) for v in expected}
    assert passes.decoder_rows == [make_batch(k=k).batch_size] * len(expected)
    assert ctx.decoder_rows is not None and ctx.decode("sequence").shape[0] == make_batch(k=k).batch_size
    assert losses.shape == (6,) and torch.isfinite(losses).all()
    assert {"local-contrastive/acc", "position/mae", "reconstruct/masked_l1"} <= set(metrics)
    total.backward()
    for name, p in module.network.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


# -- decoder slices and view transforms -------------------------------------------------------


def test_decoder_rows_pick_one_slice_per_sequence_from_torch_rng():
    _, module = make_module(["reconstruct"], ["tasks.reconstruct.patch_size=8", "data.sequence_length=3"])
    assert module.decoder_slices == "one"  # the default
    batch = make_batch(b=50, k=3)
    torch.manual_seed(5)
    rows = module.context(batch).decoder_rows
    assert rows.shape == (50,) and torch.equal(rows // 3, torch.arange(50))
    assert set((rows % 3).tolist()) == {0, 1, 2}  # random position in the sequence
    torch.manual_seed(5)
    assert torch.equal(module.context(batch).decoder_rows, rows)  # reproducible (resume restores the RNG)
    ctx = module.context(batch)
    per_slice = torch.arange(150).view(150, 1) * 10
    assert torch.equal(ctx.decoded(per_slice), per_slice[ctx.decoder_rows])
    # single slices, or decoder_slices=all: every row
    assert module.context(make_batch(b=4, k=1)).decoder_rows is None
    _, every = make_module(["reconstruct"], ["tasks.reconstruct.patch_size=8", "train.decoder_slices=all"])
    ctx = every.context(batch)
    assert ctx.decoder_rows is None and ctx.decoded(per_slice) is per_slice


def test_decoder_slices_one_is_overridden_by_a_task_that_needs_every_slice():
    config, module = make_module(["neighbor", "reconstruct"], ["tasks.neighbor.mode=middle", "tasks.reconstruct.patch_size=8"])
    assert module.decoder_slices == "all"
    policy, notes = module.decoder_slices, module.notes
    assert policy == "all" and notes == ["train.decoder_slices=one ignored: task(s) neighbor need the decoder on every slice of a sequence"]
    batch = make_batch(b=2, k=3)
    with NetworkPasses(module) as passes:
        total, *_ = module(batch, 0)
    assert passes.decoder_rows == [6]  # every slice of 2 x 3
    assert passes.contexts[0].decode("sequence").shape[0] == 6


def test_view_transform_of_an_unknown_view_is_refused():
    from ssmtl.pretraining.module import PretrainModule
    from ssmtl.api.errors import SsmtlError

    _, module = make_module(["reconstruct"], ["tasks.reconstruct.patch_size=8"])
    task = module.tasks["reconstruct"]
    task.view_transforms = lambda: {"nope": lambda ctx, view: view}
    with pytest.raises(SsmtlError, match="task 'reconstruct' transforms view 'nope', which no task defines"):
        PretrainModule(module.network, {"reconstruct": task}, module.weighting, module.augment)


def test_reconstruct_refuses_a_shared_view_another_task_replaced():
    from ssmtl.api.errors import SsmtlError

    _, module = make_module(["reconstruct"], ["tasks.reconstruct.patch_size=8"])
    module.transforms["sequence"].append(lambda ctx, view: View(images=view.images, theta=view.theta, group=view.group))
    with pytest.raises(SsmtlError, match="reconstruct: view 'sequence' is not the masked view"):
        module(make_batch(), 0)
