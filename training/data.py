"""Training data: item sequences, vocabulary, splits, training windows and item-side tables.

Where each part comes from (see docs/models.md, "Training data at LastFM-1K scale"):
- **Sequences** are read straight from the Spark-built ``listens`` table (one row per listen, with
  its session position and completion ratio), grouped into one time-ordered array per user by
  DuckDB. A point-in-time join of one entity row per training target would ask the offline store
  for ~19M rows at LastFM-1K size, each returning a 50-item list; one sequential scan of the table
  gives every prefix at once, and arrays of int32 indices (~80 MB for 19M listens) fit in memory.
- **User features** come through Feast's ``training`` service, point-in-time at each evaluation
  example's timestamp (``user_context``), to break metrics down by user activity.
- **Item content** comes through Feast's ``track_content`` service (``content_table``).

Item index 0 is padding; vocabulary items are 1..n. Windows and histories are left-padded, newest
item last, as ``training.models.base`` expects.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import torch

from encore.core import lake
from encore.core.config import EncoreConfig, TrainConfig
from encore.core.workspace import Workspace
from training.metrics import history_matrix
from training.models.base import CONTENT_MODALITIES, ContentTable

log = logging.getLogger(__name__)


class DataError(ValueError):
    """The data cannot make a training set (nothing built yet, too few users); says what to run."""


@dataclass
class Vocab:
    """Track ids of items 1..n (``track_ids[i - 1]`` is item ``i``)."""

    track_ids: list[str]

    def __post_init__(self) -> None:
        self.index = {t: i + 1 for i, t in enumerate(self.track_ids)}

    def __len__(self) -> int:
        return len(self.track_ids)

    def encode(self, track_ids: list[str]) -> np.ndarray:
        """Vocabulary indices; unknown tracks are 0 (padding), which every consumer skips."""
        return np.array([self.index.get(t, 0) for t in track_ids], dtype=np.int64)

    def to_json(self) -> str:
        return json.dumps({"track_ids": self.track_ids})

    @classmethod
    def from_json(cls, text: str) -> Vocab:
        return cls(json.loads(text)["track_ids"])


@dataclass
class Sequences:
    """One time-ordered sequence per user: item indices, completions (NaN = unknown), epoch seconds."""

    users: list[str]
    items: list[np.ndarray]
    completion: list[np.ndarray]
    ts: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.users)

    def n_events(self) -> int:
        return int(sum(len(s) for s in self.items))


@dataclass
class EvalSet:
    """One example per user: the last ``max_len`` items before a target (the model's history)."""

    users: list[str]
    items: torch.Tensor  # [N, L] left-padded
    completion: torch.Tensor  # [N, L] NaN = unknown
    targets: torch.Tensor  # [N]
    timestamps: np.ndarray  # [N] epoch seconds of the target listen
    # scipy csr [N, n_items + 1]: the items of that window, masked when eval.mask_history is on. The
    # window, not the whole past: it is what nightly scoring has (Feast's 50 recent tracks), and a
    # listener's whole past covers most of a small catalog (80% of the demo's test targets).
    history: Any
    # [N] items before each target in its user's full sequence (``Dataset.sequences``), i.e. the
    # target's position there: the whole history is ``items[:pos]``, the target ``items[pos]``.
    positions: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.users)


@dataclass
class Dataset:
    vocab: Vocab
    train: Sequences  # what models may train on
    valid: EvalSet
    test: EvalSet
    info: dict[str, Any] = field(default_factory=dict)  # counts and ranges, logged with the run
    # Every user's whole time-ordered sequence the split was cut from (``split`` sets it): what
    # ``training.export`` writes, with each example's position in it (``EvalSet.positions``).
    sequences: Sequences | None = None


# -- reading ------------------------------------------------------------------------------------

def read_listens(cfg: EncoreConfig) -> pd.DataFrame:
    """Per-user arrays from the listens table: user_id, track_ids, completions, ts (epoch s)."""
    table = Workspace.at(cfg.home).feature_table("listens")
    snap = lake.resolve(table)  # pinned: a publication during the read cannot mix two versions
    if snap is None or not lake.files(table):
        raise DataError(f"no listens table under {table}: run `encore ingest` and `encore features` first")
    glob = lake.parquet_glob(snap)
    # Order within a user: start time, then position in the session, then id (exact ties).
    sql = f"""
        SELECT user_id,
               list(track_id ORDER BY ts, position, track_id) AS track_ids,
               list(coalesce(completion, 'NaN'::DOUBLE) ORDER BY ts, position, track_id) AS completions,
               list(epoch(ts)::BIGINT ORDER BY ts, position, track_id) AS ts
        FROM read_parquet('{glob}', hive_partitioning = false)
        GROUP BY user_id ORDER BY user_id
    """
    with duckdb.connect() as con:
        return con.sql(sql).df()


def training_plays(data: Dataset) -> np.ndarray:
    """How often each item occurs in the training sequences: [n_items + 1] int64, index 0 = padding."""
    plays = np.zeros(len(data.vocab) + 1, dtype=np.int64)
    for seq in data.train.items:
        np.add.at(plays, seq, 1)
    return plays


def vocabulary(track_lists: list[list[str]] | pd.Series, min_plays: int) -> Vocab:
    """Tracks played at least ``min_plays`` times, most played first (ties by id: deterministic)."""
    counts: dict[str, int] = {}
    for tracks in track_lists:
        for t in tracks:
            counts[t] = counts.get(t, 0) + 1
    kept = sorted((t for t, c in counts.items() if c >= min_plays), key=lambda t: (-counts[t], t))
    return Vocab(kept)


def load_lake(cfg: EncoreConfig) -> Dataset:
    """The training set of the workspace's lake under ``cfg.train`` (split, vocabulary, max_len)."""
    df = read_listens(cfg)
    tc = cfg.train
    protocol_info: dict[str, Any] = {}
    if tc.split == "paper":
        from training.protocol import counts_info, paper_filter

        df, counts = paper_filter(df, tc.paper)
        protocol_info = counts_info(counts)
        if not len(df):
            raise DataError(f"the paper protocol keeps no user ({counts[-1].step}: "
                            + ", ".join(f"{c.step} {c.users}" for c in counts) + " users): lower "
                            "train.paper.min_user_plays / min_sessions for a smaller lake")
    vocab = vocabulary(df["track_ids"], tc.min_item_plays)
    if not len(vocab):
        raise DataError(f"no track has {tc.min_item_plays}+ plays: lower train.min_item_plays")
    users, items, comps, tss = [], [], [], []
    dropped = 0
    for row in df.itertuples(index=False):
        idx = vocab.encode(list(row.track_ids))
        keep = idx > 0  # tracks under the play threshold leave the sequence, as in the paper's preset
        dropped += int((~keep).sum())
        users.append(row.user_id)
        items.append(idx[keep])
        comps.append(np.asarray(row.completions, dtype=np.float32)[keep])
        tss.append(np.asarray(row.ts, dtype=np.int64)[keep])
    seqs = Sequences(users, items, comps, tss)
    ds = split(seqs, vocab, tc)
    ds.info.update({"source": str(Workspace.at(cfg.home).feature_table("listens")),
                    "listens_below_min_plays": dropped, "min_item_plays": tc.min_item_plays, **protocol_info})
    return ds


# -- splitting -----------------------------------------------------------------------------------

def split(seqs: Sequences, vocab: Vocab, tc: TrainConfig) -> Dataset:
    """Leave-one-out per user (default) or a global time split; see ``loo_split``/``time_split``."""
    if tc.split == "loo":
        ds = loo_split(seqs, vocab, tc.max_len)
    elif tc.split == "time":
        ds = time_split(seqs, vocab, tc.max_len, tc.time_quantile)
    else:
        ds = paper_split(seqs, vocab, tc.max_len, tc.paper.test_quantile, tc.paper.valid_user_share, tc.seed)
    ds.sequences = seqs
    all_ts = np.concatenate([t for t in seqs.ts if len(t)]) if seqs.n_events() else np.zeros(1, np.int64)
    ds.info.update({"split": tc.split, "users": len(seqs), "items": len(vocab), "events": seqs.n_events(),
                    "train_events": ds.train.n_events(), "valid_examples": len(ds.valid),
                    "test_examples": len(ds.test),
                    "data_start": pd.Timestamp(int(all_ts.min()), unit="s", tz="UTC").isoformat(),
                    "data_end": pd.Timestamp(int(all_ts.max()), unit="s", tz="UTC").isoformat()})
    if not len(ds.test) or not len(ds.valid):
        raise DataError(f"the {tc.split} split leaves no validation or test example: too little data "
                        f"({len(seqs)} users, {seqs.n_events()} listens)")
    return ds


def loo_split(seqs: Sequences, vocab: Vocab, max_len: int) -> Dataset:
    """Leave-one-out: per user, the last item is the test target and the one before it validation.

    Users with fewer than 3 items only train. Training sees each sequence without its last two.
    """
    train = Sequences([], [], [], [])
    valid: list[tuple[str, np.ndarray, np.ndarray, int, int]] = []
    test: list[tuple[str, np.ndarray, np.ndarray, int, int]] = []
    for u, s, c, t in zip(seqs.users, seqs.items, seqs.completion, seqs.ts, strict=True):
        if len(s) < 3:
            train.users.append(u), train.items.append(s), train.completion.append(c), train.ts.append(t)
            continue
        train.users.append(u), train.items.append(s[:-2]), train.completion.append(c[:-2])
        train.ts.append(t[:-2])
        valid.append((u, s[:-2], c[:-2], int(s[-2]), int(t[-2])))
        test.append((u, s[:-1], c[:-1], int(s[-1]), int(t[-1])))
    return Dataset(vocab, train, eval_set(valid, len(vocab), max_len), eval_set(test, len(vocab), max_len))


def time_split(seqs: Sequences, vocab: Vocab, max_len: int, quantile: float) -> Dataset:
    """A global time split: test from the ``quantile`` timestamp on, validation just before it.

    Validation starts at quantile - (1 - quantile) (0.8 for 0.9). Training sees listens before the
    validation start. Each user with a listen in a period gives one example: that period's first
    listen, with everything before it as history.
    """
    all_ts = np.concatenate([t for t in seqs.ts if len(t)])
    t_test = int(np.quantile(all_ts, quantile))
    t_valid = int(np.quantile(all_ts, max(quantile - (1 - quantile), 0.0)))
    train = Sequences([], [], [], [])
    valid: list[tuple[str, np.ndarray, np.ndarray, int, int]] = []
    test: list[tuple[str, np.ndarray, np.ndarray, int, int]] = []
    for u, s, c, t in zip(seqs.users, seqs.items, seqs.completion, seqs.ts, strict=True):
        n_train = int(np.searchsorted(t, t_valid, side="left"))
        n_valid = int(np.searchsorted(t, t_test, side="left"))
        train.users.append(u), train.items.append(s[:n_train]), train.completion.append(c[:n_train])
        train.ts.append(t[:n_train])
        if n_train < n_valid and n_train > 0:
            valid.append((u, s[:n_train], c[:n_train], int(s[n_train]), int(t[n_train])))
        if n_valid < len(s) and n_valid > 0:
            test.append((u, s[:n_valid], c[:n_valid], int(s[n_valid]), int(t[n_valid])))
    return Dataset(vocab, train, eval_set(valid, len(vocab), max_len), eval_set(test, len(vocab), max_len),
                   info={"valid_from": t_valid, "test_from": t_test})


def paper_split(seqs: Sequences, vocab: Vocab, max_len: int, quantile: float, valid_share: float,
                seed: int) -> Dataset:
    """The paper's global time split (``training.protocol``): every user with a listen from the
    test cutoff on is tested on the first of them; validation users (a seeded ``valid_share``) train up to the
    validation cutoff and are validated on their first listen after it, the others train up to
    the test cutoff. Each example's history is everything before its target."""
    from training.protocol import cutoffs, validation_users

    all_ts = np.concatenate([t for t in seqs.ts if len(t)])
    t_valid, t_test = cutoffs(all_ts, quantile)
    held = validation_users(seqs.users, valid_share, seed)
    train = Sequences([], [], [], [])
    valid: list[tuple[str, np.ndarray, np.ndarray, int, int]] = []
    test: list[tuple[str, np.ndarray, np.ndarray, int, int]] = []
    for u, s, c, t in zip(seqs.users, seqs.items, seqs.completion, seqs.ts, strict=True):
        n_valid = int(np.searchsorted(t, t_valid, side="left"))
        n_test = int(np.searchsorted(t, t_test, side="left"))
        n_train = n_valid if u in held else n_test
        train.users.append(u), train.items.append(s[:n_train]), train.completion.append(c[:n_train])
        train.ts.append(t[:n_train])
        if u in held and 0 < n_valid < n_test:
            valid.append((u, s[:n_valid], c[:n_valid], int(s[n_valid]), int(t[n_valid])))
        if 0 < n_test < len(s):
            test.append((u, s[:n_test], c[:n_test], int(s[n_test]), int(t[n_test])))
    return Dataset(vocab, train, eval_set(valid, len(vocab), max_len), eval_set(test, len(vocab), max_len),
                   info={"valid_from": t_valid, "test_from": t_test, "valid_users": len(held)})


def left_pad(seq: np.ndarray, length: int, fill: float) -> np.ndarray:
    """The last ``length`` values of ``seq``, left-padded with ``fill``."""
    out = np.full(length, fill, dtype=seq.dtype if len(seq) else np.float32)
    tail = seq[-length:]
    if len(tail):
        out[length - len(tail):] = tail
    return out


def eval_set(rows: list[tuple[str, np.ndarray, np.ndarray, int, int]], n_items: int, max_len: int) -> EvalSet:
    """Rows of (user, history items, history completions, target, target time) to tensors."""
    items = np.stack([left_pad(h.astype(np.int64), max_len, 0) for _, h, _, _, _ in rows]) if rows \
        else np.zeros((0, max_len), np.int64)
    comp = np.stack([left_pad(c.astype(np.float32), max_len, np.nan) for _, _, c, _, _ in rows]) if rows \
        else np.zeros((0, max_len), np.float32)
    return EvalSet(users=[r[0] for r in rows], items=torch.from_numpy(items), completion=torch.from_numpy(comp),
                   targets=torch.tensor([r[3] for r in rows], dtype=torch.long),
                   timestamps=np.array([r[4] for r in rows], dtype=np.int64),
                   history=history_matrix([r[1][-max_len:] for r in rows], n_items),
                   positions=np.array([len(r[1]) for r in rows], dtype=np.int64))


# -- training windows -----------------------------------------------------------------------------

def seq2seq_windows(train: Sequences, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows of ``max_len + 1`` items cut from the end of each sequence with stride ``max_len``.

    Every item after a user's first is the target of exactly one position per epoch. Returns
    items [M, L+1] (left-padded) and completion [M, L+1]. Sequences shorter than 2 give nothing.
    """
    wins, comps = [], []
    for s, c in zip(train.items, train.completion, strict=True):
        end = len(s)
        while end >= 2:
            start = max(0, end - max_len - 1)
            wins.append(left_pad(s[start:end].astype(np.int64), max_len + 1, 0))
            comps.append(left_pad(c[start:end].astype(np.float32), max_len + 1, np.nan))
            end -= max_len
    if not wins:
        raise DataError("no training sequence has two items")
    return torch.from_numpy(np.stack(wins)), torch.from_numpy(np.stack(comps))


def prefix_samples(train: Sequences, max_len: int, per_user: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``per_user`` random (history, next item) prefixes per user, as windows [M, L+1].

    For models that read out one prediction per sequence (E4SRec): a full pass over every prefix
    costs one LLM forward per listen, so each epoch samples (``seed`` differs per epoch).
    """
    rng = np.random.default_rng(seed)
    wins, comps = [], []
    for s, c in zip(train.items, train.completion, strict=True):
        if len(s) < 2:
            continue
        # target positions 1..n-1 (each needs one item of history); without replacement when possible
        ends = rng.choice(np.arange(2, len(s) + 1), size=min(per_user, len(s) - 1), replace=False)
        for end in np.sort(ends):
            start = max(0, end - max_len - 1)
            wins.append(left_pad(s[start:end].astype(np.int64), max_len + 1, 0))
            comps.append(left_pad(c[start:end].astype(np.float32), max_len + 1, np.nan))
    if not wins:
        raise DataError("no training sequence has two items")
    return torch.from_numpy(np.stack(wins)), torch.from_numpy(np.stack(comps))


# -- item and user side through Feast ----------------------------------------------------------------

# Feast feature names of the ``track_content`` service, per model modality.
CONTENT_FEATURES = {"lyrics": "lyrics_embedding", "audio": "audio_embedding", "meta": "metadata_embedding"}


def content_from_frame(vocab: Vocab, frame: pd.DataFrame, modalities: list[str] | tuple[str, ...]) -> ContentTable:
    """ContentTable from a frame with ``track_id`` and one list-valued column per modality name.

    Items without a row, or with a null vector, are absent (``present`` False, zeros in ``vectors``).
    """
    table = ContentTable()
    by_id = frame.set_index("track_id")
    for m in modalities:
        if m not in CONTENT_MODALITIES or m not in by_id.columns:
            continue
        col = by_id[m]
        dim = next((len(v) for v in col if v is not None and not (isinstance(v, float) and np.isnan(v))), 0)
        if not dim:
            log.warning("no track has a %s embedding; the modality is left out", m)
            continue
        vec = np.zeros((len(vocab) + 1, dim), dtype=np.float32)
        present = np.zeros(len(vocab) + 1, dtype=bool)
        for i, t in enumerate(vocab.track_ids, start=1):
            v = col.get(t)
            if v is not None and not (isinstance(v, float) and np.isnan(v)) and len(v) == dim:
                vec[i] = np.asarray(v, dtype=np.float32)
                present[i] = True
        table.vectors[m] = torch.from_numpy(vec)
        table.present[m] = torch.from_numpy(present)
    return table


def content_frame(cfg: EncoreConfig, vocab: Vocab, modalities: list[str] | tuple[str, ...],
                  genes: bool = False) -> pd.DataFrame:
    """The vocabulary's rows of Feast's ``track_content`` service (offline store), in vocabulary
    order: ``track_id``, one list-valued column per modality (None where missing) and, with
    ``genes``, the 58 MGPHot genes (``encore.core.schemas.GENES`` order, None where unknown)."""
    from feature_repo.store import training_examples

    entity = pd.DataFrame({"track_id": vocab.track_ids,
                           "event_timestamp": pd.Timestamp.now(tz="UTC")})
    df = training_examples(cfg, entity, service="track_content", key="track_id")
    frame = pd.DataFrame({"track_id": df["track_id"]})
    for m in modalities:
        frame[m] = df[f"track_content__{CONTENT_FEATURES[m]}"]
    if genes:
        frame["genes"] = df["track_content__genes"]
    return frame


def content_table(cfg: EncoreConfig, vocab: Vocab, modalities: list[str] | tuple[str, ...]) -> ContentTable:
    """The vocabulary's content embeddings from Feast's ``track_content`` service (offline store)."""
    wanted = [m for m in modalities if m in CONTENT_FEATURES]
    if not wanted:
        return ContentTable()
    table = content_from_frame(vocab, content_frame(cfg, vocab, wanted), wanted)
    for m in wanted:
        share = float(table.present[m][1:].float().mean()) if m in table.present else 0.0
        log.info("content %s: %.1f%% of %d vocabulary tracks have an embedding", m, 100 * share, len(vocab))
    return table


def user_context(cfg: EncoreConfig, evalset: EvalSet) -> pd.DataFrame:
    """Point-in-time user features (Feast ``training`` service) at each example's target time."""
    from feature_repo.store import training_examples

    entity = pd.DataFrame({"user_id": evalset.users,
                           "event_timestamp": pd.to_datetime(evalset.timestamps, unit="s", utc=True)})
    return training_examples(cfg, entity, service="training")


def track_names(cfg: EncoreConfig) -> dict[str, tuple[str, str]]:
    """``track_id -> (artist, title)`` from the bronze tracks table ({} before a catalog is ingested);
    a null name is ""."""
    t = lake.read_tracks(Workspace.at(cfg.home).tracks, ["track_id", "artist_name", "track_name"])
    if t is None:
        return {}
    return {tid: (a or "", n or "") for tid, a, n in zip(*(t.column(c).to_pylist() for c in t.column_names),
                                                         strict=True)}


def item_texts(cfg: EncoreConfig, vocab: Vocab) -> list[str]:
    """Each item's "artist – title" from the bronze tracks table, the zero-shot ranker's words:
    [n_items + 1], index 0 (padding) empty. A track the table lacks keeps its id as its title
    (counted in the log): it still gets a score, from less text."""
    from training.models.llm_zeroshot import item_text

    names = track_names(cfg)
    missing = sum(1 for tid in vocab.track_ids if tid not in names)
    if missing:
        log.warning("item texts: %d of %d tracks have no name in the tracks table; their id stands in",
                    missing, len(vocab))
    return [""] + [item_text(*names[tid]) if tid in names else item_text("unknown artist", tid)
                   for tid in vocab.track_ids]


def standard_attributes(path: Path, vocab: Vocab) -> ContentTable:
    """Item attributes of a standard benchmark (``{"item": [attr ids]}``) as a multi-hot "meta" table."""
    raw = json.loads(Path(path).read_text())
    n_attr = max((a for attrs in raw.values() for a in attrs), default=0) + 1
    vec = np.zeros((len(vocab) + 1, n_attr), dtype=np.float32)
    present = np.zeros(len(vocab) + 1, dtype=bool)
    for item, attrs in raw.items():
        i = vocab.index.get(str(item))
        if i and attrs:
            vec[i, attrs] = 1.0
            present[i] = True
    return ContentTable(vectors={"meta": torch.from_numpy(vec)}, present={"meta": torch.from_numpy(present)})


def read_standard(path: Path) -> Sequences:
    """A standard sequential benchmark file, as a Sequences with item *names* resolved later.

    Accepts ``user item item ...`` per line (Beauty, ML-1M as SASRec/S3-Rec ship them) or
    ``user item`` per line in time order. Items are 1-indexed ids; positions stand in for time.
    """
    seqs: dict[str, list[str]] = {}
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) < 2:
                raise DataError(f"{path}:{n}: expected `user item ...`, got {line.strip()!r}")
            seqs.setdefault(parts[0], []).extend(parts[1:])
    users = list(seqs)
    return Sequences(users, [np.array(seqs[u], dtype=object) for u in users],
                     [np.full(len(seqs[u]), np.nan, dtype=np.float32) for u in users],
                     [np.arange(len(seqs[u]), dtype=np.int64) for u in users])


def load_standard(path: Path, tc: TrainConfig) -> Dataset:
    """Leave-one-out (or time) split of a standard benchmark file; vocabulary = every item."""
    raw = read_standard(path)
    vocab = Vocab(sorted({t for s in raw.items for t in s}, key=lambda t: (len(t), t)))
    items = [vocab.encode(list(s)) for s in raw.items]
    ds = split(Sequences(raw.users, items, raw.completion, raw.ts), vocab, tc)
    ds.info["source"] = str(path)
    return ds
