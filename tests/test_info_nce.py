"""InfoNCE losses against a hand-written reference (explicit loops, numpy log-sum-exp)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from ssmtl.api.ssl.losses import info_nce, multi_positive_info_nce


def _unit(seed: int, n: int, d: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)


def _logsumexp(values: list[float]) -> float:
    a = np.asarray(values, dtype=np.float64)
    m = a.max()
    return float(m + np.log(np.exp(a - m).sum()))


def reference_info_nce(q: np.ndarray, k: np.ndarray, neg: np.ndarray, t: float) -> float:
    """mean_n -log( exp(q.k+/T) / (exp(q.k+/T) + sum_j exp(q.k-_j/T)) ), with explicit loops."""
    total = 0.0
    for n in range(q.shape[0]):
        pos = sum(q[n, d] * k[n, d] for d in range(q.shape[1])) / t
        negs = [sum(q[n, d] * neg[j, d] for d in range(q.shape[1])) / t for j in range(neg.shape[0])]
        total += -(pos - _logsumexp([pos] + negs))
    return total / q.shape[0]


def reference_multi_positive(q: np.ndarray, keys: np.ndarray, mask: np.ndarray, t: float) -> float:
    """mean over queries of the mean over positives of -log softmax(q.k/T) over all keys."""
    per_query = []
    for n in range(q.shape[0]):
        logits = [float(np.dot(q[n], keys[m])) / t for m in range(keys.shape[0])]
        lse = _logsumexp(logits)
        terms = [-(logits[m] - lse) for m in range(keys.shape[0]) if mask[n, m]]
        per_query.append(sum(terms) / len(terms))
    return sum(per_query) / len(per_query)


# -- info_nce -----------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.07, 0.2, 1.0])
@pytest.mark.parametrize("n,k,d", [(1, 1, 3), (4, 16, 8), (5, 7, 6)])
def test_info_nce_matches_loop_reference(n, k, d, temperature):
    q, pos, neg = _unit(1, n, d), _unit(2, n, d), _unit(3, k, d)
    got = info_nce(q, pos, neg, temperature=temperature)
    want = reference_info_nce(q.numpy(), pos.numpy(), neg.numpy(), temperature)
    assert got.dim() == 0
    assert got.item() == pytest.approx(want, rel=1e-5, abs=1e-6)


def test_info_nce_float32_inputs_match_reference():
    q, pos, neg = (t.float() for t in (_unit(4, 6, 5), _unit(5, 6, 5), _unit(6, 11, 5)))
    got = info_nce(q, pos, neg, temperature=0.2)
    want = reference_info_nce(q.double().numpy(), pos.double().numpy(), neg.double().numpy(), 0.2)
    assert got.item() == pytest.approx(want, rel=1e-4)


def test_info_nce_explicit_formula_single_query():
    # q = e1, k+ = e1, negatives e2 and -e1: q.k+ = 1, q.k- = {0, -1}
    q = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    pos = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    neg = torch.tensor([[0.0, 1.0], [-1.0, 0.0]], dtype=torch.float64)
    t = 0.5
    want = -math.log(math.exp(1 / t) / (math.exp(1 / t) + math.exp(0 / t) + math.exp(-1 / t)))
    assert info_nce(q, pos, neg, temperature=t).item() == pytest.approx(want, rel=1e-6)


def test_info_nce_orders_easy_vs_hard():
    q = _unit(7, 4, 8)
    neg = _unit(8, 10, 8)
    easy = info_nce(q, q.clone(), neg, temperature=0.1)  # positive identical to query
    hard = info_nce(q, -q, neg, temperature=0.1)  # positive opposite to query
    assert easy.item() < hard.item()
    assert easy.item() >= 0


def test_info_nce_gradient_matches_reference_gradient():
    q = _unit(9, 3, 4).requires_grad_(True)
    pos, neg = _unit(10, 3, 4), _unit(11, 5, 4)
    info_nce(q, pos, neg, temperature=0.3).backward()
    # numerical gradient of the reference
    eps = 1e-6
    base = q.detach().numpy().copy()
    num = np.zeros_like(base)
    for i in range(base.shape[0]):
        for j in range(base.shape[1]):
            plus, minus = base.copy(), base.copy()
            plus[i, j] += eps
            minus[i, j] -= eps
            num[i, j] = (reference_info_nce(plus, pos.numpy(), neg.numpy(), 0.3)
                         - reference_info_nce(minus, pos.numpy(), neg.numpy(), 0.3)) / (2 * eps)
    np.testing.assert_allclose(q.grad.numpy(), num, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize(
    "q_shape,p_shape,n_shape",
    [
        ((4,), (4,), (3, 4)),  # query not 2D
        ((2, 4), (3, 4), (5, 4)),  # positive rows differ
        ((2, 4), (2, 3), (5, 4)),  # positive dim differs
        ((2, 4), (2, 4), (5, 3)),  # negatives dim differs
        ((2, 4), (2, 4), (4,)),  # negatives not 2D
    ],
)
def test_info_nce_rejects_bad_shapes(q_shape, p_shape, n_shape):
    with pytest.raises(ValueError):
        info_nce(torch.randn(*q_shape), torch.randn(*p_shape), torch.randn(*n_shape))


@pytest.mark.parametrize("temperature", [0.0, -0.1])
def test_info_nce_rejects_non_positive_temperature(temperature):
    q = _unit(1, 2, 4)
    with pytest.raises(ValueError, match="temperature"):
        info_nce(q, q, _unit(2, 3, 4), temperature=temperature)


# -- multi_positive_info_nce ----------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_multi_positive_matches_loop_reference(temperature):
    q, keys = _unit(12, 4, 6), _unit(13, 9, 6)
    mask = torch.zeros(4, 9, dtype=torch.bool)
    mask[0, [0]] = True
    mask[1, [1, 2, 8]] = True
    mask[2, [3, 4]] = True
    mask[3, :] = True  # every key positive
    got = multi_positive_info_nce(q, keys, mask, temperature=temperature)
    want = reference_multi_positive(q.numpy(), keys.numpy(), mask.numpy(), temperature)
    assert got.item() == pytest.approx(want, rel=1e-6)


def test_multi_positive_single_positive_equals_info_nce():
    # one positive at key column n + shared negatives == info_nce with the same logits
    q, pos, neg = _unit(14, 3, 5), _unit(15, 3, 5), _unit(16, 6, 5)
    losses = []
    for n in range(3):
        keys = torch.cat([pos[n:n + 1], neg])
        mask = torch.zeros(1, keys.shape[0], dtype=torch.bool)
        mask[0, 0] = True
        losses.append(multi_positive_info_nce(q[n:n + 1], keys, mask, temperature=0.2))
    assert torch.stack(losses).mean().item() == pytest.approx(info_nce(q, pos, neg, 0.2).item(), rel=1e-6)


def test_multi_positive_float_mask_weights_like_bool():
    q, keys = _unit(17, 2, 4), _unit(18, 5, 4)
    mask = torch.tensor([[1, 0, 1, 0, 0], [0, 1, 0, 0, 1]], dtype=torch.bool)
    a = multi_positive_info_nce(q, keys, mask, 0.2)
    b = multi_positive_info_nce(q, keys, mask.double(), 0.2)
    assert a.item() == pytest.approx(b.item(), rel=1e-6)  # logits are computed in float32


def test_multi_positive_rejects_query_without_positive():
    q, keys = _unit(1, 3, 4), _unit(2, 5, 4)
    mask = torch.zeros(3, 5, dtype=torch.bool)
    mask[0, 0] = mask[2, 1] = True  # query 1 has none
    with pytest.raises(ValueError, match="positive"):
        multi_positive_info_nce(q, keys, mask)


def test_multi_positive_rejects_bad_mask_shape_and_temperature():
    q, keys = _unit(1, 3, 4), _unit(2, 5, 4)
    with pytest.raises(ValueError, match="positive_mask"):
        multi_positive_info_nce(q, keys, torch.ones(3, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="positive_mask"):
        multi_positive_info_nce(q, keys, torch.ones(5, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="temperature"):
        multi_positive_info_nce(q, keys, torch.ones(3, 5, dtype=torch.bool), temperature=0)
    with pytest.raises(ValueError):
        multi_positive_info_nce(q[0], keys, torch.ones(3, 5, dtype=torch.bool))
