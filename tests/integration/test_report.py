"""The nightly report over two nights of a small world, where yesterday-vs-today is known by construction.

Night 1 (D1 = 2009-05-04, the world's last day) runs the whole nightly with an empty inbox and
scores every user with the SASRec champion. From its published lists, night 2's inbox is written:
listens on D2 = D1 + 1 (after night 1's feature snapshot, D2 00:00) of chosen tracks of those lists,
plus one late listen before the snapshot and one after night 2's snapshot (neither may count).

    user A (model)     its rank-1 and rank-5 tracks + 2 tracks not in its top 10 -> hit, recall 2/4
    user B (model)     3 tracks not in its top 10 (one of them popular)           -> miss, recall 0
    user C (model)     its rank-10 track, twice                                    -> hit, recall 1/1
    NEW_USER (fallback) its rank-2 fallback track + 1 other                        -> hit, recall 1/2
    user_tonight       a new user (no list yesterday)                              -> not evaluated

So the model lists score hit rate 2/3 and mean recall@10 (1/2 + 0 + 1) / 3 = 1/2, the fallback 1 and 1/2.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from datetime import date
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.dataset as pads
import pytest

from encore.core import lake
from encore.core.config import EmbedConfig, EncoreConfig
from encore.core.workspace import Workspace
from tests.conftest import NEW_USER, copy_home

pytestmark = pytest.mark.slow

D1, D2 = date(2009, 5, 4), date(2009, 5, 5)
K = 10
SECTIONS = ["At a glance", "Steps", "Night over night", "Champion", "Tonight's lists",
            "Yesterday's lists against today's listens", "Example users", "Feature freshness",
            "Quarantine (lake totals)", "Figures"]


def _raw_line(user: str, ts: str, track: dict[str, Any]) -> str:
    # The ids ingest derives from these fields are the track's own (MBID, else artist + title).
    return "\t".join([user, ts, track["artist_mbid"] or "", track["artist_name"], track["track_mbid"] or "",
                      track["track_name"]])


def _heard_tracks(cfg: EncoreConfig) -> dict[str, dict[str, Any]]:
    """Every track the lake has a listen of, with the raw fields that reproduce its id."""
    files = [str(f) for f in lake.files(Workspace.at(cfg.home).listens)]
    t = pads.dataset(files, format="parquet").to_table(
        columns=["track_id", "track_mbid", "artist_mbid", "artist_name", "track_name"]).to_pandas()
    return {r["track_id"]: r for r in t.drop_duplicates("track_id").to_dict("records")}


@pytest.fixture(scope="module")
def two_nights(champion_home: EncoreConfig, tmp_path_factory: pytest.TempPathFactory, ray_local) -> dict[str, Any]:
    from encore.nightly.pipeline import nightly
    from feature_repo import store
    from scoring.batch import popular_tracks, read_recommendations

    tmp = tmp_path_factory.mktemp("report")
    cfg = copy_home(champion_home, tmp / "home")
    inbox = tmp / "inbox"
    inbox.mkdir()
    cfg = cfg.model_copy(update={"embed": EmbedConfig(metadata="genes"),  # as the world was embedded
                                 "nightly": cfg.nightly.model_copy(update={"inbox": inbox})})
    store.apply(cfg)  # a copied workspace: its registry still names the original tables
    first = nightly(cfg, D1)

    recs1 = read_recommendations(cfg, D1)
    lists = {u: list(g.sort_values("rank")["track_id"][:K]) for u, g in recs1.groupby("user_id")}
    fallback = recs1.groupby("user_id")["fallback"].any()
    assert fallback[NEW_USER], "the world's new user should be on the fallback at night 1"
    a, b, c = sorted(u for u in lists if not fallback[u])[:3]
    heard = _heard_tracks(cfg)
    pop1 = list(popular_tracks(Workspace.at(cfg.home), D1, K)["track_id"])

    def others(user: str, n: int) -> list[str]:
        # Tracks outside the user's top 10 and outside the popular 10: a sure miss for both.
        return [t for t in sorted(heard) if t not in lists[user] and t not in pop1][:n]

    popular_miss = next(t for t in pop1 if t not in lists[b])  # B hears a popular track its list lacks
    today = {  # user -> tracks heard on D2 (repeats included)
        a: [lists[a][0], lists[a][4], *others(a, 2)],
        b: [popular_miss, *others(b, 2)],
        c: [lists[c][9], lists[c][9]],
        NEW_USER: [lists[NEW_USER][1], *others(NEW_USER, 1)],
    }
    lines = [_raw_line(u, f"2009-05-05T{8 + i:02d}:{j * 5:02d}:00Z", heard[t])
             for i, (u, ts) in enumerate(today.items()) for j, t in enumerate(ts)]
    lines.append("user_tonight\t2009-05-05T21:00:00Z\t\tTonight Artist\t\tFirst Song")
    lines.append(_raw_line(b, "2009-05-04T23:30:00Z", heard[lists[b][0]]))  # late, before night 1's snapshot
    lines.append(_raw_line(b, "2009-05-06T01:00:00Z", heard[lists[b][1]]))  # after night 2's snapshot
    (inbox / "night-2.tsv").write_text("\n".join(lines) + "\n")
    second = nightly(cfg, D2)
    return {"cfg": cfg, "first": first, "second": second, "today": today, "users": (a, b, c), "lines": lines,
            "report": json.loads(second.report_json.read_text()), "first_report": json.loads(
                first.report_json.read_text())}


def test_the_report_scores_yesterdays_lists_against_todays_listens_as_constructed(two_nights) -> None:
    from scoring.batch import popular_tracks

    first, y = two_nights["first_report"], two_nights["report"]["yesterday_vs_today"]
    assert first["yesterday_vs_today"]["previous_date"] is None  # night 1 has nothing to look back on
    assert (y["previous_date"], y["k"]) == (D1.isoformat(), K)
    assert y["window_start"].startswith("2009-05-05T00:00:00") and y["window_end"].startswith("2009-05-06T00:00:00")
    assert y["listens_in_window"] == 4 + 3 + 2 + 2 + 1  # the late and the after-snapshot listens left out
    assert (y["users_evaluated"], y["listening_without_list"]) == (4, 1)
    assert y["users_scored"] == first["lists"]["users"]
    assert y["model"] == {"users": 3, "hits": 2, "hit_rate": pytest.approx(2 / 3), "recall": pytest.approx(0.5)}
    assert y["fallback"] == {"users": 1, "hits": 1, "hit_rate": 1.0, "recall": 0.5}
    # The popular ranking of D1 (as the report reads it, after the late listen), for A, B and C.
    cfg, today = two_nights["cfg"], two_nights["today"]
    pop = set(popular_tracks(Workspace.at(cfg.home), D1, K)["track_id"])
    per_user = [len(set(today[u]) & pop) / len(set(today[u])) for u in two_nights["users"]]
    got = y["popular_for_model_users"]
    assert got["users"] == 3 and got["hits"] == sum(r > 0 for r in per_user) >= 1
    assert got["recall"] == pytest.approx(sum(per_user) / 3)


def test_the_report_keeps_trends_examples_and_freshness_for_the_next_night(two_nights) -> None:
    from scoring.batch import read_recommendations

    rep, cfg = two_nights["report"], two_nights["cfg"]
    trend = rep["trend"]
    assert trend["date"] == D2.isoformat() and trend["listens_added"] == len(two_nights["lines"])
    assert trend["hit_rate_model"] == pytest.approx(2 / 3) and trend["recall_model"] == pytest.approx(0.5)
    assert set(trend["step_seconds"]) == {"ingest", "features", "annotate", "embed", "materialize", "score"}
    assert trend["catalog_coverage"] == rep["lists"]["catalog_coverage"] > 0
    assert trend["users_scored"] == rep["lists"]["users"]
    assert two_nights["first_report"]["trend"]["listens_added"] == 0  # night 1: an empty inbox

    # Three users, their lists named "artist – title" from the bronze tracks table, model or fallback as published.
    recs = read_recommendations(cfg, D2)
    kinds = recs.groupby("user_id")["fallback"].any()
    tracks = pads.dataset(Workspace.at(cfg.home).tracks, format="parquet").to_table(
        columns=["track_id", "artist_name", "track_name"]).to_pandas().set_index("track_id")
    assert len(rep["examples"]) == 3 and len({e["user_id"] for e in rep["examples"]}) == 3
    for ex in rep["examples"]:
        mine = recs[recs["user_id"] == ex["user_id"]].sort_values("rank").head(K)
        assert ex["list"] == ("fallback" if kinds[ex["user_id"]] else "model")
        want = [f"{tracks.loc[t, 'artist_name']} – {tracks.loc[t, 'track_name']}" if t in tracks.index else t
                for t in mine["track_id"]]
        assert [r["track"] for r in ex["top"]] == want and len(want) == K
        assert 1 <= len(ex["recent"]) <= 10 and all(" – " in r["track"] for r in ex["recent"])
        assert [r["ts"] for r in ex["recent"]] == sorted((r["ts"] for r in ex["recent"]), reverse=True)
    # The first is the model user with the most listens in the 30 days before the snapshot (ties by id).
    snap = pd.Timestamp(rep["freshness"]["feature_snapshot"])
    listens = pads.dataset([str(f) for f in lake.files(Workspace.at(cfg.home).listens)], format="parquet").to_table(
        columns=["user_id", "ts"]).to_pandas()
    recent = listens[(listens["ts"] >= snap - pd.Timedelta(days=30)) & (listens["ts"] < snap)]
    counts = recent["user_id"].value_counts()
    model_users = sorted((u for u in kinds.index if not kinds[u]), key=lambda u: (-counts.get(u, 0), u))
    assert rep["examples"][0]["user_id"] == model_users[0]
    assert rep["examples"][0]["recent_listens_in_window"] == counts[model_users[0]]

    fresh = rep["freshness"]
    assert fresh["feature_snapshot"].startswith("2009-05-06T00:00:00") and fresh["mode"] == "point-in-time"
    assert fresh["newest_listen"].startswith("2009-05-06T01:00:00")
    assert fresh["snapshot_behind_newest_s"] == 3600 and fresh["listens_after_snapshot"] == 1
    assert fresh["feature_age_s"] > 0 and "feast_error" not in fresh
    assert {v["view"] for v in fresh["views"]} >= {"user_daily", "track_daily"}


def _chromium() -> str:
    found = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if found is None:
        pytest.fail("headless Chromium is needed to check the nightly report renders: "
                    "apt-get install chromium (make test installs it)")
    return found


# Test-only: appended to a copy of the page, never to the report itself.
PROBE = """<script>
window.addEventListener("load", () => {
  const imgs = Array.from(document.images);
  const probe = document.createElement("pre");
  probe.id = "probe";
  probe.textContent = JSON.stringify({
    images: imgs.length,
    loaded: imgs.filter(i => i.complete && i.naturalWidth > 0).length,
    h2: Array.from(document.querySelectorAll("h2")).map(h => h.textContent),
    sections: Object.fromEntries(Array.from(document.querySelectorAll("section")).map(s => [s.id, s.innerText])),
  });
  document.body.appendChild(probe);
});
</script>"""


def test_the_report_renders_in_headless_chromium_with_its_images_and_every_section(two_nights,
                                                                                 tmp_path: Path) -> None:
    binary = _chromium()
    page = tmp_path / "page.html"
    page.write_text(two_nights["second"].report_html.read_text().replace("</body>", PROBE + "</body>"))
    env = {**os.environ, "HOME": str(tmp_path)}  # chromium writes its profile and crash dumps under HOME
    proc = subprocess.run([binary, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000",
                           f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page.as_uri()],
                          capture_output=True, text=True, timeout=120, env=env)
    found = re.search(r'<pre id="probe">(.*?)</pre>', proc.stdout, re.S)
    assert proc.returncode == 0 and found, f"chromium rc {proc.returncode}:\n{proc.stderr[-3000:]}"
    seen = json.loads(html.unescape(found.group(1)))
    assert seen["images"] == seen["loaded"] == 3  # trends, step timings, scores and exposure
    assert seen["h2"] == SECTIONS
    text = seen["sections"]
    assert "66.7%" in text["yesterday"] and "50.0%" in text["yesterday"] and "K = 10" in text["yesterday"]
    assert D1.isoformat() in text["trends"] and f"{D2.isoformat()} (tonight)" in text["trends"]
    assert text["examples"].count("recent listens, newest first") == 3 and " – " in text["examples"]
    assert text["examples"].count("tonight's top 10") == 1 + 3  # the section's line, then one per user
    assert "1 h 0 min" in text["freshness"] and "user_daily" in text["freshness"]
    assert re.search(r"\d+(\.\d)? s\b", text["steps"]) and "%" in text["lists"]
    assert not re.search(r"\d\.\d{4}", text["steps"] + text["lists"] + text["yesterday"])  # no raw floats
