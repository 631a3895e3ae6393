"""Training losses shared by every model: full softmax in item chunks, sampled softmax, BCE.

Every model hands over one hidden vector per position and the item it should predict there
(0 = no target); scores are dot products with an item table (the ID encoders' own input table,
E4SRec's head rows).

Memory. A full softmax over N positions and n items materialises [N, n] logits and as much again
for their gradient: 128 x 50 positions x 143,460 items is 3.7 GB a batch, and ~25 GB at LastFM-1K's
~1M tracks. Two ways out, both here:

- ``chunked_cross_entropy``: the exact full-softmax CE, computed over item chunks with a running
  log-sum-exp; the backward pass recomputes each chunk's logits. Peak memory is [N, chunk], whatever
  n is; time still grows with N x n.
- ``sampled_softmax``: K negatives per batch (default 1,024, half uniform, half by popularity),
  shared by all positions (gSASRec, Petrov & Macdonald, RecSys 2023; eSASRec, arXiv 2508.06450),
  with the logQ correction. Memory and time O(N x K).

``loss="auto"`` picks full CE up to ``AUTO_SAMPLED_ABOVE`` items and sampled softmax above it
(docs/training-at-scale.md has the measurements behind the threshold).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

LOSSES: tuple[str, ...] = ("auto", "ce", "sampled", "bce")
SAMPLERS: tuple[str, ...] = ("uniform", "popularity", "mixed")

# Above this many items "auto" trains with sampled softmax. On Beauty (12k items) full CE was the
# best loss at an equal epoch budget (sampled: -5% NDCG@10); at 100k items it already ran at a
# sixth of sampled's samples/s, at 1M at a fortieth (docs/training-at-scale.md).
AUTO_SAMPLED_ABOVE = 50_000
# One chunk's logits (float32) stay under this: [N, chunk] with N = B x T positions.
CE_CHUNK_BYTES = 256 * 2**20


@dataclass(frozen=True)
class SampledSpec:
    """How a batch's shared negatives are drawn (``SampledSoftmaxSettings`` as a plain value).

    negatives: K items drawn with replacement; sampler: uniform over 1..n, by training popularity,
    or mixed (half each); in_batch: up to this many of the batch's own targets join as negatives.
    """

    negatives: int = 1024
    sampler: str = "mixed"
    in_batch: int = 0

    @classmethod
    def from_settings(cls, settings: dict[str, Any] | None) -> SampledSpec:
        spec = cls(**(settings or {}))
        if spec.negatives < 1:
            raise ValueError(f"sampled softmax needs negatives >= 1, got {spec.negatives}")
        if spec.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {spec.sampler!r}")
        if spec.in_batch < 0:
            raise ValueError(f"in_batch must be >= 0, got {spec.in_batch}")
        return spec


def check_loss(loss: str, num_negatives: int) -> None:
    """Fail at construction, not at the first batch, on a bad loss setting."""
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    if num_negatives < 1:
        raise ValueError(f"num_negatives must be >= 1, got {num_negatives}")


def resolve_loss(loss: str, n_items: int) -> str:
    """``auto`` -> ``ce`` for catalogues up to AUTO_SAMPLED_ABOVE items, else ``sampled``."""
    if loss != "auto":
        return loss
    return "ce" if n_items <= AUTO_SAMPLED_ABOVE else "sampled"


# -- full softmax, chunked ------------------------------------------------------------------------

def ce_chunk(n_positions: int, budget_bytes: int = CE_CHUNK_BYTES) -> int:
    """Items per chunk so that one chunk's float32 logits [N, chunk] stay under ``budget_bytes``."""
    return max(1, budget_bytes // (4 * max(1, n_positions)))


class _ChunkedCE(torch.autograd.Function):
    """Mean CE of ``h @ table.T + bias`` against ``target``, never holding more than [N, chunk]."""

    @staticmethod
    def forward(ctx: Any, h: torch.Tensor, table: torch.Tensor, bias: torch.Tensor | None,
                target: torch.Tensor, chunk: int) -> torch.Tensor:
        N, n = h.shape[0], table.shape[0]
        hf = h.float()
        lse = torch.full((N,), float("-inf"), device=h.device)  # [N] running log-sum-exp
        picked = torch.zeros(N, device=h.device)  # [N] the target's logit
        rows = torch.arange(N, device=h.device)
        for s in range(0, n, chunk):
            logits = hf @ table[s:s + chunk].float().T  # [N, c]
            if bias is not None:
                logits += bias[s:s + chunk].float()
            lse = torch.logaddexp(lse, logits.logsumexp(dim=1))
            inside = (target >= s) & (target < s + logits.shape[1])
            picked[inside] = logits[rows[inside], target[inside] - s]
        ctx.save_for_backward(h, table, bias if bias is not None else torch.empty(0), target, lse)
        ctx.chunk, ctx.has_bias = chunk, bias is not None
        return (lse - picked).mean()

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        h, table, bias, target, lse = ctx.saved_tensors
        N, n, chunk = h.shape[0], table.shape[0], ctx.chunk
        hf = h.float()
        scale = grad_out.float() / N
        grad_h = torch.zeros_like(hf)  # [N, H]
        grad_table = torch.zeros(table.shape, device=table.device)  # [n, H]
        grad_bias = torch.zeros(n, device=table.device) if ctx.has_bias else None
        rows = torch.arange(N, device=h.device)
        for s in range(0, n, chunk):
            w = table[s:s + chunk].float()  # [c, H]
            logits = hf @ w.T  # [N, c]
            if ctx.has_bias:
                logits += bias[s:s + chunk].float()
            # d(lse - picked)/dlogits = softmax - onehot(target)
            p = torch.exp(logits - lse[:, None])
            inside = (target >= s) & (target < s + w.shape[0])
            p[rows[inside], target[inside] - s] -= 1.0
            p *= scale
            grad_h += p @ w
            grad_table[s:s + chunk] = p.T @ hf
            if grad_bias is not None:
                grad_bias[s:s + chunk] = p.sum(dim=0)
        return (grad_h.to(h.dtype), grad_table.to(table.dtype),
                None if grad_bias is None else grad_bias.to(bias.dtype), None, None)


def chunked_cross_entropy(h: torch.Tensor, table: torch.Tensor, target: torch.Tensor,
                          bias: torch.Tensor | None = None, chunk: int | None = None) -> torch.Tensor:
    """Exact mean CE over all classes: h [N, H], table [n, H] (class c = row c), target [N] in 0..n-1.

    One dense product when [N, n] fits the chunk budget (identical to ``F.cross_entropy``), else in
    item chunks with peak memory [N, chunk].
    """
    chunk = chunk or ce_chunk(h.shape[0])
    if table.shape[0] <= chunk:
        logits = h @ table.T  # [N, n]
        if bias is not None:
            logits = logits + bias
        return F.cross_entropy(logits.float(), target)
    return _ChunkedCE.apply(h, table, bias, target, chunk)


def full_ce_bytes(n_positions: int, n_items: int) -> int:
    """Bytes a dense full softmax would take: logits and their gradient, float32 [N, n] each."""
    return 2 * 4 * n_positions * n_items


# -- sampled softmax ------------------------------------------------------------------------------

def popularity_cdf(counts: torch.Tensor) -> torch.Tensor:
    """Cumulative sampling distribution over items from training plays: counts [n+1] -> cdf [n+1].

    Row 0 (padding) has probability 0. An all-zero count vector falls back to uniform.
    """
    p = counts.double().clone()
    p[0] = 0
    if p.sum() <= 0:
        p[1:] = 1
    return torch.cumsum(p / p.sum(), 0)


def draw_candidates(targets: torch.Tensor, n_items: int, spec: SampledSpec,
                    cdf: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch's shared negatives and the log of each one's expected count in the pool.

    targets [N] (1..n, the batch's positives); cdf [n+1] from ``popularity_cdf`` (needed by the
    popularity and mixed samplers). Returns negatives [K'] and log_expected [K'].

    The pool is the union of independent draws: K_u uniform (expected count of item i: K_u / n),
    K_p by popularity (K_p p(i)) and M of the batch's own targets picked uniformly among its N
    positions (M c_i / N, c_i = positions whose target is i). Subtracting log E[count of i] from a
    negative's logit makes sum_j exp(s_j - log E[count_j]) an unbiased estimate of sum_i exp(s_i)
    over all items, duplicates included: the logQ correction.
    """
    device = targets.device
    k_pop = 0
    if spec.sampler == "popularity":
        k_pop = spec.negatives
    elif spec.sampler == "mixed":
        k_pop = spec.negatives // 2
    k_uni = spec.negatives - k_pop
    if k_pop and cdf is None:
        raise ValueError(f"sampler {spec.sampler!r} needs the items' training counts (set_item_counts)")
    parts = []
    if k_uni:
        parts.append(torch.randint(1, n_items + 1, (k_uni,), device=device))
    if k_pop:
        u = torch.rand(k_pop, dtype=torch.float64, device=device)
        parts.append(torch.searchsorted(cdf.to(device), u, right=True).clamp(1, n_items))  # type: ignore[union-attr]
    M = min(spec.in_batch, targets.numel())
    if M:
        parts.append(targets[torch.randperm(targets.numel(), device=device)[:M]])
    negatives = torch.cat(parts)  # [K']
    expected = torch.full(negatives.shape, k_uni / n_items, dtype=torch.float64, device=device)
    if k_pop:
        prob = torch.diff(cdf.to(device), prepend=torch.zeros(1, dtype=cdf.dtype, device=device))  # type: ignore[union-attr]
        expected += k_pop * prob[negatives]
    if M:
        counts = torch.bincount(targets, minlength=n_items + 1).double()  # [n+1]
        expected += M * counts[negatives] / targets.numel()
    return negatives, expected.log().float()


def sampled_softmax(pos_logit: torch.Tensor, neg_logit: torch.Tensor, targets: torch.Tensor,
                    negatives: torch.Tensor, log_expected: torch.Tensor) -> torch.Tensor:
    """Mean sampled-softmax loss: pos_logit [N], neg_logit [N, K] (each position against the shared
    negatives [K]), targets [N], log_expected [K] from ``draw_candidates``.

    logQ correction on the negatives only: the positive is not a draw. A negative that is a position's
    own target (an accidental hit, or that position's in-batch copy) is dropped for that position, so
    the target is never its own negative.
    """
    neg = neg_logit.float() - log_expected  # [N, K]
    neg = neg.masked_fill(negatives.unsqueeze(0) == targets.unsqueeze(1), float("-inf"))
    logits = torch.cat([pos_logit.float().unsqueeze(1), neg], dim=1)  # [N, 1 + K], the positive first
    return F.cross_entropy(logits, torch.zeros_like(targets))


# -- the ID encoders' entry point ----------------------------------------------------------------

def sequence_loss(
    hidden: torch.Tensor,
    targets: torch.Tensor,
    item_table: torch.Tensor,
    loss: str,
    num_negatives: int = 1,
    sampled: SampledSpec | None = None,
    cdf: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean next/masked-item loss over the positions that have a target.

    hidden [B, T, H]; targets [B, T] LongTensor, 0 = no target here; item_table [n_items + 1, H], row 0 padding.
    "ce":      full softmax over items 1..n_items (padding is no class), chunked when large.
    "sampled": sampled softmax against the batch's shared negatives (``sampled``, default SampledSpec()).
    "bce":     per positive, num_negatives items drawn uniformly from 1..n_items; -log σ(pos) - Σ log(1 - σ(neg)).
               A negative can hit the positive by chance (probability 1/n_items); like SASRec we accept that.
    "auto" must be resolved by the caller (``resolve_loss``).
    """
    keep = targets != 0  # [B, T]
    h = hidden[keep]  # [N, H]
    pos = targets[keep]  # [N]
    if pos.numel() == 0:
        # Keep the graph: a distributed engine expects every step to reach every weight.
        return hidden.sum() * 0.0
    n_items = item_table.shape[0] - 1
    if loss == "ce":
        return chunked_cross_entropy(h, item_table[1:], pos - 1)  # class c is item c + 1
    if loss == "sampled":
        negatives, log_expected = draw_candidates(pos, n_items, sampled or SampledSpec(), cdf)
        pos_logit = (h * item_table[pos]).sum(-1)  # [N]
        neg_logit = h @ item_table[negatives].T  # [N, K]
        return sampled_softmax(pos_logit, neg_logit, pos, negatives, log_expected)
    if loss == "bce":
        neg = torch.randint(1, n_items + 1, (pos.shape[0], num_negatives), device=pos.device)  # [N, K]
        pos_logit = (h * item_table[pos]).sum(-1)  # [N]
        neg_logit = torch.einsum("nh,nkh->nk", h, item_table[neg])  # [N, K]
        # softplus(-x) = -log σ(x) and softplus(x) = -log(1 - σ(x)), without overflow.
        return (F.softplus(-pos_logit) + F.softplus(neg_logit).sum(-1)).mean()
    raise ValueError(f"loss must be one of {LOSSES[1:]} here, got {loss!r}")


__all__ = ["AUTO_SAMPLED_ABOVE", "LOSSES", "SAMPLERS", "SampledSpec", "check_loss", "chunked_cross_entropy",
           "draw_candidates", "full_ce_bytes", "popularity_cdf", "resolve_loss", "sampled_softmax",
           "sequence_loss"]
