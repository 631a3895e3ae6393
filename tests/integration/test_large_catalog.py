"""Catalogues of real size: training one epoch over 150,000 items in bounded memory, head sizing."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from training.train import HeadTooLarge, check_head_memory

REPO = Path(__file__).resolve().parents[2]
N_ITEMS = 150_000


def write_catalogue_file(path: Path, users: int = 12_000, length: int = 15, n_items: int = N_ITEMS) -> Path:
    """A standard ``user item item ...`` file whose users together play every one of ``n_items`` items.

    Each user walks a run of consecutive items from a random start, so next items are learnable
    (the loss can fall within one epoch) and the whole catalogue is covered.
    """
    rng = np.random.default_rng(0)
    starts = rng.integers(0, n_items, users)
    cover = np.arange(0, n_items, length)
    starts[: len(cover)] = cover  # the first users' runs tile the whole catalogue
    lines = []
    for u, s in enumerate(starts):
        items = (s + np.arange(length)) % n_items + 1
        lines.append(f"u{u} " + " ".join(map(str, items)))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.slow
@pytest.mark.integration
def test_sasrec_trains_an_epoch_over_150k_items_under_4_gb_and_its_loss_falls(tmp_path: Path) -> None:
    data = write_catalogue_file(tmp_path / "catalogue.txt")
    # In a child process, so its peak RSS is its own (pytest and this suite's imports are not in it).
    script = textwrap.dedent(f"""
        import json, os
        os.environ["ENCORE_HOME"] = {str(tmp_path / "home")!r}
        from pathlib import Path
        from encore.core.config import load_config
        from training.standard import bench_standard
        cfg = load_config()
        tc = cfg.train.model_copy(update={{"model": "sasrec", "epochs": 1}})  # loss: the default (auto)
        out, _ = bench_standard(cfg.model_copy(update={{"train": tc}}), Path({str(data)!r}))
        model = out.trained
        import resource
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB, this process's own peak
        print(json.dumps({{"items": out.info["items"], "loss": model.loss_type, "history": out.fit.history,
                          "test": out.test, "peak_kib": peak}}))
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    # The child's own peak: RUSAGE_CHILDREN would be the largest of every child this pytest reaped.
    peak_gb = out["peak_kib"] / 2**20  # KiB -> GiB
    assert out["items"] == N_ITEMS
    assert out["loss"] == "sampled"  # auto picks sampled softmax above 50,000 items
    epoch = out["history"][0]
    assert epoch["train_loss"] < epoch["first_step_loss"]
    assert np.isfinite(out["test"]["ndcg@10"])
    assert peak_gb <= 4.0, f"peak RSS {peak_gb:.2f} GiB"


def test_e4srec_head_is_sized_and_refused_when_it_cannot_fit(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from training.models.e4srec import default_backbone, describe_head

    backbone = default_backbone()  # MiniLM: hidden 384
    assert describe_head(384, 1_000_000).startswith("head: 384 × 1,000,000 = 385M parameters, ~6.2 GB with AdamW")
    with caplog.at_level("INFO"):
        need = check_head_memory(backbone, 1_000_000, available=64 * 10**9)
    assert need == 385 * 1_000_001 * 16
    assert "head: 384 × 1,000,000" in caplog.text
    with pytest.raises(HeadTooLarge, match=r"only 2\.0 GB is available.*min_item_plays"):
        check_head_memory(backbone, 1_000_000, available=2 * 10**9)


def test_model_config_json_round_trips_the_sampled_settings(tmp_path: Path) -> None:
    from training.models import load
    from training.models.sasrec import SASRec

    model = SASRec(n_items=100, hidden=8, inner=8, layers=1, loss="sampled",
                   sampled={"negatives": 7, "sampler": "mixed", "in_batch": 3})
    model.save(tmp_path / "m")
    back = load(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "model.json").read_text())["config"]["sampled"]["negatives"] == 7
    assert back.sampled == model.sampled and back.loss_type == "sampled"
