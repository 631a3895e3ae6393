"""The nightly report's pure parts: yesterday-vs-today scoring, number formats, example users, trends."""

from __future__ import annotations

import json
import re
from datetime import date
from pathlib import Path

import pandas as pd
import pytest

from encore.core.config import EncoreConfig
from encore.core.workspace import Workspace
from encore.nightly.report import (
    earlier_nights,
    example_users,
    fmt_count,
    fmt_metric,
    fmt_seconds,
    fmt_share,
    fmt_time,
    write_nightly_report,
    yesterday_vs_today,
)


def _lists(rows: dict[str, tuple[list[str], bool]]) -> pd.DataFrame:
    """{user: (tracks best first, fallback)} -> one row per (user, rank), as scoring publishes them."""
    out = [{"user_id": u, "rank": r, "track_id": t, "score": float(-r), "fallback": fb}
           for u, (tracks, fb) in rows.items() for r, t in enumerate(tracks, start=1)]
    return pd.DataFrame(out)


def _listens(rows: list[tuple[str, str]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["user_id", "track_id"])


def test_yesterday_vs_today_scores_model_and_fallback_users_and_leaves_out_users_without_listens() -> None:
    recs = _lists({
        "a": ([f"t{i}" for i in range(1, 13)], False),  # 12 long: t11, t12 lie past K = 10
        "b": ([f"u{i}" for i in range(1, 11)], False),
        "c": ([f"p{i}" for i in range(1, 11)], True),  # the popular-tracks fallback
        "d": ([f"t{i}" for i in range(1, 11)], False),  # no listen today: not evaluated
    })
    listens = _listens([
        ("a", "t1"), ("a", "t1"), ("a", "t11"), ("a", "x1"),  # distinct {t1, t11, x1}: 1 in the top 10
        ("b", "y1"), ("b", "y2"),  # nothing of the list
        ("c", "p2"), ("c", "z"),  # half
        ("e", "t1"),  # no list yesterday (a new user): not evaluated
    ])
    popular = ["t1", "y1", *[f"q{i}" for i in range(20)], "x1"]  # x1 is 23rd: beyond K, not shown
    got = yesterday_vs_today(recs, listens, k=10, popular=popular)

    assert (got["k"], got["users_scored"], got["users_listening"], got["users_evaluated"]) == (10, 4, 4, 3)
    assert got["listening_without_list"] == 1
    assert got["model"] == {"users": 2, "hits": 1, "hit_rate": 0.5, "recall": pytest.approx((1 / 3 + 0) / 2)}
    assert got["fallback"] == {"users": 1, "hits": 1, "hit_rate": 1.0, "recall": 0.5}
    assert got["all"]["users"] == 3 and got["all"]["hit_rate"] == pytest.approx(2 / 3)
    assert got["all"]["recall"] == pytest.approx((1 / 3 + 0 + 1 / 2) / 3)
    # The popular ranking, for the model users a and b only: a {t1}/3, b {y1}/2.
    pop = got["popular_for_model_users"]
    assert (pop["users"], pop["hits"], pop["hit_rate"]) == (2, 2, 1.0)
    assert pop["recall"] == pytest.approx((1 / 3 + 1 / 2) / 2)

    longer = yesterday_vs_today(recs, listens, k=12)  # t11 now counts for a
    assert longer["model"]["recall"] == pytest.approx((2 / 3 + 0) / 2)
    assert longer["popular_for_model_users"] is None


def test_yesterday_vs_today_with_no_listens_reports_no_rates_rather_than_zero() -> None:
    recs = _lists({"a": (["t1", "t2"], False)})
    got = yesterday_vs_today(recs, _listens([]), popular=["t1"])
    assert got["users_evaluated"] == 0
    assert got["model"] == {"users": 0, "hits": 0, "hit_rate": None, "recall": None}


def test_numbers_are_formatted_by_kind() -> None:
    assert fmt_seconds(47.9) == "47.9 s" and fmt_seconds(0.123) == "0.1 s"
    assert fmt_seconds(192) == "3 min 12 s" and fmt_seconds(59.97) == "1 min 0 s"
    assert fmt_seconds(2 * 3600 + 5 * 60 + 10) == "2 h 5 min" and fmt_seconds(17 * 86400 + 4 * 3600) == "17 d 4 h"
    assert fmt_seconds(-90) == "-1 min 30 s"
    assert fmt_share(0.4791) == "47.9%" and fmt_share(1) == "100.0%"
    assert fmt_count(118685) == "118,685" and fmt_count(3.0) == "3"
    assert fmt_metric(0.072349) == "0.0723"
    assert fmt_time("2009-05-05T00:00:00+00:00") == "2009-05-05 00:00:00 UTC"
    for f in (fmt_seconds, fmt_share, fmt_count, fmt_metric, fmt_time):
        assert f(None) == "–" and f(float("nan")) == "–"


def test_a_night_without_scoring_or_earlier_nights_writes_a_formatted_report_that_says_so(tmp_path: Path) -> None:
    cfg = EncoreConfig(home=tmp_path / "home")
    state = {"steps": {
        "ingest": {"status": "done", "started": "2009-05-05T01:00:00+00:00", "seconds": 47.9,
                   "finished": "2009-05-05T01:00:48+00:00", "summary": {"note": "no new raw files"}},
        "features": {"status": "done", "started": "2009-05-05T01:00:48+00:00", "seconds": 192.4,
                     "finished": "2009-05-05T01:04:00+00:00",
                     "summary": {"mode": "incremental", "tables": {"listens": {"rows": 118685}}}},
        "score": {"status": "failed", "started": "2009-05-05T01:04:00+00:00", "seconds": 3.2,
                  "error": "ScoringError: no champion"}}}
    page, js = write_nightly_report(cfg, date(2009, 5, 5), state)
    data = json.loads(js.read_text())
    assert data["yesterday_vs_today"]["previous_date"] is None
    assert data["trend"]["date"] == "2009-05-05" and data["trend"]["listens_added"] == 0
    assert data["trend"]["step_seconds"] == {"ingest": 47.9, "features": 192.4, "score": 3.2}
    text = page.read_text()
    assert "47.9 s" in text and "3 min 12 s" in text and "incremental, 118,685 rows in 1 table" in text
    assert "47.9000" not in text and not re.search(r"\d\.\d{4}\b", text)  # no metric tonight: no 4 decimals
    assert "no lists were published before 2009-05-05" in text
    assert "the trend starts tonight" in text and "failed: score" in text
    assert text.count('src="data:image/png;base64,') == 2  # step times and the trend (no lists: no scores)


def test_example_users_are_the_most_active_model_users_and_one_fallback_user_ties_by_id() -> None:
    recs = _lists({u: (["t1"], u.startswith("f")) for u in ("m1", "m2", "m3", "m4", "f1", "f2")})
    recent = pd.DataFrame({"user_id": ["m3"] * 5 + ["m2"] * 2 + ["m4"] * 2 + ["f2"] * 3 + ["f1"]})
    assert example_users(recs, recent) == ["m3", "m2", "f2"]  # m2 before m4: same count, by id
    only_model = recs[~recs["fallback"]]
    assert example_users(only_model, recent) == ["m3", "m2", "m4"]
    assert example_users(recs[recs["user_id"] == "f1"], recent) == ["f1"]
    assert example_users(recs.iloc[:0], recent) == []


def test_trends_read_the_last_30_earlier_nights_oldest_first_old_and_new_reports_alike(tmp_path: Path) -> None:
    ws = Workspace.at(tmp_path / "home")
    reports = ws.home / "reports"
    reports.mkdir(parents=True)
    days = pd.date_range("2009-03-01", periods=40, freq="D").date
    for i, d in enumerate(days[:36]):
        point = {"date": d.isoformat(), "listens_added": i, "step_seconds": {"ingest": 1.0}, "total_seconds": 1.0}
        (reports / f"nightly-{d}.json").write_text(json.dumps({"date": d.isoformat(), "trend": point}))
    # A report from before trends existed: the point comes from its steps and lists.
    old = days[36]
    (reports / f"nightly-{old}.json").write_text(json.dumps({
        "date": old.isoformat(), "steps": {"ingest": {"seconds": 2.5, "summary": {"listens": {"added": 1234}}}},
        "scoring": {"users_known": 10, "users_model": 7, "users_fallback": 1},
        "lists": {"users": 8, "catalog_coverage": 0.25, "fallback_share": 0.125}}))
    ws.nightly.mkdir(parents=True)
    (ws.nightly / f"state-{old}.json").write_text(json.dumps({"steps": {"report": {"seconds": 4.0}}}))
    (reports / f"nightly-{days[39]}.json").write_text("{}")  # after the night: never read
    (reports / "nightly-notes.json").write_text("{}")

    got = earlier_nights(ws, days[38])
    assert [p["date"] for p in got] == [d.isoformat() for d in days[7:37]]
    assert got[0]["listens_added"] == 7
    last = got[-1]
    assert last["listens_added"] == 1234 and last["step_seconds"] == {"ingest": 2.5, "report": 4.0}
    assert last["total_seconds"] == 6.5 and last["user_coverage"] == 0.8 and last["fallback_share"] == 0.125
