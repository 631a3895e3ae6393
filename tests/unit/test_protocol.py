"""The paper's protocol: filters, sessions, its time split, and the fixed candidate lists."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from encore.core.config import PRESETS, EvalSettings, PaperProtocolSettings, TrainConfig
from training.data import Sequences, Vocab, paper_split
from training.metrics import MISS, candidate_ranks, draw_candidates, evaluate_ranks, history_matrix
from training.models.base import SequenceModel
from training.protocol import cutoffs, paper_filter, session_keep, validation_users

MIN = 60


def test_sessions_split_at_long_gaps_drop_repeats_inside_and_keep_their_first_tracks() -> None:
    # Session 1: a b a c d (a repeated); a 21-minute gap; session 2: a e f.
    ts = np.array([0, 60, 120, 180, 240, 240 + 21 * MIN, 300 + 21 * MIN, 360 + 21 * MIN])
    tracks = np.array(["a", "b", "a", "c", "d", "a", "e", "f"], dtype=object)
    idx, n = session_keep(ts, tracks, gap_s=20 * MIN, max_tracks=3)
    assert n == 2
    # Session 1 without its repeat is a b c d, cut to its first three; "a" may come back in session 2.
    assert tracks[idx].tolist() == ["a", "b", "c", "a", "e", "f"]


def test_a_gap_of_exactly_the_limit_does_not_start_a_session() -> None:
    idx, n = session_keep(np.array([0, 20 * MIN]), np.array(["a", "b"], dtype=object), 20 * MIN, 10)
    assert n == 1 and idx.tolist() == [0, 1]


def _user(name: str, tracks: list[str], start: int = 0, gap: int = 60) -> dict:
    ts = start + gap * np.arange(len(tracks))
    return {"user_id": name, "track_ids": tracks, "completions": [np.nan] * len(tracks), "ts": ts.tolist()}


def test_paper_filter_counts_users_tracks_and_interactions_after_every_step() -> None:
    s = PaperProtocolSettings(min_user_plays=6, min_track_plays=2, session_gap_minutes=20, session_max_tracks=10,
                              min_sessions=2)
    heavy = _user("heavy", ["a", "b", "a", "c", "rare", "b", "a"], gap=30 * MIN)  # 7 sessions of one listen
    light = _user("light", ["a", "b"])  # too few plays
    burst = _user("burst", ["a", "b", "a", "b", "c", "c"], gap=MIN)  # one session: a b c after repeats
    frame = pd.DataFrame([heavy, light, burst])
    kept, counts = paper_filter(frame, s)
    got = {c.step: (c.users, c.tracks, c.interactions) for c in counts}
    assert got["raw"] == (3, 4, 15)
    assert got["min_user_plays"] == (2, 4, 13)
    assert got["min_track_plays"] == (2, 3, 12)  # "rare" (1 play) leaves
    assert got["sessions"] == (2, 3, 9)  # burst: a b c
    assert got["min_sessions"] == (1, 3, 6)  # burst had one session
    assert kept["user_id"].tolist() == ["heavy"]
    assert kept["track_ids"][0].tolist() == ["a", "b", "a", "c", "b", "a"]


def test_cutoffs_are_the_quantile_of_all_then_of_the_interactions_before_the_test_cutoff() -> None:
    ts = np.arange(1, 101)
    t_valid, t_test = cutoffs(ts, 0.9)
    assert t_test == int(np.quantile(ts, 0.9))
    assert t_valid == int(np.quantile(ts[ts < t_test], 0.9))


def test_validation_users_are_a_seeded_share_and_the_same_for_the_same_seed() -> None:
    users = [f"u{i}" for i in range(50)]
    a, b = validation_users(users, 0.1, seed=3), validation_users(list(reversed(users)), 0.1, seed=3)
    assert a == b and len(a) == 5
    assert validation_users(users, 0.1, seed=4) != a


def test_paper_split_tests_every_user_and_stops_validation_users_at_the_validation_cutoff() -> None:
    n_users, n = 20, 30
    seqs = Sequences([f"u{i:02d}" for i in range(n_users)],
                     [np.arange(1, n + 1) for _ in range(n_users)],
                     [np.full(n, np.nan, np.float32) for _ in range(n_users)],
                     [np.arange(n, dtype=np.int64) * 10 + u for u in range(n_users)])
    vocab = Vocab([f"t{i}" for i in range(n)])
    ds = paper_split(seqs, vocab, max_len=50, quantile=0.9, valid_share=0.1, seed=0)
    t_valid, t_test = ds.info["valid_from"], ds.info["test_from"]
    held = validation_users(seqs.users, 0.1, 0)
    assert ds.info["valid_users"] == len(held) == 2
    assert len(ds.test) == n_users  # every user is tested
    assert sorted(ds.valid.users) == sorted(held)
    for u, items, ts in zip(ds.train.users, ds.train.items, ds.train.ts, strict=True):
        assert ts.max() < (t_valid if u in held else t_test)
        assert len(items) == len(ts)
    assert (ds.test.timestamps >= t_test).all() and (ds.valid.timestamps >= t_valid).all()
    assert (ds.valid.timestamps < t_test).all()


def test_paper_preset_sets_the_split_and_the_200_candidate_evaluation() -> None:
    from training.ablation import apply_changes

    tc = apply_changes(TrainConfig(), PRESETS["paper"])
    assert tc.split == "paper" and tc.eval.protocol == "candidates" and tc.eval.num_candidates == 199
    assert tc.eval.ks == [5, 10, 20]


# -- candidate lists --------------------------------------------------------------------------------

def test_candidate_lists_hold_the_target_first_then_distinct_negatives_and_repeat_for_a_seed() -> None:
    targets = torch.tensor([3, 7, 1, 50])
    exclude = history_matrix([np.array([4, 5]), np.array([]), np.array([2]), np.array([7])], 60)
    a = draw_candidates(targets, 60, 20, seed=1, exclude=exclude)
    assert a.shape == (4, 21) and torch.equal(a[:, 0], targets)
    for row, banned in zip(a.tolist(), [{3, 4, 5}, {7}, {1, 2}, {50, 7}], strict=True):
        negatives = row[1:]
        assert len(set(negatives)) == 20 and not set(negatives) & banned and min(negatives) >= 1
        assert max(negatives) <= 60
    assert torch.equal(a, draw_candidates(targets, 60, 20, seed=1, exclude=exclude))
    assert not torch.equal(a, draw_candidates(targets, 60, 20, seed=2, exclude=exclude))


def test_a_row_with_too_few_eligible_items_is_padded_and_the_padding_ranks_nothing() -> None:
    cands = draw_candidates(torch.tensor([2]), 4, 10, seed=0)
    assert sorted(cands[0, 1:4].tolist()) == [1, 3, 4] and (cands[0, 4:] == 0).all()
    scores = torch.zeros(1, 11)  # every score ties: the three real negatives rank ahead, padding does not
    assert candidate_ranks(scores, cands).tolist() == [3]


def test_candidate_ranks_count_ties_against_the_target_and_miss_an_excluded_target() -> None:
    cands = torch.tensor([[5, 1, 2, 3], [5, 1, 2, 3]])
    scores = torch.tensor([[0.5, 0.9, 0.5, 0.1], [0.5, 0.9, 0.5, 0.1]])
    ranks = candidate_ranks(scores, cands, torch.tensor([True, False]))
    assert ranks.tolist() == [2, MISS]


class _Fixed(SequenceModel):
    """Scores item i as i for every history, through score() or only score_candidates()."""

    def __init__(self, n_items: int, own: bool) -> None:
        super().__init__(n_items)
        self.calls: list[torch.Tensor] = []
        if own:
            self.score_candidates = self._own  # type: ignore[method-assign]

    def score(self, items: torch.Tensor, completion: torch.Tensor) -> torch.Tensor:
        return torch.arange(self.n_items + 1, dtype=torch.float32).expand(len(items), -1)

    def _own(self, items: torch.Tensor, completion: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        self.calls.append(candidates)
        return candidates.float()


@pytest.mark.parametrize("own", [False, True])
def test_the_candidates_protocol_ranks_among_the_drawn_lists_whether_a_model_scores_all_or_candidates(
        own: bool) -> None:
    n, N = 40, 12
    targets = torch.arange(1, N + 1) * 3
    items = torch.randint(1, n + 1, (N, 5))
    settings = EvalSettings(protocol="candidates", num_candidates=9, mask_history=False)
    model = _Fixed(n, own)
    ranks = evaluate_ranks(model, items, torch.full(items.shape, float("nan")), targets, None, settings,
                           batch_size=5, seed=7)
    cands = draw_candidates(targets, n, 9, seed=7)
    # Score = item index: the rank is the number of negatives with a higher index.
    assert ranks.tolist() == (cands[:, 1:] >= cands[:, :1]).sum(1).tolist()
    if own:
        assert sum(len(c) for c in model.calls) == N and all(c.shape[1] == 10 for c in model.calls)
