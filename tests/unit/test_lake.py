"""The period layout of encore.core.lake and its publication by one link swap (encore.core.atomic)."""

from __future__ import annotations

import os
from datetime import date
from pathlib import Path

import pytest

from encore.core import atomic, faults
from encore.core import lake as lk


@pytest.mark.parametrize(("granularity", "day", "period", "bounds"), [
    ("month", date(2009, 6, 19), "2009-06", (date(2009, 6, 1), date(2009, 6, 30))),
    ("month", date(2008, 2, 29), "2008-02", (date(2008, 2, 1), date(2008, 2, 29))),
    ("quarter", date(2009, 6, 19), "2009-Q2", (date(2009, 4, 1), date(2009, 6, 30))),
    ("quarter", date(2005, 12, 31), "2005-Q4", (date(2005, 10, 1), date(2005, 12, 31))),
    ("year", date(2009, 6, 19), "2009", (date(2009, 1, 1), date(2009, 12, 31))),
])
def test_a_day_falls_in_the_period_whose_bounds_hold_it(granularity: str, day: date, period: str,
                                                         bounds: tuple[date, date]) -> None:
    assert lk.period_of(day, granularity) == period
    assert lk.period_bounds(period) == bounds
    assert bounds[0] <= day <= bounds[1]


def test_periods_between_lists_each_period_once_in_time_order() -> None:
    assert lk.periods_between(date(2008, 11, 30), date(2009, 2, 1), "month") == [
        "2008-11", "2008-12", "2009-01", "2009-02"]
    assert lk.periods_between(date(2008, 11, 30), date(2009, 4, 1), "quarter") == ["2008-Q4", "2009-Q1", "2009-Q2"]
    assert lk.periods_between(date(2005, 2, 14), date(2009, 6, 19), "year") == [str(y) for y in range(2005, 2010)]
    # 19 years of days: one folder per month at most.
    assert len(lk.periods_between(date(2007, 1, 1), date(2025, 12, 31), "month")) == 19 * 12


def _stage(tmp: Path, name: str, periods: dict[str, bytes]) -> Path:
    out = tmp / "staging" / name
    for p, data in periods.items():
        d = out / f"period={p}"
        d.mkdir(parents=True)
        (d / "part-00000.parquet").write_bytes(data)
    return out


def _publish(lake: Path, table: Path, run: str, staged: Path, touched: set[str] | None, days: dict) -> Path:
    snap = lake.parent / "tmp" / "snap" / run
    lk.assemble(table, snap, staged, touched, lk.Manifest("month", days))
    target = lk.snapshot_dir(lake, table, run)
    atomic.publish([atomic.repoint_of(table, target, staged=snap)], lake.parent / "tmp" / "journal" / f"{run}.json")
    return target


def test_a_publication_links_untouched_periods_and_keeps_the_previous_snapshot_only(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    table = lake / "bronze" / "listens"
    v1 = _publish(lake, table, "r1", _stage(tmp_path, "r1", {"2009-04": b"april", "2009-05": b"may"}), None,
                  {"2009-04-01": {"rows": 1}, "2009-05-01": {"rows": 1}})
    assert table.is_symlink() and not os.path.isabs(os.readlink(table))  # relative: a copied home works
    assert lk.resolve(table) == v1 and lk.days(table) == ["2009-04-01", "2009-05-01"]

    pinned = lk.resolve(table)  # a reader that resolved before the next publication
    v2 = _publish(lake, table, "r2", _stage(tmp_path, "r2", {"2009-05": b"may, more"}), {"2009-05"},
                  {"2009-04-01": {"rows": 1}, "2009-05-01": {"rows": 2}})
    assert lk.resolve(table) == v2
    assert (table / "period=2009-05" / "part-00000.parquet").read_bytes() == b"may, more"
    # April was linked, not copied: the same inode, byte for byte.
    assert os.stat(v2 / "period=2009-04" / "part-00000.parquet").st_ino == \
        os.stat(v1 / "period=2009-04" / "part-00000.parquet").st_ino
    assert (pinned / "period=2009-05" / "part-00000.parquet").read_bytes() == b"may"  # still readable

    v3 = _publish(lake, table, "r3", _stage(tmp_path, "r3", {}), {"2009-05"}, {"2009-04-01": {"rows": 1}})
    assert sorted(p.name for p in v3.parent.iterdir()) == ["r2", "r3"]  # r1 deleted, r2 kept for readers
    assert sorted(lk.period_dirs(v3)) == ["2009-04"]  # a touched period with no rows is gone


def test_a_kill_between_the_journal_and_the_link_swap_is_rolled_forward(tmp_path: Path, monkeypatch) -> None:
    lake = tmp_path / "lake"
    table = lake / "features" / "user_daily"
    _publish(lake, table, "r1", _stage(tmp_path, "r1", {"2009-04": b"old"}), None, {"2009-04-01": {"rows": 1}})
    snap = tmp_path / "tmp" / "snap" / "r2"
    lk.assemble(table, snap, _stage(tmp_path, "r2", {"2009-04": b"new"}), {"2009-04"},
                lk.Manifest("month", {"2009-04-01": {"rows": 1}}))
    target = lk.snapshot_dir(lake, table, "r2")
    journals = tmp_path / "tmp" / "journal"
    monkeypatch.setenv("ENCORE_FAULT", "publish.mid_swap")

    def killed(pid: int, sig: int) -> None:
        raise SystemExit("killed")
    monkeypatch.setattr(faults.os, "kill", killed)  # the process would die here
    with pytest.raises(SystemExit):
        atomic.publish([atomic.repoint_of(table, target, staged=snap)], journals / "r2.json")
    assert list(journals.glob("*.json"))  # left for the next run
    monkeypatch.undo()
    assert lk.resolve(table).name == "r1" or (table / "period=2009-04" / "part-00000.parquet").read_bytes() == b"new"
    assert atomic.recover(journals) == 1
    assert (table / "period=2009-04" / "part-00000.parquet").read_bytes() == b"new"
    assert atomic.recover(journals) == 0


def test_snapshots_no_link_points_at_are_deleted_as_orphans(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    table = lake / "bronze" / "listens"
    _publish(lake, table, "20260101T000000Z-a", _stage(tmp_path, "a", {"2009-04": b"a"}), None, {})
    live = _publish(lake, table, "20260102T000000Z-b", _stage(tmp_path, "b", {"2009-04": b"b"}), {"2009-04"}, {})
    orphan = lk.snapshot_dir(lake, table, "20260103T000000Z-c")  # a killed run's, never published
    (orphan / "period=2009-04").mkdir(parents=True)
    assert lk.clean_orphans(lake, [table]) == 1
    assert sorted(p.name for p in live.parent.iterdir()) == ["20260101T000000Z-a", "20260102T000000Z-b"]


def test_a_day_partitioned_table_is_refused_with_the_command_that_migrates_it(tmp_path: Path) -> None:
    table = tmp_path / "lake" / "bronze" / "listens"
    (table / "date=2009-05-01").mkdir(parents=True)
    with pytest.raises(lk.LakeLayoutError, match="encore lake migrate"):
        lk.days(table)
    plain = tmp_path / "lake" / "features" / "sessions"
    plain.mkdir(parents=True)
    with pytest.raises(lk.LakeLayoutError, match="should be a link"):
        lk.resolve(plain)
    (tmp_path / "lake" / lk.LEGACY / "features" / "sessions").mkdir(parents=True)
    with pytest.raises(lk.LakeLayoutError, match="interrupted"):
        lk.check_layout(plain)


def test_a_table_in_another_granularity_names_the_setting_and_the_command(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    table = lake / "bronze" / "listens"
    snap = tmp_path / "snap"
    lk.assemble(table, snap, _stage(tmp_path, "q", {"2009-Q2": b"x"}), None, lk.Manifest("quarter", {}))
    target = lk.snapshot_dir(lake, table, "r1")
    atomic.publish([atomic.repoint_of(table, target, staged=snap)], tmp_path / "j" / "r1.json")
    lk.check_layout(table, "quarter")
    with pytest.raises(lk.LakeLayoutError, match=r"lake\.granularity"):
        lk.check_layout(table, "month")
