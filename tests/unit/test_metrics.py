"""Ranking metrics against hand-computed values: ranks, masking, pessimistic ties, both protocols."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pytest
import torch
from scipy import sparse

from encore.core.config import EvalSettings
from training.metrics import (
    MISS,
    evaluate,
    evaluate_ranks,
    full_ranking_ranks,
    history_matrix,
    metrics_from_ranks,
    sampled_ranks,
)
from training.models.base import SequenceModel

INF = float("inf")

# One user, n = 5 items; column 0 is padding. Target item 3 scores 0.5; items 1 (0.9) and 2 (0.8) beat it.
ROW = torch.tensor([[-INF, 0.9, 0.8, 0.5, 0.1, 0.2]])
TARGET = torch.tensor([3])


def rows(*histories: list[int], n_items: int = 5) -> sparse.csr_matrix:
    return history_matrix([np.array(h) for h in histories], n_items)


class NextItemTable(SequenceModel):
    """A dummy first-order model: the logits are a fixed row chosen by the newest history item."""

    kind = "table"

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__(n_items=table.shape[1] - 1)
        self.register_buffer("table", table)
        self.modes: list[bool] = []

    def score(self, items: torch.Tensor, completion: torch.Tensor) -> torch.Tensor:
        self.modes.append(self.training)
        return self.table[items[:, -1]]  # [B, n+1]

    def config(self) -> dict[str, Any]:
        return {}


# Rows by newest item; n = 5.
TABLE = torch.tensor(
    [
        [-INF, 0.0, 0.0, 0.0, 0.0, 0.0],  # 0: unused
        [-INF, 0.0, 0.9, 0.8, 0.5, 0.1],  # after 1
        [-INF, 0.3, 0.0, 0.6, 0.9, 0.1],  # after 2
        [-INF, 0.5, 0.5, 0.5, 0.5, 0.5],  # after 3: a constant scorer
        [-INF, 0.0, 0.0, 0.0, 0.0, 0.0],
        [-INF, 0.0, 0.0, 0.0, 0.0, 0.0],
    ]
)
# Left-padded histories and targets. Unmasked / masked ranks, by hand:
#   A: after 1, target 3 (0.8); item 2 (0.9) ahead -> 1; 2 is in the history -> 0
#   B: after 2, target 1 (0.3); items 4 (0.9), 3 (0.6) ahead -> 2; 3 is in the history -> 1
#   C: after 3, target 5; all tied, items 1-4 count ahead -> 4; 3 is in the history -> 3
HISTORIES = [[0, 2, 1], [3, 3, 2], [0, 0, 3]]
ITEMS = torch.tensor(HISTORIES)
COMPLETION = torch.full(ITEMS.shape, float("nan"))
TARGETS = torch.tensor([3, 1, 5])


def test_metrics_from_ranks_match_hand_computed_values() -> None:
    got = metrics_from_ranks(torch.tensor([0, 2, 11]), [5, 10, 20])
    assert got == pytest.approx(
        {
            "hr@5": 2 / 3,  # ranks 0 and 2 are inside the top 5, 11 is not
            "recall@5": 2 / 3,
            "ndcg@5": 0.5,  # (1/log2(2) + 1/log2(4) + 0) / 3 = (1 + 0.5) / 3
            "hr@10": 2 / 3,
            "recall@10": 2 / 3,
            "ndcg@10": 0.5,
            "hr@20": 1.0,
            "recall@20": 1.0,
            "ndcg@20": 0.5900793848091066,  # (1 + 0.5 + 1/log2(13)) / 3 = (1.5 + 0.27023815442731974) / 3
            "mrr": 0.4722222222222222,  # (1/1 + 1/3 + 1/12) / 3 = (12 + 4 + 1) / 36 = 17/36
            "n": 3.0,
        }
    )


def test_recall_equals_hit_rate_with_one_target_per_example() -> None:
    got = metrics_from_ranks(torch.tensor([0, 1, 4, 7, 30, 2]), [1, 3, 5, 10])
    for k in (1, 3, 5, 10):
        assert got[f"recall@{k}"] == got[f"hr@{k}"]


def test_mrr_is_not_cut_off_at_any_k() -> None:
    got = metrics_from_ranks(torch.tensor([99]), [5])
    assert got["hr@5"] == 0.0 and got["ndcg@5"] == 0.0
    assert got["mrr"] == pytest.approx(0.01)  # 1 / (99 + 1)


def test_empty_ranks_give_nan_metrics_and_zero_count() -> None:
    got = metrics_from_ranks(torch.zeros(0, dtype=torch.long), [5])
    assert got["n"] == 0.0 and np.isnan(got["hr@5"]) and np.isnan(got["mrr"])


def test_masking_a_history_item_moves_the_target_from_rank_2_to_rank_1() -> None:
    assert full_ranking_ranks(ROW, TARGET, None).tolist() == [2]
    assert full_ranking_ranks(ROW, TARGET, rows([0, 0, 1])).tolist() == [1]  # item 1 (0.9) is masked


def test_a_repeated_target_is_masked_too_and_counts_as_a_miss() -> None:
    # History {1, 3} contains the target 3. Keeping it rankable while masking item 1 would leak the
    # label (the rest of the history would be cleared out of its way). It is masked like any other
    # history item and can never be hit, whatever the cut-off.
    assert full_ranking_ranks(ROW, TARGET, rows([3, 1, 3])).tolist() == [MISS]
    got = metrics_from_ranks(full_ranking_ranks(ROW, TARGET, rows([3, 1, 3])), [1, 5])
    assert got["hr@1"] == 0.0 and got["hr@5"] == 0.0 and got["mrr"] < 1e-9


def test_ties_are_pessimistic_so_a_constant_scorer_ranks_every_target_last() -> None:
    n_items = 5
    scores = torch.zeros(3, n_items + 1)  # column 0 ties too, but must not count
    targets = torch.tensor([1, 3, 5])
    assert full_ranking_ranks(scores, targets, None).tolist() == [n_items - 1] * 3


def test_column_0_never_counts_even_when_a_model_forgets_to_mask_it() -> None:
    scores = ROW.clone()
    scores[0, 0] = 10.0  # above everything
    assert full_ranking_ranks(scores, TARGET, None).tolist() == [2]


def test_a_nan_target_score_ranks_last_not_first() -> None:
    scores = ROW.clone()
    scores[0, 3] = float("nan")
    assert full_ranking_ranks(scores, TARGET, None).tolist() == [4]  # behind all 4 other real items


def test_padding_target_is_rejected() -> None:
    with pytest.raises(ValueError, match="padding"):
        full_ranking_ranks(ROW, torch.tensor([0]), None)


def test_history_matrix_dedupes_repeats_and_drops_padding() -> None:
    got = rows([0, 2, 2, 4], [], [5, 5], n_items=5).toarray()
    assert got.tolist() == [[0, 0, 1, 0, 1, 0], [0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 1]]


def test_history_matrix_rejects_items_outside_the_vocabulary() -> None:
    with pytest.raises(ValueError):
        rows([6], n_items=5)


def test_sampled_rank_of_the_top_scoring_target_is_0() -> None:
    scores = torch.rand(4, 51, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([7, 8, 9, 10])
    scores[torch.arange(4), targets] = 2.0
    got = sampled_ranks(scores, targets, None, 10, torch.Generator().manual_seed(0))
    assert got.tolist() == [0, 0, 0, 0]


def test_sampled_ranks_are_deterministic_for_a_seed() -> None:
    scores = torch.rand(8, 201, generator=torch.Generator().manual_seed(1))
    targets = torch.arange(1, 9)
    first = sampled_ranks(scores, targets, None, 20, torch.Generator().manual_seed(3))
    again = sampled_ranks(scores, targets, None, 20, torch.Generator().manual_seed(3))
    assert torch.equal(first, again)


def test_sampled_negatives_skip_padding_the_target_and_excluded_items() -> None:
    # Only item 1 (0.9, excluded) and column 0 (10.0) beat the target; no draw may pick either.
    scores = ROW.clone()
    scores[0, 0] = 10.0
    scores[0, 2] = 0.0
    for seed in range(20):
        got = sampled_ranks(scores, TARGET, rows([0, 0, 1]), 2, torch.Generator().manual_seed(seed))
        assert got.tolist() == [0]


def test_sampled_uses_every_eligible_item_when_there_are_fewer_than_requested() -> None:
    # Eligible negatives: 1, 2, 4, 5 (not 0, not the target 3); only 1 and 2 beat it.
    got = sampled_ranks(ROW, TARGET, None, 100, torch.Generator().manual_seed(0))
    assert got.tolist() == [2]


def test_sampled_negatives_are_drawn_uniformly() -> None:
    # Target 1 scores 0.5; 3 of the 9 other items score above it. With one negative per row,
    # P(rank 1) = 3/9; 9000 rows put the mean within ~0.015 (3 sd) of 1/3.
    N = 9000
    scores = torch.tensor([-INF, 0.5, 0.9, 0.8, 0.7, 0.1, 0.2, 0.3, 0.4, 0.0, 0.05]).repeat(N, 1)
    got = sampled_ranks(scores, torch.ones(N, dtype=torch.long), None, 1, torch.Generator().manual_seed(0))
    assert got.float().mean().item() == pytest.approx(1 / 3, abs=0.02)


def test_evaluate_matches_hand_computed_metrics_with_history_masked() -> None:
    model = NextItemTable(TABLE)
    history = rows(*HISTORIES)
    settings = EvalSettings(ks=[1, 3], mask_history=True, protocol="full")
    ranks = evaluate_ranks(model, ITEMS, COMPLETION, TARGETS, history, settings, batch_size=2)
    assert ranks.tolist() == [0, 1, 3]
    got = evaluate(model, ITEMS, COMPLETION, TARGETS, history, settings, batch_size=2)
    assert got == pytest.approx(
        {
            "hr@1": 1 / 3,  # only rank 0
            "recall@1": 1 / 3,
            "ndcg@1": 1 / 3,  # (1 + 0 + 0) / 3
            "hr@3": 2 / 3,  # ranks 0 and 1
            "recall@3": 2 / 3,
            "ndcg@3": 0.5436432511904858,  # (1 + 1/log2(3)) / 3 = (1 + 0.6309297535714575) / 3
            "mrr": 0.5833333333333334,  # (1 + 1/2 + 1/4) / 3 = 1.75 / 3
            "n": 3.0,
        }
    )


def test_evaluate_without_masking_ranks_history_items_too() -> None:
    model = NextItemTable(TABLE)
    settings = EvalSettings(ks=[1, 3], mask_history=False)
    got = evaluate(model, ITEMS, COMPLETION, TARGETS, rows(*HISTORIES), settings)
    # Ranks 1, 2, 4.
    assert got["hr@1"] == 0.0
    assert got["hr@3"] == pytest.approx(2 / 3)
    assert got["ndcg@3"] == pytest.approx(0.37697658452381916)  # (1/log2(3) + 1/log2(4)) / 3
    assert got["mrr"] == pytest.approx(0.34444444444444444)  # (1/2 + 1/3 + 1/5) / 3 = 31/90


def test_evaluate_with_no_history_has_nothing_to_mask() -> None:
    model = NextItemTable(TABLE)
    ranks = evaluate_ranks(model, ITEMS, COMPLETION, TARGETS, None, EvalSettings(mask_history=True))
    assert ranks.tolist() == [1, 2, 4]


def test_evaluate_scores_in_eval_mode_and_restores_training_mode() -> None:
    model = NextItemTable(TABLE).train()
    evaluate(model, ITEMS, COMPLETION, TARGETS, None, EvalSettings(), batch_size=1)
    assert model.modes == [False, False, False]
    assert model.training


def test_sampled_protocol_warns_and_tags_the_report(caplog: pytest.LogCaptureFixture) -> None:
    model = NextItemTable(TABLE)
    settings = EvalSettings(ks=[1, 3], protocol="sampled", num_candidates=100)
    with caplog.at_level(logging.WARNING, logger="training.metrics"), pytest.warns(UserWarning, match="Krichene"):
        got = evaluate(model, ITEMS, COMPLETION, TARGETS, rows(*HISTORIES), settings)
    assert sum("Krichene" in r.message for r in caplog.records) == 1  # once per evaluation, not per batch
    assert got["sampled_candidates"] == 100.0
    # 100 candidates exceed every eligible pool, so sampled ranks equal the masked full ranks 0, 1, 3.
    assert got["hr@1"] == pytest.approx(1 / 3)
    assert got["mrr"] == pytest.approx(0.5833333333333334)


def test_sampled_evaluate_is_deterministic_for_a_seed() -> None:
    table = torch.rand(51, 51, generator=torch.Generator().manual_seed(2))
    table[:, 0] = -INF
    model = NextItemTable(table)
    items = torch.randint(1, 51, (40, 4), generator=torch.Generator().manual_seed(4))
    targets = torch.randint(1, 51, (40,), generator=torch.Generator().manual_seed(5))
    completion = torch.ones(items.shape)
    settings = EvalSettings(protocol="sampled", num_candidates=10)
    with pytest.warns(UserWarning):
        first = evaluate_ranks(model, items, completion, targets, None, settings, batch_size=16, seed=7)
        again = evaluate_ranks(model, items, completion, targets, None, settings, batch_size=16, seed=7)
    assert torch.equal(first, again)
    assert int(first.max()) <= 10


class MillionItemScorer(SequenceModel):
    """Scores 1M items; the target item gets a score set by the newest history item (its rank)."""

    def __init__(self, n_items: int) -> None:
        super().__init__(n_items)
        self.rows_seen: list[int] = []

    def score(self, items: torch.Tensor, completion: torch.Tensor) -> torch.Tensor:
        self.rows_seen.append(items.shape[0])
        scores = torch.arange(self.n_items + 1, dtype=torch.float32).flip(0).expand(items.shape[0], -1).clone()
        scores[:, 0] = -INF
        return scores  # item i scores n - i: item 1 ranks first, the target's rank is target - 1

    def config(self) -> dict[str, Any]:
        return {}


def test_full_ranking_over_a_million_items_scores_in_bounded_batches_and_stays_exact() -> None:
    from training.metrics import SCORE_BUDGET_BYTES, rows_per_forward

    n = 1_000_000
    model = MillionItemScorer(n)
    targets = torch.tensor([1, 10, 999_999, 1_000_000] * 10)
    items = torch.ones(len(targets), 3, dtype=torch.long) * 2  # history: item 2 only
    history = sparse.csr_matrix((np.ones(len(targets)), (np.arange(len(targets)), np.full(len(targets), 2))),
                                shape=(len(targets), n + 1))
    ranks = evaluate_ranks(model, items, torch.full(items.shape, float("nan")), targets, history,
                           EvalSettings(mask_history=True), batch_size=256)
    assert max(model.rows_seen) == rows_per_forward(n) == 16  # not 256
    assert max(model.rows_seen) * (n + 1) * 4 <= SCORE_BUDGET_BYTES
    # Item 2 is masked, so every target above it moves up by one; ranks are exact at this size too.
    assert ranks.tolist() == [0, 8, 999_997, 999_998] * 10


def test_the_popularity_baseline_ranks_by_plays_with_history_masked_in_chunks(monkeypatch) -> None:
    import training.metrics as m

    plays = np.array([0, 5, 9, 1, 7, 3])  # [n+1]: item 2 most played, then 4, 1, 5, 3
    targets = torch.tensor([2, 1, 3, 4])
    history = sparse.csr_matrix(np.array([[0, 0, 0, 0, 0, 0],    # nothing masked: 2 ranks first
                                          [0, 0, 1, 0, 1, 0],    # 2 and 4 masked: 1 ranks first
                                          [0, 0, 0, 0, 0, 0],    # 3 is the least played: last of 5
                                          [0, 0, 0, 0, 1, 0]]))  # the target is history: a miss
    monkeypatch.setattr(m, "SCORE_BUDGET_BYTES", 4 * 6)  # one row a forward: the chunks must agree
    ranks = m.popularity_ranks(plays, targets, history)
    assert ranks.tolist() == [0, 0, 4, m.MISS]
    assert m.popularity_ranks(plays, targets).tolist() == [0, 2, 4, 1]


def test_full_ranking_scores_shortest_histories_first_and_returns_ranks_in_input_order() -> None:
    # Rows of any length, batched so that each batch trims to its own longest history: the ranks
    # must be exactly those of scoring each full-width row alone, in the caller's order.
    from training.models.sasrec import SASRec

    torch.manual_seed(0)
    model = SASRec(n_items=30, max_len=12, hidden=16, layers=1, heads=2, dropout=0.0).eval()
    g = torch.Generator().manual_seed(1)
    lengths = torch.randint(1, 13, (40,), generator=g)
    items = torch.zeros(40, 12, dtype=torch.long)
    for r, n in enumerate(lengths.tolist()):
        items[r, 12 - n:] = torch.randint(1, 31, (n,), generator=g)
    targets = torch.randint(1, 31, (40,), generator=g)
    history = history_matrix([row[row != 0].numpy() for row in items], 30)
    ranks = evaluate_ranks(model, items, torch.full(items.shape, float("nan")), targets, history,
                           EvalSettings(), batch_size=7)
    with torch.no_grad():
        alone = torch.cat([full_ranking_ranks(model.score(items[r:r + 1], items[r:r + 1].float()),
                                              targets[r:r + 1], history[r]) for r in range(40)])
    assert torch.equal(ranks, alone)
