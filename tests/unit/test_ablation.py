"""The ablation table's arithmetic: mean ± std over seeds, and the 2σ verdict against ID models."""

from __future__ import annotations

import pytest

from training.ablation import POPULARITY, bar_chart, markdown, popularity_row, summarize, variants, verdict


def run(variant: str, seed: int, ndcg: float) -> dict:
    return {"variant": variant, "seed": seed, "test": {"ndcg@10": ndcg}}


def test_the_table_has_every_row_the_paper_ablates() -> None:
    names = [v.name for v in variants()]
    assert names[:5] == ["SASRec", "BERT4Rec", "GRU4Rec", "Content zero-shot", "E4SRec (ID)"]
    assert {"E4SRec + lyrics", "E4SRec + audio", "E4SRec + metadata", "E4SRec + completion"} <= set(names)
    assert [n for n in names if n.startswith("E4SRec + all")] == [
        f"E4SRec + all ({f})" for f in ("concat", "weighted", "xattn", "film")]


def test_summary_gives_mean_and_sample_std_over_seeds() -> None:
    rows = summarize([run("SASRec", 0, 0.1), run("SASRec", 1, 0.2), run("SASRec", 2, 0.3)], ["SASRec"], ["ndcg@10"])
    mean, std = rows[0]["ndcg@10"]
    assert mean == pytest.approx(0.2) and std == pytest.approx(0.1)  # sqrt(((.1)^2 + 0 + (.1)^2) / 2)


def test_verdict_needs_a_gap_above_two_std_of_the_difference() -> None:
    # multimodal 0.30 ± 0.01; SASRec 0.25 ± 0.02 -> 2 * hypot(0.01, 0.02) = 0.0447 < 0.05: beats.
    # BERT4Rec 0.27 ± 0.02 -> gap 0.03 < 0.0447: does not.
    results = ([run("E4SRec + all (concat)", s, v) for s, v in enumerate((0.29, 0.30, 0.31))]
               + [run("SASRec", s, v) for s, v in enumerate((0.23, 0.25, 0.27))]
               + [run("BERT4Rec", s, v) for s, v in enumerate((0.25, 0.27, 0.29))])
    rows = summarize(results, ["SASRec", "BERT4Rec", "E4SRec + all (concat)"], ["ndcg@10"])
    v = verdict(rows)
    assert v["best"] == "E4SRec + all (concat)"
    assert v["margins"]["SASRec"]["beats"] and not v["margins"]["BERT4Rec"]["beats"]
    assert not v["beats_all"]
    text = markdown(rows, ["ndcg@10"], {"users": 3, "items": 9, "split": "loo"}, v, test_examples=2)
    assert "| SASRec | 3 | 0.2500 ± 0.0200 |" in text and "does NOT beat" in text
    assert text.startswith("Test metrics on 2 test examples from 3 users × 9 items")


def test_the_popularity_row_is_the_level_each_run_recorded_and_the_chart_marks_it(tmp_path) -> None:
    results = [{**run("GRU4Rec", s, 0.05 + s / 100), "popularity": {"ndcg@10": 0.02}} for s in range(3)]
    rows = summarize(results, ["GRU4Rec"], ["ndcg@10"])
    floor = popularity_row(results, ["ndcg@10"])
    assert floor == {"variant": POPULARITY, "seeds": 1, "ndcg@10": (0.02, 0.0)}
    assert popularity_row([run("GRU4Rec", 0, 0.1)], ["ndcg@10"]) is None  # runs from before it was kept
    text = markdown([*rows, floor], ["ndcg@10"], {"users": 3, "items": 9, "split": "loo"}, {})
    assert f"| {POPULARITY} | 1 | 0.0200 ± 0.0000 |" in text
    low = markdown([*rows, {**floor, "ndcg@10": (0.9, 0.0)}], ["ndcg@10"], {"users": 3, "items": 9}, {})
    assert f"| {POPULARITY} | 1 | 0.9000 ± 0.0000 |" in low  # above every model, yet not bolded as the best
    png = bar_chart([*rows, floor], "ndcg@10", tmp_path / "chart.png")
    assert png.stat().st_size > 0


def test_standard_table_prints_mean_std_and_the_published_rows_of_its_dataset() -> None:
    from pathlib import Path

    from training.standard import anchors
    from training.standard import markdown as standard_markdown
    from training.standard import summarize as standard_summarize

    results = [{"variant": "sasrec", "seed": s, "epochs": 10, "best_epoch": 10, "wall_s": 60.0 * (s + 1),
                "test": {m: 0.05 + s / 100 for m in ("hr@5", "hr@10", "ndcg@5", "ndcg@10")},
                "unmasked": {m: 0.04 for m in ("hr@5", "hr@10", "ndcg@5", "ndcg@10")}} for s in range(3)]
    rows = standard_summarize(results, ["sasrec"])
    published = anchors(Path("data/Beauty.txt"), "full")
    assert {p["model"] for p in published} >= {"GRU4Rec", "BERT4Rec", "eSASRec (LiGR, sampled softmax)"}
    assert anchors(Path("Beauty.txt"), "sampled-100") != published and anchors(Path("other.txt"), "full") == []
    text = standard_markdown(rows, published, {"users": 3, "items": 9}, "full", "10 epochs")
    assert "| sasrec | 3 | 0.0600 ± 0.0100 | 0.0600 ± 0.0100 |" in text  # over seeds: 0.05, 0.06, 0.07
    assert "| 0.0400 ± 0.0000 | 0.0400 ± 0.0000 | 10/10/10 (10/10/10) | 2.0 min |" in text
    assert "Published figures (not run here" in text and "| eSASRec (LiGR, sampled softmax) | — | 0.0928 |" in text


def test_the_llm_zeroshot_row_joins_only_where_its_lm_is_named_and_it_can_rank() -> None:
    from encore.core.config import PRESETS, TrainConfig
    from training.ablation import LLM_ZEROSHOT, apply_changes

    named = TrainConfig.model_validate({"zeroshot": {"backbone": "/models/lm"}})
    assert LLM_ZEROSHOT not in variants(TrainConfig())  # no LM named
    assert LLM_ZEROSHOT not in variants(named)  # full ranking and no retriever to re-rank
    assert variants(apply_changes(named, PRESETS["paper"]))[-1] == LLM_ZEROSHOT
    assert variants(apply_changes(named, {"zeroshot.retriever": "sasrec"}))[-1] == LLM_ZEROSHOT


def test_a_figure_a_row_cannot_have_prints_as_a_dash_and_is_never_the_best() -> None:
    runs = [{"variant": "LLM zero-shot", "seed": 0, "test": {"ndcg@10": 0.3}},
            {"variant": "SASRec", "seed": 0, "test": {"ndcg@10": 0.1, "full ndcg@10": 0.05}}]
    rows = summarize(runs, ["SASRec", "LLM zero-shot"], ["ndcg@10", "full ndcg@10"])
    text = markdown(rows, ["ndcg@10", "full ndcg@10"], {"users": 2, "items": 9, "split": "paper"}, {},
                    protocol="200 candidates per example")
    assert "| LLM zero-shot | 1 | **0.3000 ± 0.0000** | — |" in text
    assert "| SASRec | 1 | 0.1000 ± 0.0000 | **0.0500 ± 0.0000** |" in text
    assert "paper split, 200 candidates per example" in text
