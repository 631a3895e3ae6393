"""Where everything lives inside the workspace folder (``home``).

    home/
      lake/bronze/{listens,tracks,users}/   parquet; listens partitioned by date=YYYY-MM-DD
      lake/quarantine/{listens,tracks,users}/  rejected raw rows with a reason, partitioned by source
      lake/features/{listens,sessions,user_daily,track_daily}/  feature tables (Feast sources), by date
      lake/features/track_content/          one row per track: current content embeddings (Feast source)
      lake/content/embeddings/encoder=E/version=V/run=R/  every computed embedding (the incremental cache)
      lake/content/annotations/run=R/       LLM gene annotations (cache); invalid ones in quarantine/annotations
      feast/  mlflow/  reports/<job>/  outputs/
      recommendations/date=YYYY-MM-DD/      nightly scoring output, one folder per date (swapped in whole)
      nightly/state-YYYY-MM-DD.json         which nightly steps finished for a date
      inbox/                                new raw files for the nightly ingest (nightly.inbox)
      tmp/{staging,trash,journal}/          same filesystem as the lake, so renames are atomic
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


class WorkspaceBusy(RuntimeError):
    """Another Encore process holds the lock this one needs."""


@dataclass(frozen=True)
class Workspace:
    home: Path

    @classmethod
    def at(cls, home: Path | str) -> Workspace:
        return cls(Path(home).resolve())

    @property
    def lake(self) -> Path:
        return self.home / "lake"

    @property
    def bronze(self) -> Path:
        return self.lake / "bronze"

    @property
    def listens(self) -> Path:
        return self.bronze / "listens"

    @property
    def tracks(self) -> Path:
        return self.bronze / "tracks"

    @property
    def users(self) -> Path:
        return self.bronze / "users"

    def quarantine(self, table: str) -> Path:
        return self.lake / "quarantine" / table

    @property
    def features(self) -> Path:
        return self.lake / "features"

    def feature_table(self, name: str) -> Path:
        return self.features / name

    @property
    def content(self) -> Path:
        return self.lake / "content"

    def embeddings(self, encoder: str, version: str) -> Path:
        return self.content / "embeddings" / f"encoder={encoder}" / f"version={version}"

    @property
    def annotations(self) -> Path:
        return self.content / "annotations"

    @property
    def feast(self) -> Path:
        return self.home / "feast"

    @property
    def mlflow(self) -> Path:
        return self.home / "mlflow"

    def reports(self, job: str) -> Path:
        return self.home / "reports" / job

    @property
    def recommendations(self) -> Path:
        return self.home / "recommendations"

    @property
    def nightly(self) -> Path:
        return self.home / "nightly"

    @property
    def outputs(self) -> Path:
        return self.home / "outputs"

    @property
    def tmp(self) -> Path:
        return self.home / "tmp"

    def staging(self, run_id: str) -> Path:
        return self.tmp / "staging" / run_id

    @property
    def journals(self) -> Path:
        return self.tmp / "journal"

    @property
    def trash(self) -> Path:
        return self.tmp / "trash"

    @contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """Exclusive, non-blocking lock ``name`` on this workspace (released when the process dies)."""
        path = self.home / "locks" / f"{name}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
                raise WorkspaceBusy(
                    f"another encore process (pid {holder}) holds the '{name}' lock on {self.home}; "
                    "wait for it to finish"
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
            yield
        finally:
            os.close(fd)


def partitions(table: Path, key: str = "date") -> list[str]:
    """Values of the hive partition ``key`` present under ``table`` (sorted)."""
    if not table.is_dir():
        return []
    prefix = f"{key}="
    return sorted(p.name[len(prefix):] for p in table.iterdir() if p.is_dir() and p.name.startswith(prefix))
