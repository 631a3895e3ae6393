"""Tonight's workspace for the nightly kill tests: one fixed path, and a snapshot after every step.

The workspace starts as a copy of ``champion_home`` (a world ingested, featured, embedded, a SASRec
champion in the registry). Tonight's inbox brings a new day of listens and four new tracks with
lyrics and audio but no genes, so every step has work: ingest, features, annotate (a fake
OpenAI-compatible server), embed, materialize, score, report.

The reference run goes one step at a time (``nightly --until STEP``), copying the workspace after
each. A kill test restores the copy from before its step *to the same path* (Feast's registry, the
SQLite online store and MLflow name absolute paths), kills a run inside the step, reruns it, and
compares with the copy from after the step.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from encore.core.config import EncoreConfig
from encore.nightly.pipeline import STEPS
from tests.conftest import LISTENS_FILE
from tests.fixtures.fake_llm import FakeLLM, serve_fake_llm
from tests.reliability.harness import encore_env, run

API_KEY_VALUE = "sk-test-DO-NOT-LOG-4f9a1c"  # the annotation backend's secret: must appear nowhere
NEW_TRACKS = [f"tonight-{i}" for i in range(1, 5)]


@dataclass
class Night:
    home: Path
    profile: Path
    env: dict[str, str]
    snaps: dict[str, Path] = field(default_factory=dict)  # "start" and each step -> copy after it
    outputs: list[str] = field(default_factory=list)  # stdout + stderr of every successful run

    def before(self, step: str) -> Path:
        i = STEPS.index(step)
        return self.snaps["start" if i == 0 else STEPS[i - 1]]

    def restore(self, snap: Path) -> None:
        shutil.rmtree(self.home, ignore_errors=True)
        shutil.copytree(snap, self.home, symlinks=True)

    def encore(self, *args: str) -> None:
        proc = run(["--config", str(self.profile), "-v", *args], self.env)
        assert proc.returncode == 0, f"encore {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-4000:]}"
        self.outputs.append(proc.stdout + proc.stderr)


def _inbox(world: Path, dest: Path) -> Path:
    """Tonight's files: a day of listens after the world's last (old tracks and the new ones) and a
    catalog of the four new tracks (lyrics, a real clip of the world, no genes)."""
    dest.mkdir(parents=True)
    old = [ln.split("\t") for ln in (world / LISTENS_FILE).read_text().splitlines()[:40]]
    clip = sorted((world / "audio").glob("*.wav"))[0]
    listens = []
    for i, f in enumerate(old):
        listens.append("\t".join([f[0], f"2009-05-05T{i // 4 + 1:02d}:{(i % 4) * 12:02d}:00Z", *f[2:]]))
    for i, t in enumerate(NEW_TRACKS):
        user = old[i][0]
        listens.append(f"{user}\t2009-05-05T20:{i * 10:02d}:00Z\t\tTonight Artist\t{t}\tzz-valid-{i + 1}")
    (dest / "tonight.tsv").write_text("\n".join(listens) + "\n")
    rows = [{"traid": t, "artist": "Tonight Artist", "title": f"zz-valid-{i + 1}", "duration_s": 180.0 + i,
             "lyrics": f"tonight we sing song number {i + 1}\nla la la", "audio_path": str(clip)}
            for i, t in enumerate(NEW_TRACKS)]
    (dest / "tonight-catalog.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return dest


@pytest.fixture(scope="session")
def fake_llm() -> Iterator[FakeLLM]:
    with serve_fake_llm() as llm:
        yield llm


@pytest.fixture(scope="session")
def night(champion_home: EncoreConfig, small_world, fake_llm: FakeLLM,
          tmp_path_factory: pytest.TempPathFactory) -> Night:
    world, _ = small_world
    base = tmp_path_factory.mktemp("night")
    home = base / "home"
    shutil.copytree(champion_home.home, home, symlinks=True)
    profile = base / "night.yaml"
    profile.write_text(yaml.safe_dump({
        "home": str(home),
        "spark": {"master": "local[2]", "driver_memory": "2g", "shuffle_partitions": 2},
        "ray": {"num_cpus": 2, "object_store_memory_mb": 256},
        "embed": {"metadata": "genes"},  # as champion_home's content was embedded
        "annotate": {"backend": "http", "url": fake_llm.url, "model": "fake-llm", "max_attempts": 2,
                     "timeout_s": 10, "concurrency": 2},
        "nightly": {"inbox": str(_inbox(world, base / "inbox"))},
    }))
    n = Night(home, profile, encore_env(ENCORE_LLM_API_KEY=API_KEY_VALUE))
    n.encore("feast", "apply")  # a copied workspace: point its registry at its own tables
    snaps = base / "snaps"
    n.snaps["start"] = snaps / "start"
    shutil.copytree(home, n.snaps["start"], symlinks=True)
    for step in STEPS:
        n.encore("nightly", "--until", step)
        n.snaps[step] = snaps / step
        shutil.copytree(home, n.snaps[step], symlinks=True)
    return n
