"""Next-item ranking metrics: HR/Recall@k, NDCG@k and MRR from the rank of each held-out item.

Every example has exactly one target, so metrics are computed from one 0-based rank per example:
    rank = items ranked strictly above the target + other items tied with it (ties count against it).
Pessimistic ties keep a constant or collapsed scorer honest: all-equal scores put the target last, not first.

Masking rule (``EvalSettings.mask_history``): items in the user's history can never be recommended, so
they leave the ranking, **the target included** when it is a repeat: such an example is a miss (its rank
is ``MISS``). Keeping a repeated target rankable while masking the rest of the
history would leak the label: a model that merely ranks "recently played" first would then find the
target at rank 0 whenever it is a repeat. Which items count as history is the caller's choice
(``training.data``: the model's input window). Column 0 (padding) is always removed.

Protocols:
    "full":    rank among every vocabulary item (the default, and the only one comparable across models);
    "sampled": rank among the target and ``num_candidates`` uniformly drawn negatives. Sampled metrics can
               reorder models (Krichene & Rendle, "On Sampled Metrics for Item Recommendation", KDD 2020).
    "candidates": the same, but each example's list (target first) is drawn once from the seed
               (``draw_candidates``), so it can be saved with the run and given to every model, a
               model that only scores candidates (``score_candidates``, the LLM zero-shot ranker) too.
"""

from __future__ import annotations

import logging
import math
import warnings

import numpy as np
import torch
from scipy import sparse

from encore.core.config import EvalSettings
from training.models.base import SequenceModel, trim_padding

__all__ = [
    "candidate_ranks",
    "draw_candidates",
    "evaluate",
    "evaluate_ranks",
    "full_ranking_ranks",
    "history_matrix",
    "metrics_from_ranks",
    "rows_per_forward",
    "sampled_ranks",
    "targets_kept",
]

log = logging.getLogger(__name__)

# A forward's scores are [rows, items + 1] float32, and ranking them adds masks of the same shape.
# Rows per forward shrink as the catalogue grows so that one forward's scores stay under this,
# whatever the catalogue (LastFM-1K has ~1M tracks): evaluation, promotion and nightly scoring alike.
SCORE_BUDGET_BYTES = 64 * 2**20
MAX_ROWS_PER_FORWARD = 64


def rows_per_forward(n_items: int, cap: int = MAX_ROWS_PER_FORWARD) -> int:
    """Histories scored per forward for a vocabulary of ``n_items``: at least 1, at most ``cap``."""
    return max(1, min(cap, SCORE_BUDGET_BYTES // (4 * (n_items + 1))))


# Rank given to a target that cannot be recommended (masked as history): past any cut-off, and
# 1 / (MISS + 1) ~ 1e-12 adds nothing to MRR.
MISS = 1 << 40

SAMPLED_WARNING = (
    "sampled evaluation ranks the target among {k} random negatives: sampled metrics can reorder models "
    "(Krichene & Rendle, KDD 2020) and are not comparable to full-ranking numbers"
)


def _kept_mask(scores: torch.Tensor, targets: torch.Tensor, exclude: sparse.spmatrix | None) -> torch.Tensor:
    """Which items take part in the ranking: BoolTensor [N, n+1].

    False for column 0 and for every stored nonzero of ``exclude``, the target included.
    """
    N, width = scores.shape
    if targets.shape != (N,):
        raise ValueError(f"targets has shape {tuple(targets.shape)}, expected ({N},)")
    if N and (int(targets.min()) < 1 or int(targets.max()) >= width):
        raise ValueError(f"targets must be vocabulary items in 1..{width - 1} (0 is padding)")
    kept = torch.ones(N, width, dtype=torch.bool)
    kept[:, 0] = False
    if exclude is not None:
        exclude = sparse.csr_matrix(exclude)
        if exclude.shape != (N, width):
            raise ValueError(f"exclude has shape {exclude.shape}, expected {(N, width)}")
        # Row index of every stored entry, from the CSR row pointers; explicit zeros are not exclusions.
        rows = np.repeat(np.arange(N), np.diff(exclude.indptr))
        hit = exclude.data != 0
        kept[torch.from_numpy(rows[hit]), torch.from_numpy(exclude.indices[hit].astype(np.int64))] = False
    return kept.to(scores.device)


def _clean(scores: torch.Tensor) -> torch.Tensor:
    # NaN compares false with everything, which would silently rank a NaN target first; treat it as -inf.
    return torch.nan_to_num(scores.float(), nan=float("-inf"), posinf=float("inf"), neginf=float("-inf"))


def full_ranking_ranks(
    scores: torch.Tensor, targets: torch.Tensor, exclude: sparse.spmatrix | None = None
) -> torch.Tensor:
    """0-based rank of each target among all kept items: scores [N, n+1], targets [N] -> LongTensor [N].

    Kept items are 1..n minus ``exclude``'s nonzeros (csr [N, n+1]). An item ranks ahead of the
    target when its score is >= the target's (pessimistic ties). A target that is itself excluded
    cannot be recommended: its rank is ``MISS``.
    """
    scores = _clean(scores)
    targets = targets.long()
    kept = _kept_mask(scores, targets, exclude)  # [N, n+1]
    rows = torch.arange(len(targets), device=scores.device)
    target_kept = kept[rows, targets.to(scores.device)]  # [N]
    target_scores = scores.gather(1, targets.to(scores.device)[:, None])  # [N, 1]
    # A kept target ties with itself, hence the -1.
    ranks = ((scores >= target_scores) & kept).sum(1) - 1  # [N]
    return torch.where(target_kept, ranks, torch.full_like(ranks, MISS)).cpu()  # [N]


def sampled_ranks(
    scores: torch.Tensor,
    targets: torch.Tensor,
    exclude: sparse.spmatrix | None,
    num_candidates: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """0-based rank of each target among itself and ``num_candidates`` sampled negatives -> LongTensor [N].

    Negatives are drawn uniformly without replacement from items that are not padding, not the target
    and not excluded. A row with fewer eligible items than ``num_candidates`` uses all of them.
    Ties count against the target, as in ``full_ranking_ranks``; an excluded target ranks last.
    """
    if num_candidates < 1:
        raise ValueError(f"num_candidates must be >= 1, got {num_candidates}")
    scores = _clean(scores)
    targets = targets.long()
    N, width = scores.shape
    pool = _kept_mask(scores, targets, exclude)  # [N, n+1]
    rows = torch.arange(N, device=scores.device)
    target_kept = pool[rows, targets.to(scores.device)].clone()  # [N]
    pool[rows, targets.to(scores.device)] = False
    # The k largest of i.i.d. uniform keys are a uniform k-subset; ineligible items get key -1 so they
    # are picked only when a row has fewer than k eligible items, and are dropped again by `chosen`.
    keys = torch.rand(N, width, generator=generator, device=generator.device).to(scores.device)  # [N, n+1]
    keys = keys.masked_fill(~pool, -1.0)
    k = min(num_candidates, width)
    picked = keys.topk(k, dim=1).indices  # [N, k]
    chosen = pool.gather(1, picked)  # [N, k] False where a row ran out of eligible items
    target_scores = scores.gather(1, targets.to(scores.device)[:, None])  # [N, 1]
    ahead = (scores.gather(1, picked) >= target_scores) & chosen  # [N, k]
    ranks = ahead.sum(1)
    return torch.where(target_kept, ranks, torch.full_like(ranks, MISS)).cpu()  # [N]


def draw_candidates(targets: torch.Tensor, n_items: int, num_negatives: int, seed: int,
                    exclude: sparse.spmatrix | None = None) -> torch.Tensor:
    """Each example's candidate list: LongTensor [N, 1 + num_negatives], the target in column 0.

    Negatives are distinct vocabulary items (1..n_items), never the target nor a stored nonzero of
    ``exclude`` (csr [N, n+1]), drawn uniformly from one generator seeded by ``seed`` row by row:
    the same targets, exclusions and seed give the same lists. A row with too few eligible items
    is filled with 0 (padding), which ranks nothing. Memory is per row, whatever the catalogue.
    """
    N = len(targets)
    out = np.zeros((N, 1 + num_negatives), dtype=np.int64)
    out[:, 0] = targets.numpy()
    csr = sparse.csr_matrix(exclude) if exclude is not None else None
    rng = np.random.default_rng(seed)
    for row in range(N):
        banned = {int(out[row, 0])}
        if csr is not None:
            lo, hi = csr.indptr[row], csr.indptr[row + 1]
            banned.update(int(i) for i, v in zip(csr.indices[lo:hi], csr.data[lo:hi], strict=True) if v)
        banned.discard(0)  # padding is never drawn anyway
        want = max(0, min(num_negatives, n_items - len(banned)))
        # Draw a few more than needed without replacement, drop the banned ones, keep the first `want`.
        size = min(n_items, want + len(banned))
        drawn = rng.choice(n_items, size=size, replace=False) + 1 if want > 0 else np.zeros(0, np.int64)
        drawn = drawn[~np.isin(drawn, list(banned))][:want]
        out[row, 1:1 + len(drawn)] = drawn
    return torch.from_numpy(out)


def targets_kept(targets: torch.Tensor, exclude: sparse.spmatrix | None) -> torch.Tensor:
    """BoolTensor [N]: whether each target may be recommended (not a stored nonzero of its
    ``exclude`` row; all True without ``exclude``)."""
    if exclude is None:
        return torch.ones(len(targets), dtype=torch.bool)
    hit = np.asarray(sparse.csr_matrix(exclude)[np.arange(len(targets)), targets.numpy()]).reshape(-1)
    return torch.from_numpy(hit == 0)


def candidate_ranks(scores: torch.Tensor, candidates: torch.Tensor, target_kept: torch.Tensor | None = None
                    ) -> torch.Tensor:
    """0-based rank of column 0 among its row's candidates: scores/candidates [N, C] -> LongTensor [N].

    Candidates 0 (padding) take no part; ties count against the target; a target that is not kept
    (masked as history) ranks ``MISS``.
    """
    scores = _clean(scores)
    real = candidates[:, 1:] != 0  # [N, C-1]
    ranks = ((scores[:, 1:] >= scores[:, :1]) & real.to(scores.device)).sum(1).cpu()  # [N]
    if target_kept is not None:
        ranks = torch.where(target_kept.cpu(), ranks, torch.full_like(ranks, MISS))
    return ranks


def popularity_ranks(plays: np.ndarray, targets: torch.Tensor, exclude: sparse.spmatrix | None = None) -> torch.Tensor:
    """Ranks under the popularity ranking (every user gets the same scores, training plays [n+1]):
    the baseline every model must beat, on the same examples and masking as the model's ranks.

    Scored in chunks of ``rows_per_forward`` rows, so a 1M-item catalogue never holds more than
    SCORE_BUDGET_BYTES of scores. Returns LongTensor [N] like ``full_ranking_ranks``.
    """
    scores = torch.as_tensor(plays, dtype=torch.float32)[None, :]  # [1, n+1]
    rows = rows_per_forward(scores.shape[1])
    csr = sparse.csr_matrix(exclude) if exclude is not None else None
    out = [full_ranking_ranks(scores.expand(len(targets[i:i + rows]), -1), targets[i:i + rows],
                              csr[i:i + rows] if csr is not None else None)
           for i in range(0, len(targets), rows)]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def metrics_from_ranks(ranks: torch.Tensor, ks: list[int]) -> dict[str, float]:
    """HR@k, Recall@k, NDCG@k for each k, MRR (uncut) and n, averaged over examples.

    With one target per example Recall@k equals HR@k; both are reported so tables from either
    convention line up. An empty ``ranks`` gives NaN metrics and n = 0.
    """
    if any(k < 1 for k in ks):
        raise ValueError(f"cut-offs must be >= 1, got {ks}")
    ranks = ranks.detach().cpu().double().reshape(-1)  # [N]
    n = ranks.numel()
    out: dict[str, float] = {}
    for k in ks:
        hit = ranks < k  # [N]
        hr = hit.double().mean().item() if n else math.nan
        # One relevant item, so the ideal DCG is 1 and NDCG = 1 / log2(rank + 2) inside the cut-off.
        gain = torch.where(hit, 1.0 / torch.log2(ranks + 2.0), torch.zeros_like(ranks))
        out[f"hr@{k}"] = hr
        out[f"recall@{k}"] = hr
        out[f"ndcg@{k}"] = gain.mean().item() if n else math.nan
    out["mrr"] = (1.0 / (ranks + 1.0)).mean().item() if n else math.nan
    out["n"] = float(n)
    return out


def evaluate_ranks(
    model: SequenceModel,
    items: torch.Tensor,
    completion: torch.Tensor,
    targets: torch.Tensor,
    history: sparse.spmatrix | None,
    settings: EvalSettings,
    batch_size: int = 256,
    device: str = "cpu",
    seed: int = 0,
    candidates: torch.Tensor | None = None,
) -> torch.Tensor:
    """Rank of each target under ``settings``: items/completion [N, L], targets [N] -> LongTensor [N].

    ``history`` (csr [N, n+1], see ``history_matrix``) is masked only when ``settings.mask_history``;
    None means there is nothing to mask. The sampled protocol is seeded by ``seed``; its draws depend
    on ``batch_size`` too, so keep both fixed when comparing runs. The candidates protocol ranks
    among ``candidates`` [N, C] (target first), drawn here by ``draw_candidates`` from ``seed`` when
    not given; a model with ``score_candidates`` scores only those.
    """
    N = items.shape[0]
    if completion.shape != items.shape or targets.shape != (N,):
        raise ValueError(
            f"items {tuple(items.shape)}, completion {tuple(completion.shape)} and targets "
            f"{tuple(targets.shape)} disagree"
        )
    exclude = sparse.csr_matrix(history) if settings.mask_history and history is not None else None
    if exclude is not None and exclude.shape[0] != N:
        raise ValueError(f"history has {exclude.shape[0]} rows for {N} examples")
    generator: torch.Generator | None = None
    if settings.protocol != "full":
        message = SAMPLED_WARNING.format(k=settings.num_candidates)
        warnings.warn(message, UserWarning, stacklevel=2)
        log.warning(message)
    if settings.protocol == "sampled":
        generator = torch.Generator().manual_seed(seed)

    if settings.protocol == "candidates":
        if candidates is None:
            candidates = draw_candidates(targets, int(model.n_items), settings.num_candidates, seed, exclude)
        if candidates.shape[0] != N or not torch.equal(candidates[:, 0], targets.long()):
            raise ValueError("candidate lists must hold one row per example with its target in column 0")
        kept = targets_kept(targets, exclude)
    else:
        candidates = None  # only the candidates protocol ranks among given lists
    own = getattr(model, "score_candidates", None) if candidates is not None else None
    n_items = getattr(model, "n_items", None)
    if n_items is not None and own is None:
        # Peak memory per batch: [rows, n+1] scores plus masks, bounded whatever the catalogue.
        batch_size = rows_per_forward(int(n_items), cap=batch_size)
    # Full ranking scores histories shortest first, so that each batch is trimmed to its longest
    # history (``trim_padding``; exact, as every model ignores left padding), and puts the ranks back
    # in input order. The sampled protocol keeps the input order: its draws follow the batches.
    order = _by_length(items) if generator is None else torch.arange(N)
    was_training = model.training
    model.eval()
    ranks: list[torch.Tensor] = []
    try:
        with torch.no_grad():
            for start in range(0, N, batch_size):
                idx = order[start:start + batch_size]
                x, c = trim_padding(items[idx], completion[idx])
                if candidates is not None:
                    cand = candidates[idx]  # [B, C]
                    scores = (own(x.to(device), c.to(device), cand.to(device)) if own is not None  # [B, C]
                              else model.score(x.to(device), c.to(device)).gather(1, cand.to(device)))
                    ranks.append(candidate_ranks(scores, cand, kept[idx]))
                    continue
                scores = model.score(x.to(device), c.to(device))  # [B, n+1]
                rows = exclude[idx.numpy()] if exclude is not None else None
                if generator is None:
                    ranks.append(full_ranking_ranks(scores, targets[idx], rows))
                else:
                    ranks.append(sampled_ranks(scores, targets[idx], rows, settings.num_candidates, generator))
    finally:
        model.train(was_training)
    if not ranks:
        return torch.zeros(0, dtype=torch.long)
    out = torch.empty(N, dtype=torch.long)
    out[order] = torch.cat(ranks)
    return out


def _by_length(items: torch.Tensor) -> torch.Tensor:
    """Row order by the number of real items, shortest first (stable: ties keep input order): [N]."""
    return torch.argsort((items != 0).sum(dim=1), stable=True)


def evaluate(
    model: SequenceModel,
    items: torch.Tensor,
    completion: torch.Tensor,
    targets: torch.Tensor,
    history: sparse.spmatrix | None,
    settings: EvalSettings,
    batch_size: int = 256,
    device: str = "cpu",
    seed: int = 0,
) -> dict[str, float]:
    """Metrics dict for ``model`` (keys of ``metrics_from_ranks``; see ``evaluate_ranks`` for arguments).

    Sampled runs keep the same metric keys and add ``sampled_candidates`` so a report can tell them apart.
    """
    ranks = evaluate_ranks(model, items, completion, targets, history, settings, batch_size, device, seed)
    out = metrics_from_ranks(ranks, settings.ks)
    if settings.protocol != "full":
        out["sampled_candidates"] = float(settings.num_candidates)
    return out


def history_matrix(histories: list[np.ndarray], n_items: int) -> sparse.csr_matrix:
    """One row of ones per history: csr int8 [N, n_items+1]; repeats collapse, padding (0) is dropped."""
    N = len(histories)
    rows = np.repeat(np.arange(N, dtype=np.int64), [len(h) for h in histories])
    cols = np.concatenate([np.asarray(h, dtype=np.int64).reshape(-1) for h in histories] + [np.zeros(0, np.int64)])
    if cols.size and (cols.min() < 0 or cols.max() > n_items):
        raise ValueError(f"history items must be in 0..{n_items}")
    # Dedupe before building: a track played five times is masked once, and int8 sums could overflow.
    cells = np.unique(rows[cols != 0] * (n_items + 1) + cols[cols != 0])  # [nnz] row-major cell ids
    data = np.ones(cells.size, dtype=np.int8)
    return sparse.csr_matrix((data, (cells // (n_items + 1), cells % (n_items + 1))), shape=(N, n_items + 1))
