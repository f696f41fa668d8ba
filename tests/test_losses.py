"""Each loss against a naive per-query loop written straight from the paper's formula."""

import math

import pytest
import torch

from lit_dr.models.losses import info_nce, same_tower_info_nce


def batch(b=5, g=3, h=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, generator=gen, dtype=torch.float64)
    d = torch.randn(b * g, h, generator=gen, dtype=torch.float64)
    exclude = torch.rand(b, b * g, generator=gen) < 0.3
    return q, d, exclude


def naive_info_nce(q, d, g, tau, exclude=None):
    total = 0.0
    for i in range(len(q)):
        pos = float(q[i] @ d[i * g]) / tau
        denom = sum(
            math.exp(float(q[i] @ d[c]) / tau)
            for c in range(len(d))
            if c == i * g or exclude is None or not exclude[i, c]
        )
        total += -(pos - math.log(denom))
    return total / len(q)


def naive_samtone(q, d, g, tau, exclude=None, symmetric=False):
    b = len(q)
    p = d[::g]

    def one_direction(anchor, cross, same, positive_col, drop):
        total = 0.0
        for i in range(b):
            pos = float(anchor[i] @ cross[positive_col(i)]) / tau
            denom = sum(
                math.exp(float(anchor[i] @ cross[c]) / tau)
                for c in range(len(cross))
                if c == positive_col(i) or drop is None or not drop(i, c)
            )
            denom += sum(math.exp(float(anchor[i] @ same[j]) / tau) for j in range(b) if j != i)
            total += -(pos - math.log(denom))
        return total / b

    drop_qd = None if exclude is None else (lambda i, c: bool(exclude[i, c]))
    loss = one_direction(q, d, q, lambda i: i * g, drop_qd)
    if not symmetric:
        return loss
    drop_pq = None if exclude is None else (lambda i, j: bool(exclude[j, i * g]))
    return (loss + one_direction(p, q, p, lambda i: i, drop_pq)) / 2


@pytest.mark.parametrize("tau", [1.0, 0.05])
@pytest.mark.parametrize("use_exclude", [False, True])
def test_info_nce_matches_formula(tau, use_exclude):
    q, d, exclude = batch()
    ex = exclude if use_exclude else None
    assert info_nce(q, d, 3, tau, ex).item() == pytest.approx(naive_info_nce(q, d, 3, tau, ex), rel=1e-9)


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("use_exclude", [False, True])
def test_same_tower_info_nce_matches_formula(symmetric, use_exclude):
    q, d, exclude = batch(seed=1)
    ex = exclude if use_exclude else None
    got = same_tower_info_nce(q, d, 3, 0.1, ex, symmetric).item()
    assert got == pytest.approx(naive_samtone(q, d, 3, 0.1, ex, symmetric), rel=1e-9)


def test_samtone_is_info_nce_plus_its_same_tower_share():
    """L_SamToNe - L_InfoNCE = mean_i log(1 + Q_i / C_i), with C_i = sum_c e^{s(q_i,c)/tau} over the documents the
    softmax keeps and Q_i = sum_{j != i} e^{s(q_i,q_j)/tau}: the two differ by the q-q terms alone, computed here
    with logsumexp, not by either loss. With one query there are none, and the two are equal."""
    q, d, exclude = batch(seed=2)  # B 5, G 3
    tau = 0.07
    own = torch.zeros(5, 15, dtype=torch.bool)
    own[torch.arange(5), torch.arange(5) * 3] = True  # each query's positive, never excluded
    for ex in (torch.zeros_like(exclude), exclude):
        cross = (q @ d.T / tau).masked_fill(ex & ~own, float("-inf"))  # (B, B * G)
        same = (q @ q.T / tau).masked_fill(torch.eye(5, dtype=torch.bool), float("-inf"))  # (B, B)
        share = torch.nn.functional.softplus(same.logsumexp(1) - cross.logsumexp(1)).mean()  # log(1 + Q/C)
        got = same_tower_info_nce(q, d, 3, tau, ex)
        assert torch.allclose(got, info_nce(q, d, 3, tau, ex) + share, rtol=0, atol=1e-12)
        assert share > 0.01  # the same-tower terms matter in this batch
    assert torch.allclose(same_tower_info_nce(q[:1], d[:3], 3, tau), info_nce(q[:1], d[:3], 3, tau),
                          rtol=0, atol=1e-12)


def test_same_tower_term_adds_to_the_loss():
    q, d, _ = batch(seed=3)
    assert same_tower_info_nce(q, d, 3, 0.5) > info_nce(q, d, 3, 0.5)


def test_own_positive_is_never_excluded():
    q, d, _ = batch(b=3, g=2)
    everything = torch.ones(3, 6, dtype=torch.bool)
    # Only the positive is left in each row's softmax: the loss is exactly zero.
    assert info_nce(q, d, 2, 1.0, everything).item() == pytest.approx(0.0, abs=1e-12)


def test_gradients_reach_both_towers():
    q, d, _ = batch()
    q.requires_grad_(True)
    d.requires_grad_(True)
    same_tower_info_nce(q, d, 3, 0.1, symmetric=True).backward()
    assert q.grad.abs().sum() > 0 and d.grad.abs().sum() > 0


def naive_masked_samtone(q, d, g, tau, pairs):
    """The one-way SamToNe loss with the q-q pairs in `pairs` left out of the denominator, from the formula."""
    total = 0.0
    for i in range(len(q)):
        pos = float(q[i] @ d[i * g]) / tau
        denom = sum(math.exp(float(q[i] @ d[c]) / tau) for c in range(len(d)))
        denom += sum(math.exp(float(q[i] @ q[j]) / tau) for j in range(len(q)) if j != i and (i, j) not in pairs)
        total += -(pos - math.log(denom))
    return total / len(q)


def test_queries_sharing_a_positive_leave_the_same_tower_sum():
    """Queries 0 and 2 share a positive (d[2 * G] is also judged relevant to query 0); queries 1 and 3 the other way
    round (q_1's positive is relevant to q_3). The mask names exactly those pairs, both ways, and the loss leaves
    them out of the q-q sum as the formula does; without the mask the loss is the unmasked one."""
    from lit_dr.models.losses import shared_positive_pairs

    q, d, _ = batch(b=5, g=3, seed=4)
    exclude = torch.zeros(5, 15, dtype=torch.bool)
    exclude[0, 2 * 3] = True  # p_2 is a positive of q_0 as well
    exclude[3, 1 * 3] = True  # p_1 is a positive of q_3 as well
    exclude[4, 4 * 3 + 1] = True  # a judged hard negative of q_4's own: no query pair
    pairs = shared_positive_pairs(exclude, 3)
    assert {tuple(ij) for ij in pairs.nonzero().tolist()} == {(0, 2), (2, 0), (1, 3), (3, 1)}
    got = same_tower_info_nce(q, d, 3, 1.0, same_tower_exclude=pairs).item()
    want = naive_masked_samtone(q, d, 3, 1.0, {(0, 2), (2, 0), (1, 3), (3, 1)})
    assert got == pytest.approx(want, rel=1e-9)
    assert got != pytest.approx(same_tower_info_nce(q, d, 3, 1.0).item(), rel=1e-6)
    assert same_tower_info_nce(q, d, 3, 0.1, same_tower_exclude=torch.zeros(5, 5, dtype=torch.bool)).item() == \
        pytest.approx(naive_samtone(q, d, 3, 0.1), rel=1e-9)
