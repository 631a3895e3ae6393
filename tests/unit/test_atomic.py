"""Publishing staged directories: readers see old or new, and a half-done swap is rolled forward."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from encore.core import atomic


def _dir(path: Path, content: str) -> Path:
    path.mkdir(parents=True)
    (path / "part-00000.parquet").write_text(content)
    return path


def _swaps(tmp: Path, names: list[str]) -> list[atomic.Swap]:
    return [atomic.Swap(tmp / "stage" / n, tmp / "live" / n, tmp / "trash" / n) for n in names]


def test_publish_replaces_live_dirs_and_cleans_up(tmp_path: Path) -> None:
    _dir(tmp_path / "live" / "a", "old-a")
    for n in ("a", "b"):
        _dir(tmp_path / "stage" / n, f"new-{n}")
    journal = tmp_path / "journal" / "run.json"
    atomic.publish(_swaps(tmp_path, ["a", "b"]), journal)
    assert (tmp_path / "live" / "a" / "part-00000.parquet").read_text() == "new-a"
    assert (tmp_path / "live" / "b" / "part-00000.parquet").read_text() == "new-b"
    assert not journal.exists() and not (tmp_path / "trash" / "a").exists()


@pytest.mark.parametrize("state", ["nothing_swapped", "live_moved_to_trash", "first_swapped"])
def test_recover_rolls_an_interrupted_publication_forward(tmp_path: Path, state: str) -> None:
    # Recreate each state a kill can leave between the journal write and its removal.
    swaps = _swaps(tmp_path, ["a", "b"])
    _dir(swaps[0].live, "old-a")
    _dir(swaps[1].live, "old-b")
    _dir(swaps[0].staged, "new-a")
    _dir(swaps[1].staged, "new-b")
    if state in ("live_moved_to_trash", "first_swapped"):
        swaps[0].trash.parent.mkdir(parents=True)
        swaps[0].live.rename(swaps[0].trash)
    if state == "first_swapped":
        swaps[0].staged.rename(swaps[0].live)
    journal_dir = tmp_path / "journal"
    journal_dir.mkdir()
    (journal_dir / "run.json").write_text(json.dumps(
        [{"staged": str(s.staged), "live": str(s.live), "trash": str(s.trash)} for s in swaps]))
    assert atomic.recover(journal_dir) == 1
    assert [(s.live / "part-00000.parquet").read_text() for s in swaps] == ["new-a", "new-b"]
    assert not list(journal_dir.iterdir()) and not swaps[0].trash.exists()
    assert atomic.recover(journal_dir) == 0  # idempotent


def test_write_json_atomic_leaves_no_temporary_file(tmp_path: Path) -> None:
    atomic.write_json_atomic(tmp_path / "r" / "x.json", {"a": 1})
    atomic.write_json_atomic(tmp_path / "r" / "x.json", {"a": 2})
    assert json.loads((tmp_path / "r" / "x.json").read_text()) == {"a": 2}
    assert [p.name for p in (tmp_path / "r").iterdir()] == ["x.json"]
