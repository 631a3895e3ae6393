"""A deterministic, realistic music world in the exact LastFM-1K formats.

Planted structure (what a recommender should be able to find; README documents it):

* Styles (``styles.STYLES``) drive everything. Artists have a style; 85% of their tracks share it.
* Popularity is long-tailed: artist popularity is Pareto, track popularity lognormal around it.
* Each user has a taste over styles (Dirichlet, concentrated on a few) that drifts slowly: a
  daily Gaussian random walk of its logits.
* Listening comes in sessions separated by more than 30 minutes. A session picks one style from
  the day's taste; 75% of its listens come from that style, 13% repeat a recent track of the user,
  12% explore anything by global popularity.
* Completion depends on fit: the lower the track's style in the user's current taste, the more
  likely the play is cut short (20-60% of the track), so the gap to the next play is shorter
  than the track. Plays that fit run to the end.
* Lyrics, genes and audio are drawn from the track's style, so content helps on rare tracks.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from tqdm import tqdm

from encore.core import ids
from encore.core.schemas import GENES, PROFILE_HEADER
from encore.sample_world import names
from encore.sample_world.audio import ClipParams, synthesize, write_wav
from encore.sample_world.styles import COMMON_WORDS, STYLE_SHARE, STYLES, gene_prototypes, track_genes

log = logging.getLogger(__name__)

LISTENS_FILE = "userid-timestamp-artid-artname-traid-traname.tsv"
PROFILES_FILE = "userid-profile.tsv"
CATALOG_FILE = "catalog.jsonl"

# Planned listens per user per day. About 6% of planned listens are lost where a busy user's
# sessions, pushed apart by the 30-minute breaks, run past the world's last day; 14.5 planned gives
# ~13.7 kept, so 1,000 users x 365 days is ~5.0M listens (LastFM-1K averages ~12 per user-day).
LISTENS_PER_USER_DAY = 14.5
SESSION_GAP_S = 30 * 60  # the sessionization threshold the feature jobs use by default
DEFAULT_DROP_DURATIONS = 0.015  # share of catalog tracks without a duration, unless asked otherwise
P_EXPLORE, P_REPEAT = 0.12, 0.13
COUNTRIES = ("United States", "United Kingdom", "Germany", "Japan", "Brazil", "Russian Federation",
             "Poland", "Sweden", "Finland", "Spain", "Mexico", "Canada", "France", "Korea, Republic of",
             "Greece", "China", "")


@dataclass(frozen=True)
class WorldConfig:
    users: int = 50
    tracks: int = 2000
    days: int = 60
    seed: int = 0
    end: date = date(2009, 5, 4)  # last simulated day (inclusive), as in LastFM-1K
    clips: int | None = None  # audio clips for this many tracks; None = all, 0 = none
    clip_seconds: float = 3.0
    sample_rate: int = 11025  # modest: enough for timbre and tempo up to ~5 kHz
    listens_per_user_day: float = LISTENS_PER_USER_DAY
    # Share of tracks whose catalog entry has no duration (truth/tracks.parquet keeps every one).
    # 1.5% is the catalog's usual gaps; real Last.fm logs have none at all, so a world for the
    # duration estimator (jobs/features.py) drops most of them.
    drop_durations: float = DEFAULT_DROP_DURATIONS
    # Spread the same listens over this many calendar days ending at ``end`` (None: ``days``).
    # Each user's ``days`` simulated days land, in order, on days of their own window of the span:
    # windows of uneven length (weeks to the whole span), with quiet weeks in which they play
    # nothing. Sessions stay whole; only the days between them grow. A long-history world with the
    # rows of a short one, for the lake's cost per row (bench/longspan.py).
    span_days: int | None = None
    quiet_week_share: float = 0.3  # with span_days: share of a user's weeks without a play

    def __post_init__(self) -> None:
        for name in ("users", "tracks", "days"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.tracks < 12:
            raise ValueError("tracks must be >= 12 (at least one per style)")
        if self.clips is not None and self.clips < 0:
            raise ValueError(f"clips must be >= 0, got {self.clips}")
        if not 0.0 <= self.drop_durations <= 1.0:
            raise ValueError(f"drop_durations must be in [0, 1], got {self.drop_durations}")
        if self.span_days is not None and self.span_days < self.days:
            raise ValueError(f"span_days ({self.span_days}) must be >= days ({self.days})")
        if not 0.0 <= self.quiet_week_share < 1.0:
            raise ValueError(f"quiet_week_share must be in [0, 1), got {self.quiet_week_share}")


@dataclass
class WorldStats:
    listens: int = 0
    users: int = 0
    tracks: int = 0
    artists: int = 0
    clips: int = 0
    sessions: int = 0
    seconds: float = 0.0
    files: dict[str, str] = field(default_factory=dict)


@dataclass
class _Catalog:
    artist_of: np.ndarray  # (T,) artist index
    style: np.ndarray  # (T,) style index
    pop: np.ndarray  # (T,) popularity weight
    duration: np.ndarray  # (T,) true duration, seconds
    by_style: list[np.ndarray]  # per style: track indices
    cdf_style: list[np.ndarray]  # per style: cumulative popularity over by_style
    cdf_all: np.ndarray  # cumulative popularity over all tracks


def _mbid(rng: np.random.Generator) -> str:
    return str(uuid.UUID(bytes=rng.bytes(16), version=4))


def _build_catalog(cfg: WorldConfig, rng: np.random.Generator) -> tuple[_Catalog, dict]:
    K, T = len(STYLES), cfg.tracks
    A = max(8, T // 8)
    artist_style = rng.choice(K, size=A, p=STYLE_SHARE / STYLE_SHARE.sum())
    artist_pop = rng.pareto(1.1, size=A) + 1.0
    # Every artist gets one track, the rest go preferentially to popular artists.
    extra = rng.choice(A, size=T - A, p=artist_pop**0.5 / np.sum(artist_pop**0.5)) if T > A else []
    artist_of = np.concatenate([np.arange(min(A, T)), extra]).astype(np.int64)
    rng.shuffle(artist_of)
    style = np.where(rng.random(T) < 0.85, artist_style[artist_of], rng.integers(0, K, T))
    # Every style needs a track or a session could pick a style with nothing to play.
    for k in range(K):
        if not np.any(style == k):
            style[k] = k
    pop = artist_pop[artist_of] * rng.lognormal(0.0, 1.0, T)
    dur_centre = np.array([s.duration_s for s in STYLES])[style]
    duration = np.clip(np.rint(dur_centre * rng.lognormal(0.0, 0.25, T)), 45, 1200)
    by_style = [np.flatnonzero(style == k) for k in range(K)]
    cdf_style = [np.cumsum(pop[ix]) / pop[ix].sum() for ix in by_style]
    cat = _Catalog(artist_of, style, pop, duration, by_style, cdf_style, np.cumsum(pop) / pop.sum())

    scripts = rng.choice(len(names.SCRIPTS), size=A, p=names.SCRIPT_SHARE)
    artist_names = names.unique([names.artist_name(rng, names.SCRIPTS[s]) for s in scripts])
    artist_mbid = [_mbid(rng) if rng.random() > 0.05 else "" for _ in range(A)]
    titles: list[str] = []
    seen: set[tuple[int, str]] = set()
    for t in range(T):
        a = int(artist_of[t])
        title = names.track_title(rng, names.SCRIPTS[scripts[a]], STYLES[style[t]].words, COMMON_WORDS)
        n = 2
        base = title
        while (a, title) in seen:  # titles are unique per artist, so derived ids are unique
            title, n = f"{base} ({n})", n + 1
        seen.add((a, title))
        titles.append(title)
    track_mbid = [_mbid(rng) if rng.random() > 0.12 else "" for _ in range(T)]
    meta = {"artist_names": artist_names, "artist_mbid": artist_mbid, "titles": titles, "track_mbid": track_mbid}
    return cat, meta


def _day_map(cfg: WorldConfig, rng: np.random.Generator) -> np.ndarray:
    """(days,) strictly increasing calendar day (0 = the span's first) of each simulated day."""
    S, D = int(cfg.span_days or cfg.days), cfg.days
    # Uneven activity spans, as in LastFM-1K: a U-shaped share of the span (some users a few
    # weeks, some the whole history), never fewer days than there are simulated days.
    length = int(np.clip(round(S * rng.beta(0.5, 0.5)), min(S, 2 * D), S))
    first = int(rng.integers(0, S - length + 1))
    days = np.arange(first, first + length)
    quiet = rng.random(length // 7 + 1) < cfg.quiet_week_share
    open_days = days[~quiet[(days - first) // 7]]
    pool = open_days if len(open_days) >= D else days
    return np.sort(rng.choice(pool, size=D, replace=False))


def _spread(cfg: WorldConfig, ts: np.ndarray, s_day: np.ndarray, day0: int, rng: np.random.Generator
            ) -> np.ndarray:
    """Move each session (``s_day``: its simulated start day, per listen) to its calendar day."""
    span0 = day0 + (cfg.days - int(cfg.span_days or cfg.days)) * 86400  # the span ends where the days end
    cal = _day_map(cfg, rng)
    return ts + (span0 - day0) + (cal[s_day] - s_day) * 86400


def _simulate_user(cfg: WorldConfig, cat: _Catalog, rng: np.random.Generator, day0: int
                   ) -> tuple[np.ndarray, np.ndarray, int, np.ndarray, np.ndarray, np.ndarray]:
    """One user's listens in time order: ``(ts seconds (n,), track (n,), sessions, taste0, tasteN,
    simulated start day of each listen's session (n,))``."""
    K, D = len(STYLES), cfg.days
    logits = np.log(rng.dirichlet(np.full(K, 0.3)) + 1e-4)
    logits = logits + np.cumsum(rng.normal(0.0, 0.07, size=(D, K)), axis=0)  # slow daily drift
    taste = np.exp(logits - logits.max(1, keepdims=True))
    taste /= taste.sum(1, keepdims=True)  # (D, K)

    p_active = rng.beta(3, 2)
    lam = rng.gamma(2.0, 0.4)
    activity = rng.lognormal(-0.125, 0.5)  # mean 1: users differ in how much they listen
    mean_len = np.clip(cfg.listens_per_user_day * activity / (p_active * (1 + lam)), 1.0, 80.0)

    active_days = np.flatnonzero(rng.random(D) < p_active)
    n_sess = 1 + rng.poisson(lam, size=len(active_days))
    s_day = np.repeat(active_days, n_sess)
    S = len(s_day)
    if S == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64), 0, taste[0], taste[-1], np.empty(0, np.int64)
    hour = rng.uniform(9, 21)
    nominal = s_day * 86400 + np.clip(rng.normal(hour, 3.5, S), 0, 23.95) * 3600
    order = np.argsort(nominal, kind="stable")
    s_day, nominal = s_day[order], nominal[order]
    s_len = np.minimum(rng.geometric(1.0 / mean_len, size=S), 200)
    cdf = np.cumsum(taste[s_day], axis=1)
    s_style = np.minimum((rng.random(S)[:, None] > cdf).sum(1), K - 1)

    n = int(s_len.sum())
    sess = np.repeat(np.arange(S), s_len)
    kind = rng.random(n)
    track = np.empty(n, np.int64)
    explore = kind < P_EXPLORE
    repeat = (kind >= P_EXPLORE) & (kind < P_EXPLORE + P_REPEAT)
    repeat[0] = False
    in_style = ~explore & ~repeat
    track[explore] = np.searchsorted(cat.cdf_all, rng.random(int(explore.sum())), side="right")
    l_style = s_style[sess]
    for k in range(K):
        m = in_style & (l_style == k)
        picks = np.searchsorted(cat.cdf_style[k], rng.random(int(m.sum())), side="right")
        track[m] = cat.by_style[k][np.minimum(picks, len(cat.by_style[k]) - 1)]
    np.minimum(track, len(cat.pop) - 1, out=track)
    rep_i = np.flatnonzero(repeat)
    rep_j = np.maximum(rep_i - rng.geometric(1 / 30, size=len(rep_i)), 0)
    for i, j in zip(rep_i.tolist(), rep_j.tolist(), strict=True):  # j < i: already final
        track[i] = track[j]

    l_day = s_day[sess]
    t_taste = taste[l_day]  # (n, K)
    fit = t_taste[np.arange(n), cat.style[track]] / t_taste.max(1)
    liked = rng.random(n) < 0.05 + 0.9 * np.sqrt(fit)
    completion = np.where(liked, np.where(rng.random(n) < 0.8, 1.0, rng.uniform(0.75, 1.0, n)),
                          rng.uniform(0.2, 0.6, n))
    pause = np.where(liked, rng.exponential(4.0, n), 0.5)
    gaps = cat.duration[track] * completion + pause  # time until the next play starts
    cs = np.cumsum(gaps)
    first = np.concatenate([[0], np.cumsum(s_len)[:-1]])
    offset = (cs - gaps) - (cs[first] - gaps[first])[sess]
    span = np.add.reduceat(gaps, first)
    # Push sessions apart so every break exceeds the 30-minute threshold:
    # start'_i = max(nominal_i, start'_{i-1} + span_{i-1} + gap_{i-1}) in closed form.
    brk = SESSION_GAP_S + 60 + rng.exponential(1200.0, S)
    before = np.concatenate([[0.0], np.cumsum(span + brk)[:-1]])
    start = before + np.maximum.accumulate(nominal - before)
    ts = (day0 + start[sess] + offset).astype(np.int64)
    keep = ts < day0 + D * 86400
    return ts[keep], track[keep], S, taste[0], taste[-1], s_day[sess][keep]


def _write_listens(path: Path, user_ids: list[str], uix: np.ndarray, ts: np.ndarray, track: np.ndarray,
                   cat: _Catalog, meta: dict) -> None:
    art = cat.artist_of[track]
    table = pa.table({
        "userid": pa.array(user_ids).take(pa.array(uix)),
        "timestamp": pc.strftime(pa.array(ts, pa.timestamp("s", tz="UTC")), format="%Y-%m-%dT%H:%M:%SZ"),
        "artid": pa.array(meta["artist_mbid"]).take(pa.array(art)),
        "artname": pa.array(meta["artist_names"]).take(pa.array(art)),
        "traid": pa.array(meta["track_mbid"]).take(pa.array(track)),
        "traname": pa.array(meta["titles"]).take(pa.array(track)),
    })
    opts = pacsv.WriteOptions(include_header=False, delimiter="\t", quoting_style="none")
    pacsv.write_csv(table, path, opts)


def _track_content(cfg: WorldConfig, cat: _Catalog, rng: np.random.Generator) -> tuple[np.ndarray, list]:
    T = len(cat.style)
    st = [STYLES[k] for k in cat.style]
    tempo = np.array([s.tempo_bpm for s in st]) * rng.lognormal(0, 0.07, T)
    major = rng.random(T) < np.array([s.major for s in st])
    genes = track_genes(gene_prototypes(np.random.default_rng(cfg.seed + 7)), cat.style, tempo, major, rng)
    clip_params = []
    for t in range(T):
        s = st[t]
        jit = rng.normal(0, 0.07, 4)
        clip_params.append(ClipParams(
            tempo_bpm=float(tempo[t]), root_midi=int(rng.integers(45, 57)), major=bool(major[t]),
            brightness=float(np.clip(s.brightness + jit[0], 0, 1)),
            percussive=float(np.clip(s.percussive + jit[1], 0, 1)),
            distortion=float(np.clip(s.distortion + jit[2], 0, 1)),
            synthetic=float(np.clip(s.synthetic + jit[3], 0, 1)),
        ))
    return genes, clip_params


def _lyrics(style_idx: int, rng: np.random.Generator) -> str | None:
    s = STYLES[style_idx]
    if rng.random() < s.instrumental:
        return None
    lines = []
    for _ in range(int(rng.integers(4, 9))):
        words = [s.words[rng.integers(len(s.words))] if rng.random() < 0.55 else
                 COMMON_WORDS[rng.integers(len(COMMON_WORDS))] for _ in range(int(rng.integers(4, 9)))]
        lines.append(" ".join(words).capitalize())
    return "\n".join(lines)


def generate_world(cfg: WorldConfig, out: Path, progress: bool | None = None) -> WorldStats:
    """Write the world into ``out`` and return what was written. Same config -> same bytes."""
    t0 = time.perf_counter()
    quiet = None if progress is None else not progress  # tqdm: None = bars only on a terminal
    out.mkdir(parents=True, exist_ok=True)
    root = np.random.SeedSequence(cfg.seed)
    # spawn(4): the first three children are those of spawn(3), so older worlds keep their bytes.
    cat_seq, user_seq, content_seq, span_seq = root.spawn(4)
    cat_rng = np.random.default_rng(cat_seq)
    cat, meta = _build_catalog(cfg, cat_rng)
    T = cfg.tracks
    track_ids = [ids.track_id(meta["track_mbid"][t], meta["artist_names"][cat.artist_of[t]], meta["titles"][t])
                 for t in range(T)]

    start_day = cfg.end - timedelta(days=cfg.days - 1)
    day0 = int(datetime(start_day.year, start_day.month, start_day.day, tzinfo=UTC).timestamp())
    user_ids = [f"user_{i + 1:06d}" for i in range(cfg.users)]
    ts_parts, tr_parts, ux_parts = [], [], []
    tastes0, tastesN, sessions = [], [], 0
    # One independent stream per user: user i's listens do not depend on how many users there are.
    span_seqs = span_seq.spawn(cfg.users)
    for u, seq in enumerate(tqdm(user_seq.spawn(cfg.users), desc="users", unit="user", disable=quiet, mininterval=1.0)):
        ts, tr, n_s, ta0, taN, sd = _simulate_user(cfg, cat, np.random.default_rng(seq), day0)
        if cfg.span_days is not None:
            ts = _spread(cfg, ts, sd, day0, np.random.default_rng(span_seqs[u]))
        # LastFM-1K lists each user's listens newest first.
        ts_parts.append(ts[::-1])
        tr_parts.append(tr[::-1])
        ux_parts.append(np.full(len(ts), u, np.int64))
        tastes0.append(ta0)
        tastesN.append(taN)
        sessions += n_s
    ts_all, tr_all, ux_all = (np.concatenate(p) for p in (ts_parts, tr_parts, ux_parts))
    listens_path = out / LISTENS_FILE
    _write_listens(listens_path, user_ids, ux_all, ts_all, tr_all, cat, meta)
    log.info("wrote %d listens for %d users", len(ts_all), cfg.users)

    prof_rng = np.random.default_rng(cfg.seed + 1)
    with open(out / PROFILES_FILE, "w", encoding="utf-8", newline="\n") as fh:
        fh.write("\t".join(PROFILE_HEADER) + "\n")
        for uid in user_ids:
            gender = ("m", "f", "")[int(prof_rng.choice(3, p=[0.5, 0.35, 0.15]))]
            age = "" if prof_rng.random() < 0.3 else str(int(prof_rng.integers(16, 60)))
            country = COUNTRIES[int(prof_rng.integers(len(COUNTRIES)))]
            reg = date(2002, 1, 1) + timedelta(days=int(prof_rng.integers(0, 2500)))
            fh.write(f"{uid}\t{gender}\t{age}\t{country}\t{reg:%b} {reg.day}, {reg.year}\n")

    content_rng = np.random.default_rng(content_seq)
    genes, clip_params = _track_content(cfg, cat, content_rng)
    n_clips = T if cfg.clips is None else min(cfg.clips, T)
    with_clip = np.zeros(T, bool)
    with_clip[content_rng.choice(T, size=n_clips, replace=False)] = True
    # One draw per track whatever the share, so the content stream (lyrics, clips) is the same for
    # every setting, and a larger share drops a superset of the tracks a smaller one drops.
    unknown_duration = content_rng.random(T) < cfg.drop_durations  # the catalog does not know every length
    audio_dir = out / "audio"
    with open(out / CATALOG_FILE, "w", encoding="utf-8", newline="\n") as fh:
        for t in tqdm(range(T), desc="tracks", unit="track", disable=quiet, mininterval=1.0):
            clip_rel = None
            if with_clip[t]:
                clip_rel = f"audio/{track_ids[t]}.wav"
                wav = synthesize(clip_params[t], np.random.default_rng([cfg.seed, t]), cfg.clip_seconds,
                                 cfg.sample_rate)
                write_wav(out / clip_rel, wav, cfg.sample_rate)
            a = int(cat.artist_of[t])
            row = {
                "track_id": track_ids[t], "traid": meta["track_mbid"][t], "artid": meta["artist_mbid"][a],
                "artist": meta["artist_names"][a], "title": meta["titles"][t],
                "duration_s": None if unknown_duration[t] else float(cat.duration[t]),
                "lyrics": _lyrics(int(cat.style[t]), content_rng),
                "audio_path": clip_rel,
                "genes": {g: round(float(v), 4) for g, v in zip(GENES, genes[t], strict=True)},
            }
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    if not audio_dir.exists():
        audio_dir.mkdir()

    truth = out / "truth"
    truth.mkdir(exist_ok=True)
    pq.write_table(pa.table({
        "track_id": track_ids, "style": cat.style.astype(np.int32),
        "style_name": [STYLES[k].name for k in cat.style], "popularity": cat.pop,
        "duration_s": cat.duration, "has_clip": with_clip,
        "tempo_bpm": [c.tempo_bpm for c in clip_params], "major": [c.major for c in clip_params],
    }), truth / "tracks.parquet")
    pq.write_table(pa.table({
        "user_id": user_ids,
        "taste_start": [t.astype(np.float32) for t in tastes0],
        "taste_end": [t.astype(np.float32) for t in tastesN],
        "listens": np.bincount(ux_all, minlength=cfg.users),
    }), truth / "users.parquet")

    stats = WorldStats(listens=len(ts_all), users=cfg.users, tracks=T, artists=len(meta["artist_names"]),
                       clips=n_clips, sessions=sessions, seconds=time.perf_counter() - t0,
                       files={"listens": str(listens_path), "profiles": str(out / PROFILES_FILE),
                              "catalog": str(out / CATALOG_FILE)})
    cfg_json = {k: (v.isoformat() if isinstance(v, date) else v) for k, v in asdict(cfg).items()}
    if cfg.drop_durations == DEFAULT_DROP_DURATIONS:
        del cfg_json["drop_durations"]  # listed only when set: older worlds keep their bytes
    if cfg.span_days is None:
        del cfg_json["span_days"], cfg_json["quiet_week_share"]
    (out / "world.json").write_text(json.dumps({"config": cfg_json, "styles": [s.name for s in STYLES],
                                                "listens": stats.listens, "sessions": sessions,
                                                "artists": stats.artists, "clips": n_clips}, indent=2) + "\n")
    return stats
