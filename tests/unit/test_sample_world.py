"""The sample world: exact LastFM-1K formats, determinism, and the structure planted in it."""

from __future__ import annotations

import json
import re
import wave
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from encore.core import ids
from encore.core.schemas import GENES, PROFILE_HEADER
from encore.sample_world.generator import (
    CATALOG_FILE,
    LISTENS_FILE,
    PRESETS,
    PROFILES_FILE,
    WorldConfig,
    WorldStats,
    generate_world,
    preset_config,
)
from encore.sample_world.styles import STYLES
from tests.fixtures.files import digest

UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"
LINE = re.compile(rf"^user_\d{{6}}\t\d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\dZ\t({UUID})?\t[^\t\n]+\t({UUID})?\t[^\t\n]+$")


def _listens(world: Path) -> pd.DataFrame:
    df = pd.read_csv(world / LISTENS_FILE, sep="\t", header=None, quoting=3, keep_default_na=False,
                     names=["user", "ts", "artid", "artname", "traid", "traname"], dtype=str)
    df["t"] = pd.to_datetime(df["ts"], format="%Y-%m-%dT%H:%M:%SZ", utc=True).astype("int64") // 10**9
    return df


def _catalog(world: Path) -> pd.DataFrame:
    return pd.read_json(world / CATALOG_FILE, lines=True, dtype=False)



def test_listens_file_is_exact_lastfm_1k_format(small_world) -> None:
    world, stats = small_world
    raw = (world / LISTENS_FILE).read_bytes()
    assert raw.endswith(b"\n") and b"\r" not in raw
    lines = raw.decode("utf-8").split("\n")[:-1]
    assert len(lines) == stats.listens
    bad = [ln for ln in lines if not LINE.match(ln)]
    assert not bad, bad[:3]
    df = _listens(world)
    # Users in ascending order, each user's rows newest first.
    assert list(df["user"]) == sorted(df["user"])
    for _, g in df.groupby("user"):
        assert np.all(np.diff(g["t"].to_numpy()) <= 0)
    assert (df["traid"] == "").mean() > 0.03  # some MBIDs are empty, as in LastFM-1K
    assert (df["artid"] == "").any()
    assert any(not s.isascii() for s in df["artname"]) and any(not s.isascii() for s in df["traname"])


def test_profiles_file_is_lastfm_1k_profile_format(small_world) -> None:
    world, stats = small_world
    lines = (world / PROFILES_FILE).read_text(encoding="utf-8").splitlines()
    assert tuple(lines[0].split("\t")) == PROFILE_HEADER
    assert len(lines) == stats.users + 1
    for ln in lines[1:]:
        uid, gender, age, _country, registered = ln.split("\t")
        assert re.fullmatch(r"user_\d{6}", uid) and gender in ("m", "f", "")
        assert age == "" or 10 <= int(age) <= 99
        datetime.strptime(registered, "%b %d, %Y")


def test_catalog_has_ids_durations_lyrics_clips_and_58_genes(small_world) -> None:
    world, stats = small_world
    cat = _catalog(world)
    assert len(cat) == stats.tracks and cat["track_id"].is_unique
    for row in cat.itertuples():
        assert row.track_id == ids.track_id(row.traid, row.artist, row.title)  # same rule as ingest
        assert list(row.genes) == list(GENES)
        g = np.array(list(row.genes.values()))
        assert np.all((g >= 0) & (g <= 1)) and np.allclose(g * 5, np.rint(g * 5))  # 0-5 scale
    assert cat["duration_s"].isna().sum() >= 1 and (cat["duration_s"].dropna() > 0).all()
    assert cat["lyrics"].isna().any() and cat["lyrics"].notna().mean() > 0.5
    with_clip = cat["audio_path"].dropna()
    assert len(with_clip) == stats.clips == 60
    for rel in with_clip:
        with wave.open(str(world / rel)) as w:
            assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 11025)
            assert w.getnframes() == 3 * 11025


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path: Path) -> None:
    cfg = WorldConfig(users=5, tracks=120, days=6, seed=3, clips=4)
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    generate_world(cfg, a, progress=False)
    generate_world(cfg, b, progress=False)
    generate_world(WorldConfig(users=5, tracks=120, days=6, seed=4, clips=4), c, progress=False)
    assert digest(a) == digest(b)
    assert (a / LISTENS_FILE).read_bytes() != (c / LISTENS_FILE).read_bytes()


def test_drop_durations_blanks_a_share_of_catalog_lengths_and_truth_keeps_them_all(tmp_path: Path) -> None:
    base = WorldConfig(users=5, tracks=400, days=6, seed=3, clips=0)
    a, b = tmp_path / "default", tmp_path / "dropped"
    generate_world(base, a, progress=False)
    generate_world(WorldConfig(users=5, tracks=400, days=6, seed=3, clips=0, drop_durations=0.6), b, progress=False)
    ca, cb = _catalog(a).set_index("track_id"), _catalog(b).set_index("track_id")
    assert 0.5 < cb.duration_s.isna().mean() < 0.7
    # The same draw decides: the default's few missing lengths are among the dropped ones, every
    # other field is untouched, and so are the listens.
    assert set(ca.index[ca.duration_s.isna()]) <= set(cb.index[cb.duration_s.isna()])
    kept = cb.duration_s.notna()
    assert (cb.duration_s[kept] == ca.duration_s[kept]).all()
    assert cb.drop(columns="duration_s").equals(ca.drop(columns="duration_s"))
    assert (a / LISTENS_FILE).read_bytes() == (b / LISTENS_FILE).read_bytes()
    truth = pq.read_table(b / "truth" / "tracks.parquet").to_pandas().set_index("track_id")
    assert truth.duration_s.notna().all() and (truth.duration_s[kept.index[kept]] == cb.duration_s[kept]).all()
    # world.json names the setting only when it is not the default, so older worlds keep their bytes.
    assert "drop_durations" not in json.loads((a / "world.json").read_text())["config"]
    assert json.loads((b / "world.json").read_text())["config"]["drop_durations"] == 0.6
    with pytest.raises(ValueError, match="drop_durations"):
        WorldConfig(drop_durations=1.5)


@pytest.mark.parametrize(("clips", "expected"), [(0, 0), (7, 7), (None, 30)])
def test_clips_option_bounds_audio_on_disk(tmp_path: Path, clips: int | None, expected: int) -> None:
    stats = generate_world(WorldConfig(users=2, tracks=30, days=2, clips=clips), tmp_path, progress=False)
    assert stats.clips == expected
    assert len(list((tmp_path / "audio").glob("*.wav"))) == expected
    assert _catalog(tmp_path)["audio_path"].notna().sum() == expected


def test_listen_rate_is_calibrated_to_5m_per_1000_users_year(tmp_path: Path) -> None:
    # 1,000 users x 365 days must give about 5M listens: the per-user-day rate must be ~13.7.
    stats = generate_world(WorldConfig(users=60, tracks=3000, days=120, clips=0), tmp_path, progress=False)
    rate = stats.listens / (60 * 120)
    assert 12.0 < rate < 15.5, rate


# ----------------------------------------------------------------------------- planted structure
@pytest.fixture(scope="module")
def joined(small_world) -> pd.DataFrame:
    """Listens in time order per user, with truth style, gap to the next listen and taste fit."""
    world, _ = small_world
    df = _listens(world).sort_values(["user", "t"], kind="stable").reset_index(drop=True)
    tracks = pq.read_table(world / "truth" / "tracks.parquet").to_pandas()
    df["track_id"] = [ids.track_id(m, a, n) for m, a, n in zip(df["traid"], df["artname"], df["traname"], strict=True)]
    df = df.merge(tracks[["track_id", "style", "duration_s"]], on="track_id", how="left", validate="many_to_one")
    users = pq.read_table(world / "truth" / "users.parquet").to_pandas().set_index("user_id")
    taste = np.stack(users.loc[df["user"], "taste_start"].to_numpy())
    df["fit"] = taste[np.arange(len(df)), df["style"].to_numpy()] / taste.max(1)
    df["gap"] = df.groupby("user")["t"].shift(-1) - df["t"]
    df["same_session_next"] = df["gap"] < 30 * 60
    df["next_style"] = df.groupby("user")["style"].shift(-1)
    return df


def test_sessions_are_separated_by_more_than_30_minutes(joined: pd.DataFrame, small_world) -> None:
    gaps = joined["gap"].dropna()
    assert ((gaps >= 30 * 60) & (gaps < 31 * 60)).sum() == 0  # breaks clear the threshold
    sessions = (gaps >= 30 * 60).sum() + joined["user"].nunique()
    assert 0.8 * small_world[1].sessions <= sessions <= small_world[1].sessions
    # Sessions are of related tracks: the next track shares the style far more often inside one.
    inside = joined[joined["same_session_next"]]
    across = joined[joined["gap"] >= 30 * 60]
    assert (inside["style"] == inside["next_style"]).mean() > (across["style"] == across["next_style"]).mean() + 0.2


def test_popularity_is_long_tailed_and_repeats_happen(joined: pd.DataFrame) -> None:
    plays = joined["track_id"].value_counts().to_numpy()
    top = plays[: max(1, len(plays) // 10)].sum() / plays.sum()
    assert top > 0.4, top  # top 10% of tracks take a large share of plays
    assert (plays <= 2).mean() > 0.2  # and a long tail is rarely played
    repeated = joined.duplicated(["user", "track_id"]).mean()
    assert repeated > 0.1, repeated


def test_completion_carries_taste_signal(joined: pd.DataFrame) -> None:
    inside = joined[joined["same_session_next"]].copy()
    inside["ratio"] = np.minimum(1.0, inside["gap"] / inside["duration_s"])
    fits = inside[inside["fit"] > 0.6]["ratio"].mean()
    misfits = inside[inside["fit"] < 0.1]["ratio"].mean()
    assert fits > misfits + 0.2, (fits, misfits)
    assert (inside["ratio"] < 0.5).mean() > 0.02  # plays are cut short: the gap is shorter than the track


def test_tastes_drift_slowly(small_world) -> None:
    users = pq.read_table(small_world[0] / "truth" / "users.parquet").to_pandas()
    a, b = np.stack(users["taste_start"]), np.stack(users["taste_end"])
    moved = np.abs(a - b).sum(1)
    assert np.median(moved) > 0.05  # they drift ...
    same_top = (a.argmax(1) == b.argmax(1)).mean()
    assert same_top > 0.4  # ... slowly: most users keep their favourite style over four weeks


def test_content_follows_style(small_world) -> None:
    world, _ = small_world
    cat = _catalog(world).merge(pq.read_table(world / "truth" / "tracks.parquet").to_pandas()[["track_id", "style"]],
                                on="track_id")
    genes = np.stack([list(g.values()) for g in cat["genes"]])
    style = cat["style"].to_numpy()
    centroids = np.stack([genes[style == k].mean(0) for k in range(len(STYLES))])
    pred = np.argmin(((genes[:, None, :] - centroids[None]) ** 2).sum(-1), axis=1)
    assert (pred == style).mean() > 0.9  # genes identify the style
    own, other = [], []
    for lyr, k in zip(cat["lyrics"], style, strict=True):
        if isinstance(lyr, str):
            words = Counter(lyr.lower().split())
            own.append(sum(n for w, n in words.items() if w in STYLES[k].words))
            other.append(np.mean([sum(n for w, n in words.items() if w in s.words) for s in STYLES]))
    assert np.mean(own) > 3 * np.mean(other)  # lyrics use the style's vocabulary
    # Audio: brighter, grittier styles have a higher spectral centroid.
    centroid, bright = [], []
    for rel, k in zip(cat["audio_path"], style, strict=True):
        if isinstance(rel, str):
            with wave.open(str(world / rel)) as w:
                x = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(float)
            spec = np.abs(np.fft.rfft(x))
            freqs = np.fft.rfftfreq(len(x), 1 / 11025)
            centroid.append((spec * freqs).sum() / spec.sum())
            bright.append(STYLES[k].brightness + STYLES[k].distortion + STYLES[k].percussive)
    assert np.corrcoef(centroid, bright)[0, 1] > 0.5


def test_world_json_records_config_and_counts(small_world) -> None:
    world, stats = small_world
    meta = json.loads((world / "world.json").read_text())
    assert meta["listens"] == stats.listens and meta["config"]["seed"] == 7


# ----------------------------------------------------------------------------- options for LastFM-1K's shape
# Digests of worlds written before the options below existed: options left at their defaults must
# not change a byte (the numpy and standard library output these hash is stable; parquet and WAV
# bytes, which depend on pyarrow's writer and the platform's libm, are left out).
GOLDEN = {
    "plain": (WorldConfig(users=5, tracks=120, days=6, seed=3, clips=4), {
        LISTENS_FILE: "c83cfbad519243f566cffbe80f2d168b6b3b46c33c1b76471d2d0c4454705019",
        CATALOG_FILE: "f38f47e02082e7f6f51c2f79da3c1afd131a7a52373c7bef363ea94b0c593a5c",
        "world.json": "ae87fb3888fe2ad187c5527f2a3be5566e9be20abef3d16e7c025ca28ddbeaba"}),
    "spread": (WorldConfig(users=8, tracks=300, days=40, seed=4, clips=0, end=date(2026, 6, 30), span_days=900), {
        LISTENS_FILE: "3c6bf115485e856de8fa7a788debee8651cecc271b888dd770c249caa99eb059",
        CATALOG_FILE: "3b0c8791c631a59c69a5db5b74c8a5be75fc909f1ebab53f7c9538f47f389629",
        "world.json": "611a5b59cd12f661f2feb476c244ea0fbb6f94f46ccb1f74b4a0f954e56e6a10"}),
}
NEW_OPTIONS = ("minute_precision_share", "content_top", "singleton_tracks", "truncate_to_window", "popularity_exponent")


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_worlds_without_the_new_options_keep_their_bytes(tmp_path: Path, name: str) -> None:
    cfg, expected = GOLDEN[name]
    generate_world(cfg, tmp_path, progress=False)
    got = digest(tmp_path)
    assert {f: got[f] for f in expected} == expected
    assert not set(NEW_OPTIONS) & set(json.loads((tmp_path / "world.json").read_text())["config"])


def test_world_stats_count_every_byte_written(tmp_path: Path) -> None:
    stats = generate_world(WorldConfig(users=3, tracks=50, days=3, clips=5), tmp_path, progress=False)
    assert stats.bytes == sum(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file())
    assert stats.sizes["audio"] == sum(p.stat().st_size for p in (tmp_path / "audio").glob("*.wav"))


def test_minute_precision_share_truncates_that_share_of_users_to_whole_minutes(tmp_path: Path) -> None:
    base = dict(users=20, tracks=300, days=10, seed=3, clips=0)
    generate_world(WorldConfig(**base), tmp_path / "a", progress=False)
    generate_world(WorldConfig(**base, minute_precision_share=0.25), tmp_path / "b", progress=False)
    a, b = _listens(tmp_path / "a"), _listens(tmp_path / "b")
    on_minute = b.groupby("user")["ts"].agg(lambda s: s.str.endswith(":00Z").all())
    assert on_minute.sum() == 5  # 25% of 20 users, exactly
    # The same listens: those users' seconds floored to the minute, everyone else's untouched.
    assert len(a) == len(b) and (a.drop(columns=["ts", "t"]) == b.drop(columns=["ts", "t"])).all().all()
    minute = b["user"].isin(on_minute.index[on_minute]).to_numpy()
    assert (b["t"][minute] == a["t"][minute] // 60 * 60).all() and (b["t"][~minute] == a["t"][~minute]).all()
    assert json.loads((tmp_path / "b" / "world.json").read_text())["config"]["minute_precision_share"] == 0.25


def test_singleton_tracks_are_each_played_exactly_once(tmp_path: Path) -> None:
    stats = generate_world(WorldConfig(users=10, tracks=500, days=20, seed=5, clips=0, singleton_tracks=100), tmp_path,
                           progress=False)
    df = _listens(tmp_path)
    played = Counter(ids.track_id(m, a, n) for m, a, n in zip(df["traid"], df["artname"], df["traname"], strict=True))
    truth = pq.read_table(tmp_path / "truth" / "tracks.parquet").to_pandas()  # catalog order: singletons last
    singles = truth["track_id"][-100:]
    assert all(played[t] == 1 for t in singles)
    assert len(played) <= stats.tracks and (truth["popularity"][-100:] == 0).all()  # outside the popularity draws
    assert (truth["popularity"][:-100] > 0).all()
    with pytest.raises(ValueError, match="singleton_tracks"):
        WorldConfig(tracks=100, singleton_tracks=95)


def test_content_top_gives_lyrics_genes_and_clips_only_to_the_most_popular_tracks(tmp_path: Path) -> None:
    stats = generate_world(WorldConfig(users=3, tracks=400, days=3, seed=2, content_top=40), tmp_path, progress=False)
    truth = pq.read_table(tmp_path / "truth" / "tracks.parquet").to_pandas()
    cat = _catalog(tmp_path).merge(truth, on="track_id", suffixes=("", "_truth"))
    top = set(cat.nlargest(40, "popularity")["track_id"])
    assert set(cat["track_id"][cat["genes"].notna()]) == top
    assert set(cat["track_id"][cat["audio_path"].notna()]) == top and stats.clips == 40
    assert set(cat["track_id"][cat["lyrics"].notna()]) <= top and cat["lyrics"].notna().any()  # some are instrumental
    assert set(cat["track_id"][cat["tempo_bpm"].notna()]) == top  # truth has audio parameters only where there is audio
    assert len(list((tmp_path / "audio").glob("*.wav"))) == 40
    assert cat["duration_s"].notna().mean() > 0.95  # durations are not content: every track keeps its length
    # --clips still bounds the audio, now among the top tracks.
    few = generate_world(WorldConfig(users=3, tracks=400, days=3, seed=2, content_top=40, clips=7), tmp_path / "few",
                         progress=False)
    clipped = _catalog(tmp_path / "few")
    assert few.clips == 7 and set(clipped["track_id"][clipped["audio_path"].notna()]) <= top


def test_truncate_to_window_cuts_histories_to_uneven_windows(tmp_path: Path) -> None:
    base = dict(users=30, tracks=300, days=120, seed=1, clips=0, end=date(2009, 6, 19), span_days=720)
    generate_world(WorldConfig(**base), tmp_path / "spread", progress=False)
    generate_world(WorldConfig(**base, truncate_to_window=True), tmp_path / "cut", progress=False)
    full, cut = _listens(tmp_path / "spread"), _listens(tmp_path / "cut")
    first = int(datetime(2009, 6, 19, tzinfo=UTC).timestamp()) - 719 * 86400
    assert cut["t"].min() >= first and cut["t"].max() < first + 720 * 86400
    spans = cut.groupby("user")["t"].agg(lambda t: (t.max() - t.min()) / 86400)
    assert cut["user"].nunique() == 30 and spans.min() < 30 and spans.max() > 500  # weeks to years
    assert (full.groupby("user")["t"].agg(lambda t: (t.max() - t.min()) / 86400) > 120).all()  # without: never short
    assert len(cut) < 0.9 * len(full)
    # Each user keeps a run of their own sessions (the latest that fit): the same tracks, in order.
    for user, g in cut.groupby("user"):
        mine = "\n".join(g["traname"][::-1]) + "\n"
        assert mine in "\n".join(full["traname"][full["user"] == user][::-1]) + "\n"
    with pytest.raises(ValueError, match="span_days"):
        WorldConfig(truncate_to_window=True)


def test_lastfm_1k_preset_scaled_down_keeps_its_proportions(tmp_path: Path) -> None:
    cfg = preset_config("lastfm-1k", scale=0.01)
    assert (cfg.users, cfg.tracks, cfg.singleton_tracks, cfg.content_top) == (10, 10800, 4300, 500)
    stats = generate_world(cfg, tmp_path, progress=False)
    df = _listens(tmp_path)
    plays = df.groupby(["traid", "artname", "traname"]).size()
    assert 0.35 < (plays == 1).mean() < 0.65  # about half the played tracks are played once
    assert 0.8 * stats.tracks < len(plays) <= stats.tracks
    assert 8_000 < stats.listens / cfg.users < 40_000  # LastFM-1K: 19,150,868 / 992 = 19,305
    assert df["ts"].min() >= "2005-02-14" and df["ts"].max() < "2009-06-20"
    on_minute = df.groupby("user")["ts"].agg(lambda s: s.str.endswith(":00Z").all())
    assert on_minute.mean() == 0.2
    cat = _catalog(tmp_path)
    assert 0.55 < cat["duration_s"].notna().mean() < 0.65
    assert cat["genes"].notna().sum() == stats.clips == 500
    with wave.open(str(tmp_path / cat["audio_path"].dropna().iloc[0])) as w:
        assert (w.getframerate(), w.getnframes()) == (8000, 8000)  # 1 s at 8 kHz: 16 KB a clip
    assert json.loads((tmp_path / "world.json").read_text())["config"]["truncate_to_window"] is True


def test_preset_full_size_matches_lastfm_1k() -> None:
    cfg = preset_config("lastfm-1k")
    assert (cfg.users, cfg.span_days, cfg.end) == (992, 1587, date(2009, 6, 19))
    assert cfg.end - timedelta(days=cfg.span_days - 1) == date(2005, 2, 14)
    assert cfg.content_top == 50_000 and cfg.drop_durations == 0.4 and cfg.minute_precision_share == 0.2
    assert preset_config("lastfm-1k", seed=9).seed == 9
    with pytest.raises(ValueError, match="unknown preset"):
        preset_config("msd")


def test_cli_preset_takes_the_preset_and_only_the_options_typed(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from encore import cli as cli_mod
    from encore.sample_world import generator

    seen: list[WorldConfig] = []
    monkeypatch.setattr(generator, "generate_world", lambda cfg, out: seen.append(cfg) or WorldStats())
    res = CliRunner().invoke(cli_mod.cli, ["sample-data", "--preset", "lastfm-1k", "--out", str(tmp_path),
                                           "--seed", "4"])
    assert res.exit_code == 0, res.output
    assert seen == [preset_config("lastfm-1k", seed=4)]  # --end, --days ... defaults did not override the preset
    res = CliRunner().invoke(cli_mod.cli, ["sample-data", "--preset", "lastfm-1k", "--out", str(tmp_path),
                                           "--tracks", "100"])
    assert res.exit_code == 2 and "singleton_tracks" in res.output
    preset_opt = next(p for p in cli_mod.sample_data.params if p.name == "preset")
    assert list(preset_opt.type.choices) == list(PRESETS)
