"""A deterministic, realistic music world in the exact LastFM-1K formats.

Planted structure (what a recommender should be able to find; docs/pipeline.md documents it):

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

``PRESETS["lastfm-1k"]`` is a world of LastFM-1K's shape: 992 users, ~19M listens over 2005-02-14 ..
2009-06-19 with uneven activity spans, ~1M distinct tracks of which about half are played once,
durations for 60% of the catalog, content for the 50,000 most popular tracks and 20% of users
with minute-precision timestamps.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

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
    # Share of users whose timestamps are truncated to the minute, as some exports are: several
    # plays of such a user can share a timestamp.
    minute_precision_share: float = 0.0
    # Lyrics, genes and audio only for this many tracks, the most popular by catalog weight (None:
    # all). A million-track catalog then costs neither 1M x 58 genes nor 1M clips; real catalogs
    # know content for the head, not the tail.
    content_top: int | None = None
    # This many catalog tracks (the last indices) are kept out of the popularity draws and each
    # played exactly once, by one "explore" listen: the long tail of one-off plays in LastFM-1K.
    singleton_tracks: int = 0
    # With span_days: windows may be shorter than ``days`` (a week to the whole span) and a user
    # keeps only the sessions of their last simulated days (up to their last active one) that fit
    # in the window's open days, so histories are as uneven in length as LastFM-1K's, not only in
    # spread. Without it every user's ``days`` simulated days are kept.
    truncate_to_window: bool = False
    # Draw weight = popularity ** this: below 1 flattens the head, so more of a large catalog gets
    # played more than once (LastFM-1K's ~1M tracks over 19M plays), at 1 the long-tailed default.
    popularity_exponent: float = 1.0

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
        if not 0.0 <= self.minute_precision_share <= 1.0:
            raise ValueError(f"minute_precision_share must be in [0, 1], got {self.minute_precision_share}")
        if self.content_top is not None and self.content_top < 0:
            raise ValueError(f"content_top must be >= 0, got {self.content_top}")
        if not 0 <= self.singleton_tracks <= self.tracks - 12:
            raise ValueError(f"singleton_tracks must be in [0, tracks - 12] (12 tracks left for the styles), "
                             f"got {self.singleton_tracks}")
        if not self.popularity_exponent > 0:
            raise ValueError(f"popularity_exponent must be > 0, got {self.popularity_exponent}")
        if self.truncate_to_window and self.span_days is None:
            raise ValueError("truncate_to_window needs span_days")


# LastFM-1K (Celma, 2010): 992 users, 19,150,868 listens from 2005-02-14 to 2009-06-19 (1,587
# days), ~1M distinct tracks, about half of them played once. Each user simulates every day of the
# span and keeps the part that fits their own window (truncate_to_window), so spans range from a
# day to the whole four years; the rate per simulated day is tuned to the real total (seed 0:
# 19.1M). The default popularity would leave most of a 650,000-track head unplayed (its Pareto
# artists concentrate plays more, the larger the catalog), so the exponent flattens it: ~87% of the
# head is played, ~14% of those once, and with the 430,000 singletons ~994,000 tracks are played,
# 51% once. Clips are 1 s at 8 kHz (16 KB each, 0.8 GB for 50,000) to bound the disk.
PRESETS: dict[str, dict[str, Any]] = {
    "lastfm-1k": {
        "users": 992, "days": 1587, "span_days": 1587, "end": date(2009, 6, 19), "truncate_to_window": True,
        "listens_per_user_day": 36.8, "tracks": 1_080_000, "singleton_tracks": 430_000, "popularity_exponent": 0.6,
        "content_top": 50_000, "clips": None, "clip_seconds": 1.0, "sample_rate": 8000,
        "drop_durations": 0.4, "minute_precision_share": 0.2,
    },
}
# Fields that scale with the world's size in preset_config; days, dates and shares do not.
_SCALED = ("users", "tracks", "singleton_tracks", "content_top", "clips")


def preset_config(name: str, scale: float = 1.0, **overrides: Any) -> WorldConfig:
    """The preset's config, users and catalog (tracks, singletons, content, clips) scaled by
    ``scale`` together, so a small world keeps the preset's listens per track and, roughly, its
    proportions (share played once 0.42-0.59 at scale 0.01 over seeds, 0.51 at full size: the
    head's popularity is less concentrated in a small catalog); ``overrides`` are applied last,
    unscaled."""
    try:
        fields = dict(PRESETS[name])
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}") from None
    if scale != 1.0:
        for k in _SCALED:
            if fields.get(k) is not None:
                fields[k] = max(1, round(fields[k] * scale))
        fields["tracks"] = max(fields["tracks"], fields.get("singleton_tracks", 0) + 12)
    return WorldConfig(**{**fields, **overrides})


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
    sizes: dict[str, int] = field(default_factory=dict)  # bytes on disk per part (listens, audio, ...)

    @property
    def bytes(self) -> int:
        return sum(self.sizes.values())


@dataclass
class _Catalog:
    artist_of: np.ndarray  # (T,) artist index
    style: np.ndarray  # (T,) style index
    pop: np.ndarray  # (T,) popularity weight
    duration: np.ndarray  # (T,) true duration, seconds
    by_style: list[np.ndarray]  # per style: track indices
    cdf_style: list[np.ndarray]  # per style: cumulative popularity over by_style
    cdf_all: np.ndarray  # cumulative popularity over the head
    head: int  # tracks [0, head) are drawn by popularity; [head, T) are the singletons


_DEFAULT = WorldConfig()


def _mbid(rng: np.random.Generator) -> str:
    # = str(uuid.UUID(bytes=rng.bytes(16), version=4)), same draws and bytes, without uuid's and
    # rng.bytes' per-call overhead (1M+ calls in a LastFM-1K world).
    b = bytearray(rng.integers(0, 1 << 32, size=4, dtype=np.uint32).astype("<u4").tobytes())
    b[6] = (b[6] & 0x0F) | 0x40  # version 4
    b[8] = (b[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


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
    H = T - cfg.singleton_tracks  # singletons are drawn like any track but kept out of the CDFs
    # Every style needs a track or a session could pick a style with nothing to play.
    for k in range(K):
        if not np.any(style[:H] == k):
            style[k] = k
    pop = artist_pop[artist_of] * rng.lognormal(0.0, 1.0, T)
    if cfg.popularity_exponent != 1.0:
        pop = pop**cfg.popularity_exponent
    dur_centre = np.array([s.duration_s for s in STYLES])[style]
    duration = np.clip(np.rint(dur_centre * rng.lognormal(0.0, 0.25, T)), 45, 1200)
    by_style = [np.flatnonzero(style[:H] == k) for k in range(K)]
    cdf_style = [np.cumsum(pop[ix]) / pop[ix].sum() for ix in by_style]
    cdf_all = np.cumsum(pop[:H]) / pop[:H].sum()
    pop[H:] = 0.0  # outside the popularity model (truth says so, and content_top ranks them last)
    cat = _Catalog(artist_of, style, pop, duration, by_style, cdf_style, cdf_all, H)

    scripts = rng.choice(len(names.SCRIPTS), size=A, p=names.SCRIPT_SHARE)
    artist_names = names.unique([names.artist_name(rng, names.SCRIPTS[s]) for s in scripts])
    artist_mbid = [_mbid(rng) if rng.random() > 0.05 else "" for _ in range(A)]
    titles: list[str] = []
    seen: set[tuple[int, str]] = set()
    artist_script = [names.SCRIPTS[s] for s in scripts.tolist()]
    style_words = [s.words for s in STYLES]
    for a, k in zip(artist_of.tolist(), style.tolist(), strict=True):
        title = names.track_title(rng, artist_script[a], style_words[k], COMMON_WORDS)
        n = 2
        base = title
        while (a, title) in seen:  # titles are unique per artist, so derived ids are unique
            title, n = f"{base} ({n})", n + 1
        seen.add((a, title))
        titles.append(title)
    track_mbid = [_mbid(rng) if rng.random() > 0.12 else "" for _ in range(T)]
    meta = {"artist_names": artist_names, "artist_mbid": artist_mbid, "titles": titles, "track_mbid": track_mbid}
    return cat, meta


MIN_WINDOW_DAYS = 7  # truncate_to_window: the shortest activity window


def _day_map(cfg: WorldConfig, rng: np.random.Generator) -> np.ndarray:
    """(k,) strictly increasing calendar day (0 = the span's first) of each of the last k simulated
    days; k = days unless truncate_to_window cut the user's history to their window."""
    S, D = int(cfg.span_days or cfg.days), cfg.days
    # Uneven activity spans, as in LastFM-1K: a U-shaped share of the span (some users a few
    # weeks, some the whole history), never fewer days than there are simulated days unless
    # truncating (then the history is cut to the window instead).
    lo = min(S, MIN_WINDOW_DAYS) if cfg.truncate_to_window else min(S, 2 * D)
    length = int(np.clip(round(S * rng.beta(0.5, 0.5)), lo, S))
    first = int(rng.integers(0, S - length + 1))
    days = np.arange(first, first + length)
    quiet = rng.random(length // 7 + 1) < cfg.quiet_week_share
    open_days = days[~quiet[(days - first) // 7]]
    if cfg.truncate_to_window:
        pool = open_days if len(open_days) else days  # a window of only quiet weeks: play anyway
        return np.sort(rng.choice(pool, size=min(D, len(pool)), replace=False))
    pool = open_days if len(open_days) >= D else days
    return np.sort(rng.choice(pool, size=D, replace=False))


def _spread(cfg: WorldConfig, ts: np.ndarray, s_day: np.ndarray, day0: int, rng: np.random.Generator
            ) -> tuple[np.ndarray, np.ndarray | None]:
    """Move each session (``s_day``: its simulated start day, per listen) to its calendar day.
    Returns the moved timestamps and, when the window cut the history, the mask of kept listens
    (``ts`` then holds only those)."""
    span0 = day0 + (cfg.days - int(cfg.span_days or cfg.days)) * 86400  # the span ends where the days end
    cal = _day_map(cfg, rng)
    if len(cal) == cfg.days:
        return ts + (span0 - day0) + (cal[s_day] - s_day) * 86400, None
    # The window's k days hold the k simulated days up to the user's last active one (not the last
    # simulated day: that one may be idle, and a short window could then keep nothing at all).
    last = int(s_day.max()) if len(s_day) else cfg.days - 1
    cut = last + 1 - len(cal)  # simulated days before ``cut`` fall outside the window (may be < 0)
    keep = s_day >= cut  # whole sessions: a session belongs to the day it starts on
    sd = s_day[keep]
    moved = ts[keep] + (span0 - day0) + (cal[sd - cut] - sd) * 86400
    # A late session on the span's last day would run past ``end``: cut it there, as _simulate_user
    # cuts the last simulated day.
    inside = moved < day0 + cfg.days * 86400
    keep[np.flatnonzero(keep)[~inside]] = False
    return moved[inside], keep


class _UserListens(NamedTuple):
    """One user's listens in time order."""

    ts: np.ndarray  # (n,) seconds
    track: np.ndarray  # (n,) track index
    sessions: int
    taste_start: np.ndarray  # (K,) taste on the first simulated day
    taste_end: np.ndarray  # (K,) and on the last
    s_day: np.ndarray  # (n,) simulated start day of each listen's session
    sess: np.ndarray  # (n,) session index of each listen
    explore: np.ndarray  # (n,) bool: drawn by global popularity (singletons replace some of these)


def _simulate_user(cfg: WorldConfig, cat: _Catalog, rng: np.random.Generator, day0: int) -> _UserListens:
    """One user's listens over the ``days`` simulated days starting at ``day0``."""
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
        none = np.empty(0, np.int64)
        return _UserListens(none, none, 0, taste[0], taste[-1], none, none, np.empty(0, bool))
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
    np.minimum(track, cat.head - 1, out=track)
    rep_i = np.flatnonzero(repeat)
    rep_j = np.maximum(rep_i - rng.geometric(1 / 30, size=len(rep_i)), 0)
    # Sequentially, track[i] = track[j] with j < i already final; a repeat of a repeat thus plays
    # the first non-repeat on its chain. Pointer doubling finds that root for all at once (the
    # same result as the loop, without ~2M Python iterations in a LastFM-1K-sized world).
    src = np.arange(n)
    src[rep_i] = rep_j
    while True:
        nxt = src[src]
        if np.array_equal(nxt, src):
            break
        src = nxt
    track = track[src]

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
    return _UserListens(ts[keep], track[keep], S, taste[0], taste[-1], s_day[sess][keep], sess[keep],
                        explore[keep])


LISTENS_CHUNK = 2_000_000  # rows per write: the listens' strings (~3 GB for LastFM-1K) never all in memory


@lru_cache(maxsize=1)
def _times_of_day() -> pa.Array:
    """``HH:MM:SSZ`` for each second of a day."""
    s = range(86400)
    return pa.array([f"{x // 3600:02d}:{x // 60 % 60:02d}:{x % 60:02d}Z" for x in s])


def _iso_seconds(ts: np.ndarray) -> pa.Array:
    """``%Y-%m-%dT%H:%M:%SZ`` of epoch seconds, as pc.strftime writes them but ~4x faster: a day
    prefix and a time-of-day suffix looked up in tables and joined (pc.strftime costs ~1.5 us a row,
    half a minute for LastFM-1K's 19M)."""
    day = ts // 86400
    d0 = int(day.min())
    days = pc.strftime(pa.array(np.arange(d0, int(day.max()) + 1) * 86400, pa.timestamp("s", tz="UTC")),
                       format="%Y-%m-%dT")
    return pc.binary_join_element_wise(days.take(pa.array(day - d0)), _times_of_day().take(pa.array(ts - day * 86400)),
                                       "")


def _write_listens(path: Path, user_ids: list[str], uix: np.ndarray, ts: np.ndarray, track: np.ndarray,
                   cat: _Catalog, meta: dict) -> None:
    users, art_ids = pa.array(user_ids), pa.array(meta["artist_mbid"])
    art_names, tra_ids, titles = pa.array(meta["artist_names"]), pa.array(meta["track_mbid"]), pa.array(meta["titles"])
    schema = pa.schema([(c, pa.string()) for c in ("userid", "timestamp", "artid", "artname", "traid", "traname")])
    opts = pacsv.WriteOptions(include_header=False, delimiter="\t", quoting_style="none")
    with pacsv.CSVWriter(path, schema, write_options=opts) as w:  # the same bytes as one write_csv
        for a in range(0, len(ts), LISTENS_CHUNK):
            b = slice(a, a + LISTENS_CHUNK)
            tr = pa.array(track[b])
            art = pa.array(cat.artist_of[track[b]])
            w.write_table(pa.table({
                "userid": users.take(pa.array(uix[b])),
                "timestamp": _iso_seconds(ts[b]),
                "artid": art_ids.take(art), "artname": art_names.take(art),
                "traid": tra_ids.take(tr), "traname": titles.take(tr),
            }, schema=schema))


def _content_tracks(cfg: WorldConfig, cat: _Catalog) -> np.ndarray:
    """Ascending indices of the tracks that get lyrics, genes and audio: all, or the content_top
    most popular (ties by index; the singletons, of weight 0, come last)."""
    T = len(cat.pop)
    if cfg.content_top is None or cfg.content_top >= T:
        return np.arange(T)
    return np.sort(np.argsort(-cat.pop, kind="stable")[:cfg.content_top])


def _track_content(cfg: WorldConfig, cat: _Catalog, idx: np.ndarray, rng: np.random.Generator
                   ) -> tuple[np.ndarray, list[ClipParams]]:
    """Genes ``(len(idx), 58)`` and clip parameters of the tracks ``idx`` only (a 1M x 58 float array
    for a catalog whose content is known for its head would be wasted memory and time)."""
    style = cat.style[idx]
    n = len(idx)
    st = [STYLES[k] for k in style]
    tempo = np.array([s.tempo_bpm for s in st]) * rng.lognormal(0, 0.07, n)
    major = rng.random(n) < np.array([s.major for s in st])
    genes = track_genes(gene_prototypes(np.random.default_rng(cfg.seed + 7)), style, tempo, major, rng)
    clip_params = []
    for t in range(n):
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


def _place_singletons(cfg: WorldConfig, cat: _Catalog, track: np.ndarray, explore: np.ndarray,
                      rng: np.random.Generator) -> None:
    """Give each singleton track (indices ``head..``) one listen, in place: a random explore listen
    across all users (any listen in a world too small to have enough)."""
    cand = np.flatnonzero(explore)
    if len(cand) < cfg.singleton_tracks:
        cand = np.arange(len(track))
    n = min(cfg.singleton_tracks, len(cand))
    if n < cfg.singleton_tracks:
        log.warning("only %d listens for %d singleton tracks: %d stay unplayed", n, cfg.singleton_tracks,
                    cfg.singleton_tracks - n)
    pick = rng.choice(cand, size=n, replace=False)
    new = cat.head + np.arange(n)
    # The play was timed (completion, gap to the next play) for the track it replaces: the singleton
    # takes that track's style and true duration, so its one listen agrees with its catalog entry.
    cat.style[new] = cat.style[track[pick]]
    cat.duration[new] = cat.duration[track[pick]]
    track[pick] = new


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


class _Listens(NamedTuple):
    """All users' listens in file order: by user, each user's newest first."""

    ts: np.ndarray  # (n,) seconds
    track: np.ndarray  # (n,) track index
    user: np.ndarray  # (n,) user index
    taste_start: list[np.ndarray]  # per user
    taste_end: list[np.ndarray]
    sessions: int


def _simulate_listens(cfg: WorldConfig, cat: _Catalog, seqs: list[np.random.SeedSequence], day0: int,
                      quiet: bool | None) -> _Listens:
    """Every user's listens, spread over their window, singletons placed (``cat`` takes their
    styles and durations). ``seqs``: the user, span, singleton and minute-precision streams."""
    user_seq, span_seq, single_seq, minute_seq = seqs
    minute_user = np.zeros(cfg.users, bool)
    if cfg.minute_precision_share > 0:
        n_minute = round(cfg.minute_precision_share * cfg.users)
        minute_user[np.random.default_rng(minute_seq).choice(cfg.users, size=n_minute, replace=False)] = True
    ts_parts, tr_parts, ux_parts, ex_parts = [], [], [], []
    tastes0, tastesN, sessions = [], [], 0
    # One independent stream per user: user i's listens do not depend on how many users there are.
    span_seqs = span_seq.spawn(cfg.users)
    for u, seq in enumerate(tqdm(user_seq.spawn(cfg.users), desc="users", unit="user", disable=quiet, mininterval=1.0)):
        ul = _simulate_user(cfg, cat, np.random.default_rng(seq), day0)
        ts, tr, ex, n_s = ul.ts, ul.track, ul.explore, ul.sessions
        if cfg.span_days is not None:
            ts, kept = _spread(cfg, ts, ul.s_day, day0, np.random.default_rng(span_seqs[u]))
            if kept is not None:  # truncated to the window: sessions with no listen left are gone
                n_s -= len(np.setdiff1d(ul.sess[~kept], ul.sess[kept]))
                tr, ex = tr[kept], ex[kept]
        if minute_user[u]:
            ts = ts - ts % 60
        # LastFM-1K lists each user's listens newest first.
        ts_parts.append(ts[::-1])
        tr_parts.append(tr[::-1])
        ex_parts.append(ex[::-1])
        ux_parts.append(np.full(len(ts), u, np.int64))
        tastes0.append(ul.taste_start)
        tastesN.append(ul.taste_end)
        sessions += n_s
    ts_all, tr_all, ux_all = (np.concatenate(p) for p in (ts_parts, tr_parts, ux_parts))
    ex_all = np.concatenate(ex_parts)
    del ts_parts, tr_parts, ux_parts, ex_parts
    if cfg.singleton_tracks:
        _place_singletons(cfg, cat, tr_all, ex_all, np.random.default_rng(single_seq))
    return _Listens(ts_all, tr_all, ux_all, tastes0, tastesN, sessions)


def generate_world(cfg: WorldConfig, out: Path, progress: bool | None = None) -> WorldStats:
    """Write the world into ``out`` and return what was written. Same config -> same bytes."""
    t0 = time.perf_counter()
    quiet = None if progress is None else not progress  # tqdm: None = bars only on a terminal
    out.mkdir(parents=True, exist_ok=True)
    root = np.random.SeedSequence(cfg.seed)
    # spawn(6): the first three children are those of spawn(3) and the fourth that of spawn(4), so
    # older worlds keep their bytes.
    cat_seq, user_seq, content_seq, span_seq, single_seq, minute_seq = root.spawn(6)
    cat_rng = np.random.default_rng(cat_seq)
    cat, meta = _build_catalog(cfg, cat_rng)
    T = cfg.tracks
    track_ids = [ids.track_id(meta["track_mbid"][t], meta["artist_names"][cat.artist_of[t]], meta["titles"][t])
                 for t in range(T)]

    start_day = cfg.end - timedelta(days=cfg.days - 1)
    day0 = int(datetime(start_day.year, start_day.month, start_day.day, tzinfo=UTC).timestamp())
    user_ids = [f"user_{i + 1:06d}" for i in range(cfg.users)]
    lis = _simulate_listens(cfg, cat, [user_seq, span_seq, single_seq, minute_seq], day0, quiet)
    ts_all, tr_all, ux_all, tastes0, tastesN, sessions = lis
    del lis
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
    idx = _content_tracks(cfg, cat)
    genes, clip_params = _track_content(cfg, cat, idx, content_rng)
    pos = np.full(T, -1, np.int64)  # track -> row in genes / clip_params, -1: no content
    pos[idx] = np.arange(len(idx))
    n_clips = len(idx) if cfg.clips is None else min(cfg.clips, len(idx))
    with_clip = np.zeros(T, bool)
    with_clip[idx[content_rng.choice(len(idx), size=n_clips, replace=False)]] = True
    # One draw per track whatever the share, so the content stream (lyrics, clips) is the same for
    # every setting, and a larger share drops a superset of the tracks a smaller one drops.
    unknown_duration = content_rng.random(T) < cfg.drop_durations  # the catalog does not know every length
    audio_dir = out / "audio"
    audio_bytes = 0
    dumps = json.JSONEncoder(ensure_ascii=False).encode  # = json.dumps(row, ensure_ascii=False), less overhead
    # Plain lists: a million rows of numpy scalar indexing would cost more than the JSON itself.
    pos_l, clip_l, unknown_l = pos.tolist(), with_clip.tolist(), unknown_duration.tolist()
    artist_l, style_l, duration_l = cat.artist_of.tolist(), cat.style.tolist(), cat.duration.tolist()
    with open(out / CATALOG_FILE, "w", encoding="utf-8", newline="\n") as fh:
        for t in tqdm(range(T), desc="tracks", unit="track", disable=quiet, mininterval=1.0):
            clip_rel = None
            p = pos_l[t]
            if clip_l[t]:
                clip_rel = f"audio/{track_ids[t]}.wav"
                wav = synthesize(clip_params[p], np.random.default_rng([cfg.seed, t]), cfg.clip_seconds,
                                 cfg.sample_rate)
                write_wav(out / clip_rel, wav, cfg.sample_rate)
                audio_bytes += (out / clip_rel).stat().st_size
            a = artist_l[t]
            row = {
                "track_id": track_ids[t], "traid": meta["track_mbid"][t], "artid": meta["artist_mbid"][a],
                "artist": meta["artist_names"][a], "title": meta["titles"][t],
                "duration_s": None if unknown_l[t] else duration_l[t],
                "lyrics": _lyrics(style_l[t], content_rng) if p >= 0 else None,
                "audio_path": clip_rel,
                "genes": {g: round(v, 4) for g, v in zip(GENES, genes[p].tolist(), strict=True)} if p >= 0 else None,
            }
            fh.write(dumps(row) + "\n")
    if not audio_dir.exists():
        audio_dir.mkdir()

    truth = out / "truth"
    truth.mkdir(exist_ok=True)
    tempo: list[float | None] = [None] * T  # unknown where the track has no content
    major: list[bool | None] = [None] * T
    for t, c in zip(idx.tolist(), clip_params, strict=True):
        tempo[t], major[t] = c.tempo_bpm, c.major
    pq.write_table(pa.table({
        "track_id": track_ids, "style": cat.style.astype(np.int32),
        "style_name": [STYLES[k].name for k in cat.style], "popularity": cat.pop,
        "duration_s": cat.duration, "has_clip": with_clip,
        "tempo_bpm": pa.array(tempo, pa.float64()), "major": pa.array(major, pa.bool_()),
    }), truth / "tracks.parquet")
    pq.write_table(pa.table({
        "user_id": user_ids,
        "taste_start": [t.astype(np.float32) for t in tastes0],
        "taste_end": [t.astype(np.float32) for t in tastesN],
        "listens": np.bincount(ux_all, minlength=cfg.users),
    }), truth / "users.parquet")

    cfg_json = {k: (v.isoformat() if isinstance(v, date) else v) for k, v in asdict(cfg).items()}
    # Options are listed only when set, so older worlds keep their bytes.
    if cfg.drop_durations == DEFAULT_DROP_DURATIONS:
        del cfg_json["drop_durations"]
    if cfg.span_days is None:
        del cfg_json["span_days"], cfg_json["quiet_week_share"]
    for name in ("minute_precision_share", "content_top", "singleton_tracks", "truncate_to_window",
                 "popularity_exponent"):
        if getattr(cfg, name) == getattr(_DEFAULT, name):
            del cfg_json[name]
    (out / "world.json").write_text(json.dumps({"config": cfg_json, "styles": [s.name for s in STYLES],
                                                "listens": len(ts_all), "sessions": sessions,
                                                "artists": len(meta["artist_names"]), "clips": n_clips},
                                               indent=2) + "\n")
    sizes = {"listens": listens_path.stat().st_size, "profiles": (out / PROFILES_FILE).stat().st_size,
             "catalog": (out / CATALOG_FILE).stat().st_size, "audio": audio_bytes,
             "truth": sum(f.stat().st_size for f in truth.glob("*.parquet")),
             "world.json": (out / "world.json").stat().st_size}
    return WorldStats(listens=len(ts_all), users=cfg.users, tracks=T, artists=len(meta["artist_names"]),
                      clips=n_clips, sessions=sessions, seconds=time.perf_counter() - t0,
                      files={"listens": str(listens_path), "profiles": str(out / PROFILES_FILE),
                             "catalog": str(out / CATALOG_FILE)}, sizes=sizes)
