"""LTRe / ADORE ranking losses against naive per-pair loops."""

import math

import pytest
import torch
from torch.testing import assert_close

from lit_dr.models.losses import listwise_softmax_loss, ltre_pairwise_loss

DEPTH = 6


def softplus(x):
    return math.log1p(math.exp(x)) if x < 30 else x


def ranked_lists(b=5, seed=0):
    """Each query: DEPTH retrieved documents (ranks 1..DEPTH), 0-2 appended positives, then padding.

    Query 0 has no relevant document at all; padding carries garbage scores, ranks and labels.
    """
    gen = torch.Generator().manual_seed(seed)
    length = DEPTH + 4
    scores = torch.randn(b, length, generator=gen, dtype=torch.float64)
    relevant = torch.rand(b, length, generator=gen) < 0.3
    ranks = torch.randint(-3, 50, (b, length), generator=gen)
    valid = torch.zeros(b, length, dtype=torch.bool)
    for q in range(b):
        appended = q % 3
        ranks[q, :DEPTH] = torch.arange(1, DEPTH + 1)
        ranks[q, DEPTH : DEPTH + appended] = torch.arange(DEPTH + 1, DEPTH + 1 + appended)
        relevant[q, DEPTH : DEPTH + appended] = True
        valid[q, : DEPTH + appended] = True
    relevant[0, : DEPTH + 2] = False
    relevant[1, 0] = True  # a retrieved positive next to appended ones
    return scores, relevant, ranks, valid


def naive_ltre(scores, relevant, ranks, valid, cut):
    """The released adore/train.py loop: both orientations of each pair over 2 x #(rel, non-rel) pairs."""
    b, length = scores.shape
    total = 0.0
    for q in range(b):
        idx = [i for i in range(length) if valid[q, i]]
        g = {i: 1 / int(ranks[q, i]) if int(ranks[q, i]) <= cut else 0.0 for i in idx}
        s = {i: float(scores[q, i]) for i in idx}
        num_pos_pairs, summed = 0, 0.0
        for i in idx:
            for j in idx:
                w = abs(g[i] - g[j])
                if relevant[q, i] and not relevant[q, j]:
                    num_pos_pairs += 1
                    summed += w * softplus(-(s[i] - s[j]))
                elif relevant[q, j] and not relevant[q, i]:
                    summed += w * softplus(s[i] - s[j])
        total += summed / (2 * num_pos_pairs) if num_pos_pairs else 0.0
    return total / b


def naive_listwise(scores, relevant, valid, tau):
    losses = []
    for q in range(scores.shape[0]):
        idx = [i for i in range(scores.shape[1]) if valid[q, i]]
        rel = [i for i in idx if relevant[q, i]]
        if rel:
            num = sum(math.exp(float(scores[q, i]) / tau) for i in rel)
            den = sum(math.exp(float(scores[q, i]) / tau) for i in idx)
            losses.append(-math.log(num / den))
    return sum(losses) / len(losses) if losses else 0.0


@pytest.mark.parametrize("cut", [DEPTH, 3, DEPTH + 1, 0])
@pytest.mark.parametrize("seed", [0, 1])
def test_ltre_matches_released_formula(cut, seed):
    scores, relevant, ranks, valid = ranked_lists(seed=seed)
    expected = naive_ltre(scores, relevant, ranks, valid, cut)
    assert_close(
        ltre_pairwise_loss(scores, relevant, ranks, cut, valid), torch.tensor(expected, dtype=torch.float64)
    )
    if cut > 0:
        assert expected > 0


def test_appended_positive_pairs_with_weight_one_over_rank():
    # Retrieved non-relevant at ranks 1, 2; a positive appended at rank 3, beyond cut 2.
    scores = torch.tensor([[0.5, -0.2, 0.1]], dtype=torch.float64)
    relevant = torch.tensor([[False, False, True]])
    ranks = torch.tensor([[1, 2, 3]])
    expected = (1 / 1 * softplus(-(0.1 - 0.5)) + 1 / 2 * softplus(-(0.1 + 0.2))) / 2
    assert_close(
        ltre_pairwise_loss(scores, relevant, ranks, cut=2), torch.tensor(expected, dtype=torch.float64)
    )


def test_pairs_beyond_cut_weigh_zero_but_count():
    scores = torch.tensor([[0.3, -1.0, 2.0, 0.7]], dtype=torch.float64, requires_grad=True)
    relevant = torch.tensor([[False, True, False, True]])
    ranks = torch.tensor([[1, 3, 4, 5]])
    loss = ltre_pairwise_loss(scores, relevant, ranks, cut=2)
    # Only pairs with the rank-1 document weigh (1 - 0); all four (rel, non-rel) pairs count.
    expected = (softplus(-(-1.0 - 0.3)) + softplus(-(0.7 - 0.3))) / 4
    assert_close(loss, torch.tensor(expected, dtype=torch.float64))
    loss.backward()
    assert scores.grad[0, 2] == 0  # non-relevant rank 4 only pairs beyond the cut


def test_padding_is_ignored():
    scores, relevant, ranks, valid = ranked_lists()
    garbage = scores.clone()
    junk = torch.tensor([float("nan"), float("-inf"), float("inf"), 1e6], dtype=torch.float64)
    garbage[~valid] = junk.repeat(20)[: int((~valid).sum())]
    relevant2, ranks2 = relevant.clone(), ranks.clone()
    relevant2[~valid] = ~relevant2[~valid]
    ranks2[~valid] = 0
    for fn in (
        lambda s, r, k: ltre_pairwise_loss(s, r, k, DEPTH, valid),
        lambda s, r, k: listwise_softmax_loss(s, r, valid, 0.5),
    ):
        s1, s2 = scores.clone().requires_grad_(), garbage.clone().requires_grad_()
        loss1, loss2 = fn(s1, relevant, ranks), fn(s2, relevant2, ranks2)
        loss1.backward()
        loss2.backward()
        assert_close(loss1, loss2)
        assert_close(s1.grad, s2.grad)
        assert (s2.grad[~valid] == 0).all()
    # The same lists cut to their real entries, one query at a time, give the same per-query losses.
    per_query = [
        ltre_pairwise_loss(
            scores[q : q + 1, valid[q]], relevant[q : q + 1, valid[q]], ranks[q : q + 1, valid[q]], DEPTH
        )
        for q in range(len(scores))
    ]
    assert_close(ltre_pairwise_loss(scores, relevant, ranks, DEPTH, valid), torch.stack(per_query).mean())


def test_no_relevant_gives_zero_and_no_nan():
    scores = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    relevant = torch.zeros(3, 5, dtype=torch.bool)
    ranks = torch.arange(1, 6).repeat(3, 1)
    for loss in (ltre_pairwise_loss(scores, relevant, ranks, 5), listwise_softmax_loss(scores, relevant)):
        loss.backward()
        assert loss.item() == 0.0
        assert (scores.grad == 0).all()
        scores.grad = None
    # All relevant: no pair either.
    assert ltre_pairwise_loss(scores, ~relevant, ranks, 5).item() == 0.0
    # A fully padded query next to a real one.
    valid = torch.tensor([[True] * 5, [False] * 5, [False] * 5])
    relevant[0, 2] = True
    loss = ltre_pairwise_loss(scores, relevant, ranks, 5, valid)
    loss.backward()
    assert torch.isfinite(scores.grad).all() and loss.item() > 0


def test_raising_a_weighted_positive_lowers_the_loss():
    scores, relevant, ranks, valid = ranked_lists()
    scores.requires_grad_()
    ltre_pairwise_loss(scores, relevant, ranks, DEPTH, valid).backward()
    for q in range(1, len(scores)):  # every query but 0 has a positive and retrieved non-relevant documents
        for i in range(scores.shape[1]):
            if valid[q, i] and relevant[q, i]:
                assert scores.grad[q, i] < 0
    # Non-relevant documents with a weighted pair are pushed down.
    weighted_neg = valid & ~relevant & (ranks <= DEPTH) & relevant.any(1, keepdim=True)
    assert (scores.grad[weighted_neg] > 0).all()


def test_cut_zero_is_the_released_default():
    # `arr[None:] = 0` in adore/train.py zeroes every weight, as cut 0 does here.
    scores, relevant, ranks, valid = ranked_lists()
    scores.requires_grad_()
    loss = ltre_pairwise_loss(scores, relevant, ranks, 0, valid)
    loss.backward()
    assert loss.item() == 0.0
    assert (scores.grad == 0).all()


@pytest.mark.parametrize("tau", [1.0, 0.1])
@pytest.mark.parametrize("seed", [0, 1])
def test_listwise_matches_formula(tau, seed):
    scores, relevant, _, valid = ranked_lists(seed=seed)
    expected = naive_listwise(scores, relevant, valid, tau)
    assert_close(
        listwise_softmax_loss(scores, relevant, valid, tau), torch.tensor(expected, dtype=torch.float64)
    )


def test_listwise_with_one_positive_is_cross_entropy():
    scores = torch.randn(4, 7, dtype=torch.float64)
    target = torch.tensor([0, 3, 6, 2])
    relevant = torch.nn.functional.one_hot(target, 7).bool()
    assert_close(listwise_softmax_loss(scores, relevant), torch.nn.functional.cross_entropy(scores, target))
