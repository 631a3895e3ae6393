"""Sampled softmax (logQ, shared negatives, no self-negatives) and the chunked full softmax."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from training.models.losses import (
    AUTO_SAMPLED_ABOVE,
    SampledSpec,
    chunked_cross_entropy,
    draw_candidates,
    popularity_cdf,
    resolve_loss,
    sampled_softmax,
    sequence_loss,
)
from training.models.sasrec import SASRec


def test_sampled_loss_matches_a_hand_computed_logq_corrected_value() -> None:
    # One position, target item 1; two uniform negatives (items 2, 3) out of n = 4 items.
    # Each draw's expected count in the pool is K / n = 2 / 4, so the correction is log 0.5.
    h = torch.tensor([[1.0, 2.0]])
    table = torch.tensor([[0.0, 0.0], [0.5, 0.25], [1.0, -1.0], [0.0, 1.0], [2.0, 2.0]])  # [n+1, H]
    target, negatives = torch.tensor([1]), torch.tensor([2, 3])
    pos = (h * table[target]).sum(-1)  # 0.5 + 0.5 = 1.0
    neg = h @ table[negatives].T  # [-1.0, 2.0]
    loss = sampled_softmax(pos, neg, target, negatives, torch.full((2,), math.log(0.5)))
    # -log( e^1 / (e^1 + e^(-1 - log .5) + e^(2 - log .5)) ) = -1 + log(e + 2/e + 2e^2)
    by_hand = -1.0 + math.log(math.e + 2 * math.exp(-1.0) + 2 * math.exp(2.0))
    assert loss.item() == pytest.approx(by_hand, rel=1e-6)


def test_pool_expected_counts_follow_each_sampler() -> None:
    torch.manual_seed(0)
    n = 5
    counts = torch.tensor([0, 10, 5, 3, 1, 1])  # training plays, row 0 padding
    cdf = popularity_cdf(counts)
    p = counts.double() / counts.sum()
    targets = torch.tensor([1, 1, 2, 4])  # the batch's positives: c_1 = 2, c_2 = 1, c_4 = 1 of N = 4
    negatives, log_e = draw_candidates(targets, n, SampledSpec(negatives=6, sampler="mixed", in_batch=2), cdf)
    assert negatives.shape == (8,)  # 3 uniform + 3 by popularity + 2 in-batch
    c = torch.bincount(targets, minlength=n + 1).double()
    expected = 3 / n + 3 * p[negatives] + 2 * c[negatives] / 4
    assert torch.allclose(log_e.double(), expected.log(), atol=1e-6)
    assert ((negatives >= 1) & (negatives <= n)).all()
    # The popularity draws never pick an item with zero plays (there is none here but padding).
    _, _ = draw_candidates(targets, n, SampledSpec(negatives=200, sampler="popularity"), cdf)
    pop_only, _ = draw_candidates(targets, n, SampledSpec(negatives=2000, sampler="popularity"), cdf)
    share = torch.bincount(pop_only, minlength=n + 1).double() / 2000
    assert share[0] == 0 and abs(share[1] - p[1]) < 0.05


def test_a_position_never_scores_its_own_target_as_a_negative() -> None:
    # 64 draws from 3 items plus every in-batch target: each target is in the pool many times.
    torch.manual_seed(0)
    n = 3
    targets = torch.tensor([1, 2, 3, 1])
    negatives, log_e = draw_candidates(targets, n, SampledSpec(negatives=64, sampler="uniform", in_batch=4))
    assert all((negatives == t).any() for t in targets)
    neg = torch.randn(4, negatives.numel(), requires_grad=True)
    pos = torch.randn(4, requires_grad=True)
    sampled_softmax(pos, neg, targets, negatives, log_e).backward()
    own = negatives.unsqueeze(0) == targets.unsqueeze(1)  # [N, K]
    assert (neg.grad[own] == 0).all()  # no gradient: the column is not in that row's softmax
    assert (neg.grad[~own] != 0).all()
    # Raising the logit of a row's own-target copies leaves its loss unchanged.
    with torch.no_grad():
        before = sampled_softmax(pos, neg, targets, negatives, log_e)
        after = sampled_softmax(pos, neg + 50.0 * own, targets, negatives, log_e)
    assert after.item() == pytest.approx(before.item(), rel=1e-6)


@pytest.mark.parametrize("with_bias", [False, True])
def test_chunked_cross_entropy_equals_the_dense_one_with_its_gradients(with_bias: bool) -> None:
    torch.manual_seed(0)
    N, n, H = 37, 1003, 8
    h = torch.randn(N, H, requires_grad=True)
    table = torch.randn(n, H, requires_grad=True)
    bias = torch.randn(n, requires_grad=True) if with_bias else None
    target = torch.randint(0, n, (N,))
    dense = F.cross_entropy(h @ table.T + (bias if bias is not None else 0), target)
    dense.backward()
    grads = [h.grad.clone(), table.grad.clone()] + ([bias.grad.clone()] if bias is not None else [])
    for t in [h, table] + ([bias] if bias is not None else []):
        t.grad = None
    chunked = chunked_cross_entropy(h, table, target, bias, chunk=100)  # 11 chunks, the last one short
    chunked.backward()
    assert chunked.item() == pytest.approx(dense.item(), rel=1e-5)
    for got, want in zip([h.grad, table.grad] + ([bias.grad] if bias is not None else []), grads, strict=True):
        assert torch.allclose(got, want, atol=1e-6)


def test_auto_loss_is_full_softmax_up_to_the_threshold_and_sampled_above() -> None:
    assert resolve_loss("auto", AUTO_SAMPLED_ABOVE) == "ce"
    assert resolve_loss("auto", AUTO_SAMPLED_ABOVE + 1) == "sampled"
    assert resolve_loss("bce", 10**7) == "bce"
    assert SASRec(n_items=AUTO_SAMPLED_ABOVE + 1, hidden=8, inner=8, layers=1, loss="auto").loss_type == "sampled"


def test_a_popularity_sampler_without_training_counts_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="set_item_counts"):
        draw_candidates(torch.tensor([1, 2]), 10, SampledSpec())  # the default sampler is mixed


def test_sampled_sequence_loss_never_builds_item_wide_logits(monkeypatch: pytest.MonkeyPatch) -> None:
    # A 200,000-item table: every matrix product of the loss must be [positions, K], not [positions, n].
    torch.manual_seed(0)
    n, B, T, H = 200_000, 4, 5, 8
    table = torch.randn(n + 1, H, requires_grad=True)
    hidden = torch.randn(B, T, H, requires_grad=True)
    targets = torch.randint(1, n + 1, (B, T))
    widths = []
    real_matmul = torch.Tensor.__matmul__

    def spy(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        out = real_matmul(a, b)
        widths.append(out.shape[-1])
        return out

    monkeypatch.setattr(torch.Tensor, "__matmul__", spy)
    loss = sequence_loss(hidden, targets, table, "sampled", sampled=SampledSpec(negatives=32, sampler="uniform"))
    loss.backward()
    assert widths and max(widths) == 32
    assert torch.isfinite(loss)
