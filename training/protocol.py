"""The paper's data protocol (``train.split: paper``, ``--preset paper``): filters, sessions, split.

From "Multimodal Music Recommendation System using LLMs", as its code's README states it:
1. users with >= ``min_user_plays`` listens (1,000), then tracks with >= ``min_track_plays`` (7);
2. sessions split at silences > ``session_gap_minutes`` (20); repeats inside a session are removed
   (the first play stays) and a session keeps its first ``session_max_tracks`` (10) tracks;
3. users with >= ``min_sessions`` (50) such sessions;
4. a global time split: the test cutoff is the ``test_quantile`` (90th percentile) timestamp of all
   interactions, the validation cutoff the same quantile of those before it. A seeded
   ``valid_user_share`` (10%) of users are validation users, whose training stops at the
   validation cutoff; every user with a listen after the test cutoff is tested, validation users too.

Each step's users, tracks and interactions are counted (``FilterCounts``) and land in the run's
``data.*`` MLflow params. Departures: each user gives one validation / test example, the first
listen after the cutoff with everything before it as history (as ``training.data.time_split``
does); the seed code's README does not say how many targets per user it scores.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from encore.core.config import PaperProtocolSettings

log = logging.getLogger(__name__)

STEPS = ("raw", "min_user_plays", "min_track_plays", "sessions", "min_sessions")


@dataclass(frozen=True)
class FilterCounts:
    step: str
    users: int
    tracks: int
    interactions: int


def _count(step: str, frame: pd.DataFrame) -> FilterCounts:
    tracks = pd.unique(np.concatenate([np.asarray(t, dtype=object) for t in frame["track_ids"]])) \
        if len(frame) else []
    return FilterCounts(step, len(frame), len(tracks), int(sum(len(t) for t in frame["track_ids"])))


def _take(frame: pd.DataFrame, keep: list[np.ndarray]) -> pd.DataFrame:
    """Each user's arrays at the positions ``keep[row]`` (bool or index arrays)."""
    out = frame.copy()
    for col in ("track_ids", "completions", "ts"):
        out[col] = [np.asarray(v)[k] for v, k in zip(frame[col], keep, strict=True)]
    return out


def session_keep(ts: np.ndarray, tracks: np.ndarray, gap_s: float, max_tracks: int) -> tuple[np.ndarray, int]:
    """Which listens of one user's time-ordered ``ts [n]`` / ``tracks [n]`` the sessions keep, and
    how many sessions there are: (indices [m], sessions).

    A session starts at the first listen and after each silence longer than ``gap_s`` seconds.
    Inside it a repeated track is dropped (its first play stays), then its first ``max_tracks`` stay.
    """
    if len(ts) == 0:
        return np.zeros(0, dtype=np.int64), 0
    session = np.concatenate([[0], np.cumsum(np.diff(ts) > gap_s)])  # [n] session number per listen
    frame = pd.DataFrame({"session": session, "track": tracks})
    first = ~frame.duplicated(["session", "track"], keep="first").to_numpy()  # [n]
    idx = np.flatnonzero(first)
    rank = frame.iloc[idx].groupby("session").cumcount().to_numpy()  # 0-based place in its session
    return idx[rank < max_tracks], int(session[-1]) + 1


def paper_filter(frame: pd.DataFrame, s: PaperProtocolSettings) -> tuple[pd.DataFrame, list[FilterCounts]]:
    """The paper's filters and sessions over per-user arrays (``training.data.read_listens``:
    user_id, track_ids, completions, ts; time-ordered): the kept listens and each step's counts."""
    counts = [_count("raw", frame)]
    plays = frame["track_ids"].map(len)
    frame = frame[plays >= s.min_user_plays].reset_index(drop=True)
    counts.append(_count("min_user_plays", frame))

    # Track plays among the remaining users' listens.
    if len(frame):
        every = np.concatenate([np.asarray(t, dtype=object) for t in frame["track_ids"]])  # [interactions]
        track_plays = pd.Series(every).value_counts()
        popular = set(track_plays.index[track_plays.to_numpy() >= s.min_track_plays])
    else:
        popular = set()
    frame = _take(frame, [np.fromiter((t in popular for t in tracks), dtype=bool, count=len(tracks))
                          for tracks in frame["track_ids"]])
    counts.append(_count("min_track_plays", frame))

    kept, sessions = [], []
    for tracks, ts in zip(frame["track_ids"], frame["ts"], strict=True):
        idx, n = session_keep(np.asarray(ts), np.asarray(tracks, dtype=object), s.session_gap_minutes * 60,
                              s.session_max_tracks)
        kept.append(idx)
        sessions.append(n)
    frame = _take(frame, kept)
    frame["sessions"] = sessions
    counts.append(_count("sessions", frame))

    frame = frame[frame["sessions"] >= s.min_sessions].drop(columns="sessions").reset_index(drop=True)
    counts.append(_count("min_sessions", frame))
    for c in counts:
        log.info("paper protocol, %-15s %6d users %9d tracks %11d interactions", c.step, c.users, c.tracks,
                 c.interactions)
    return frame, counts


def counts_info(counts: list[FilterCounts]) -> dict[str, int]:
    """Flat ``{"paper.<step>.users": n, ...}`` for the run's params (``data.paper.<step>.users``)."""
    return {f"paper.{c.step}.{k}": getattr(c, k) for c in counts for k in ("users", "tracks", "interactions")}


def cutoffs(all_ts: np.ndarray, quantile: float) -> tuple[int, int]:
    """(validation cutoff, test cutoff) in epoch seconds: the test cutoff is ``quantile`` of every
    timestamp, the validation cutoff the same quantile of those before the test cutoff."""
    t_test = int(np.quantile(all_ts, quantile))
    before = all_ts[all_ts < t_test]
    t_valid = int(np.quantile(before, quantile)) if len(before) else t_test
    return t_valid, t_test


def validation_users(users: list[str], share: float, seed: int) -> set[str]:
    """A seeded draw of ``share`` of ``users`` (at least one): the same users for the same seed."""
    ordered = sorted(users)
    n = max(1, round(share * len(ordered)))
    rng = np.random.default_rng(seed)
    return {ordered[i] for i in rng.choice(len(ordered), size=min(n, len(ordered)), replace=False)}
