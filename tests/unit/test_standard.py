"""The standard benchmark's summaries: E4SRec against every row by 2σ, and the per-bucket splits."""

from __future__ import annotations

import pytest

from training.standard import compare, markdown, split_table


def run(variant: str, seed: int, ndcg: float, buckets: list[dict] | None = None) -> dict:
    return {"variant": variant, "seed": seed, "test": {"ndcg@10": ndcg}, "by_popularity": buckets}


def test_compare_wins_only_above_both_the_independent_and_the_paired_two_sigma() -> None:
    # e4srec 0.30/0.32/0.34 (mean 0.32, std 0.02).
    # sasrec moves with it seed by seed (0.28/0.30/0.32): gap 0.02, independent 2σ 2·hypot(.02,.02) =
    # 0.0566 -> no win, although the paired 2σ is 0 (every per-seed difference is 0.02).
    # e4srec-id flat 0.20 (std 0): gap 0.12 above both -> a win.
    results = [run("e4srec", s, v) for s, v in enumerate((0.30, 0.32, 0.34))]
    results += [run("sasrec", s, v) for s, v in enumerate((0.28, 0.30, 0.32))]
    results += [run("e4srec-id", s, 0.20) for s in range(3)]
    out = compare(results)
    assert out["sasrec"]["gap"] == pytest.approx(0.02)
    assert out["sasrec"]["paired_two_std"] == pytest.approx(0.0, abs=1e-12)
    assert out["sasrec"]["two_std"] == pytest.approx(2 * (0.02**2 * 2) ** 0.5)
    assert not out["sasrec"]["beats"]
    assert out["e4srec-id"]["beats"] and out["e4srec-id"]["paired_seeds"] == [0, 1, 2]


def test_compare_needs_two_shared_seeds_for_the_paired_reading() -> None:
    out = compare([run("e4srec", 0, 0.5), run("e4srec", 1, 0.5), run("sasrec", 2, 0.1), run("sasrec", 3, 0.1)])
    assert out["sasrec"]["paired_seeds"] == [] and not out["sasrec"]["beats"]
    assert compare([run("sasrec", 0, 0.1)]) == {}  # no e4srec row: nothing to compare


def test_split_table_averages_each_bucket_over_seeds_and_reads_old_records() -> None:
    new = [{"facet": "history", "bucket": "1-3", "examples": 10, "ndcg@10": 0.1}]
    old = [{"facet": "target", "plays": "0", "examples": 4, "ndcg@10": 0.0}]  # before "bucket"
    results = [run("e4srec", 0, 0.3, new + old), run("e4srec", 1, 0.3, [{**new[0], "ndcg@10": 0.3}]),
               run("sasrec", 0, 0.2, new)]
    table = {(b["facet"], b["bucket"]): b for b in split_table(results, ["sasrec", "e4srec"])}
    assert table[("history", "1-3")]["e4srec"] == pytest.approx(0.2)
    assert table[("history", "1-3")]["sasrec"] == pytest.approx(0.1)
    assert table[("target", "0")]["sasrec"] is None and table[("target", "0")]["examples"] == 4
    md = markdown([], [], {}, "full", "budget", versus=compare(results), splits=list(table.values()))
    assert "| history | 1-3 | 10 | 0.1000 | 0.2000 |" in md and "| target | 0 | 4 | — | 0.0000 |" in md


def test_id_models_train_the_id_epochs_like_e4srecs_encoder_and_e4srec_trains_epochs() -> None:
    from encore.core.config import TrainConfig
    from training.standard import variant_config

    tc = TrainConfig.model_validate({"epochs": 3, "id": {"epochs": 10}})
    assert variant_config(tc, "sasrec", 1).epochs == 10
    assert variant_config(tc, "sasrec-ligr", 1).id.block == "ligr"
    e4 = variant_config(tc, "e4srec", 2)
    assert (e4.epochs, e4.seed, e4.e4srec.modalities) == (3, 2, ["id", "meta"])
    assert variant_config(TrainConfig(), "gru4rec", 0).epochs == TrainConfig().epochs  # no id.epochs: --epochs
