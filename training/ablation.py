"""The paper's ablation, on this workspace's data: every model and E4SRec variant, several seeds.

``ablation(cfg)`` trains and evaluates each variant for each seed with ``training.train.train``
(each run tracked in MLflow, none registered), then writes a markdown table of mean ± std and a
bar chart, and logs both to a parent MLflow run. Finished runs are kept in
``<home>/outputs/bench-table/runs.jsonl`` keyed by variant, seed and config, so a killed table
resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import mlflow
from encore.core.config import MODALITIES, EncoreConfig, TrainConfig
from encore.core.workspace import Workspace
from training import tracking
from training.data import Dataset, content_table, load_lake
from training.models import ID_ENCODERS
from training.train import train

log = logging.getLogger(__name__)

ID_ONLY = ("SASRec", "BERT4Rec", "GRU4Rec", "E4SRec (ID)")


@dataclass(frozen=True)
class Variant:
    name: str
    changes: dict[str, Any]


LLM_ZEROSHOT = Variant("LLM zero-shot", {"model": "llm-zeroshot"})


def variants(tc: TrainConfig | None = None) -> list[Variant]:
    """The rows of the paper's ablation table, in order; the LLM zero-shot row last, where ``tc``
    names its LM (train.zeroshot.backbone) and it can rank under ``tc``'s protocol."""
    rows = [Variant("SASRec", {"model": "sasrec"}), Variant("BERT4Rec", {"model": "bert4rec"}),
            Variant("GRU4Rec", {"model": "gru4rec"}), Variant("Content zero-shot", {"model": "content"}),
            Variant("E4SRec (ID)", {"model": "e4srec", "e4srec.modalities": ["id"]})]
    for m, label in (("lyrics", "lyrics"), ("audio", "audio"), ("meta", "metadata"), ("completion", "completion")):
        rows.append(Variant(f"E4SRec + {label}", {"model": "e4srec", "e4srec.modalities": ["id", m]}))
    for fusion in ("concat", "weighted", "xattn", "film"):
        rows.append(Variant(f"E4SRec + all ({fusion})", {"model": "e4srec", "e4srec.modalities": list(MODALITIES),
                                                        "e4srec.fusion": fusion}))
    z = tc.zeroshot if tc is not None else None
    if z is not None and z.backbone is not None and (tc.eval.protocol != "full" or z.retriever != "none"):
        rows.append(LLM_ZEROSHOT)
    return rows


def apply_changes(tc: TrainConfig, changes: dict[str, Any]) -> TrainConfig:
    data = tc.model_dump(mode="json")
    for key, value in changes.items():
        node = data
        *path, last = key.split(".")
        for k in path:
            node = node[k]
        node[last] = value
    return TrainConfig.model_validate(data)


def run_config(tc: TrainConfig, changes: dict[str, Any], seed: int) -> TrainConfig:
    """``tc`` with one row's ``changes`` and ``seed``. An ID model trains ``train.id.epochs`` where
    set, exactly like the encoder E4SRec takes its table from, so at one seed the SASRec row is
    E4SRec's ID table."""
    changes = {**changes, "seed": seed}
    if changes["model"] in ID_ENCODERS:
        changes["epochs"] = tc.id.epochs or tc.epochs
    return apply_changes(tc, changes)


def variant_config(tc: TrainConfig, v: Variant, seed: int) -> TrainConfig:
    """``tc`` with one table row's changes and seed."""
    return run_config(tc, v.changes, seed)


def run_key(tc: TrainConfig, data_info: dict[str, Any]) -> str:
    """A finished run's key: its training config and the data it read."""
    return hashlib.sha256(json.dumps([tc.model_dump(mode="json"), data_info], sort_keys=True,
                                     default=str).encode()).hexdigest()[:16]


def finished_runs(path: Path) -> dict[str, dict[str, Any]]:
    """The runs a table has finished, by key: one JSON record a line (``record_run``)."""
    if not path.exists():
        return {}
    return {rec["key"]: rec for rec in map(json.loads, path.read_text().splitlines())}


def record_run(path: Path, rec: dict[str, Any]) -> None:
    """Append one finished run; a kill between runs loses nothing already written."""
    with path.open("a") as fh:
        fh.write(json.dumps(rec) + "\n")


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample std over seeds (0 for one value)."""
    a = np.asarray(values, dtype=float)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def summarize(results: list[dict[str, Any]], names: list[str], metrics: list[str]) -> list[dict[str, Any]]:
    """Mean and (sample) std over seeds, per variant and metric."""
    rows = []
    for name in names:
        runs = [r for r in results if r["variant"] == name]
        if not runs:
            continue
        row: dict[str, Any] = {"variant": name, "seeds": len(runs)}
        for m in metrics:
            # NaN where a run has no such figure (full ranking of a model that ranks candidates only).
            row[m] = mean_std([r["test"].get(m, float("nan")) for r in runs])
        rows.append(row)
    return rows


POPULARITY = "Popularity (training plays)"


def popularity_row(results: list[dict[str, Any]], metrics: list[str]) -> dict[str, Any] | None:
    """The popularity ranking on the same test examples, as a table row: the level every trained
    row must leave. Each run records it (``TrainOutcome.baseline``); it does not depend on the seed."""
    runs = [r["popularity"] for r in results if r.get("popularity")]
    if not runs:
        return None
    row: dict[str, Any] = {"variant": POPULARITY, "seeds": 1}
    for m in metrics:
        row[m] = (float(np.mean([p.get(m, float("nan")) for p in runs])), 0.0)
    return row


def verdict(rows: list[dict[str, Any]], metric: str = "ndcg@10") -> dict[str, Any]:
    """Does the best multimodal E4SRec beat every ID-only model by more than 2 std (of both)?"""
    multi = [r for r in rows if r["variant"].startswith("E4SRec + all")]
    ids = [r for r in rows if r["variant"] in ID_ONLY]
    if not multi or not ids:
        return {}
    best = max(multi, key=lambda r: r[metric][0])
    margins = {}
    for r in ids:
        gap = best[metric][0] - r[metric][0]
        # two standard deviations of the difference of two independent means over seeds
        two_std = 2 * float(np.hypot(best[metric][1], r[metric][1]))
        margins[r["variant"]] = {"gap": gap, "two_std": two_std, "beats": gap > two_std}
    return {"best": best["variant"], "metric": metric, "margins": margins,
            "beats_all": all(m["beats"] for m in margins.values())}


def markdown(rows: list[dict[str, Any]], metrics: list[str], info: dict[str, Any], v: dict[str, Any],
             test_examples: int | None = None, protocol: str | None = None) -> str:
    # Users with too few listens have no test example: say how many examples the metrics average.
    examples = f"{test_examples} test examples from " if test_examples is not None else ""
    ranking = protocol or "full ranking, history masked"
    lines = [f"Test metrics on {examples}{info.get('users')} users × {info.get('items')} items "
             f"({info.get('split')} split, {ranking}); mean ± std over seeds.", "",
             "| model | seeds | " + " | ".join(metrics) + " |",
             "|---|---|" + "---|" * len(metrics)]
    # Bold marks the best model; the popularity row is the floor, never a contender.
    models = [r for r in rows if r["variant"] != POPULARITY] or rows
    best = {m: max((r[m][0] for r in models if not np.isnan(r[m][0])), default=None) for m in metrics}
    for r in rows:
        cells = []
        for m in metrics:
            mean, std = r[m]
            if np.isnan(mean):
                cells.append("—")
                continue
            cell = f"{mean:.4f} ± {std:.4f}"
            cells.append(f"**{cell}**" if mean == best[m] else cell)
        lines.append(f"| {r['variant']} | {r['seeds']} | " + " | ".join(cells) + " |")
    if v:
        lines += ["", f"Best multimodal variant: {v['best']}. Its {v['metric']} against each ID-only model "
                      "(gap; 2 × std of the difference):"]
        for name, m in v["margins"].items():
            lines.append(f"- {name}: {m['gap']:+.4f} (2σ {m['two_std']:.4f}) → "
                         f"{'beats' if m['beats'] else 'does NOT beat'} it by more than 2σ")
    return "\n".join(lines) + "\n"


def bar_chart(rows: list[dict[str, Any]], metric: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    floor = next((r[metric][0] for r in rows if r["variant"] == POPULARITY), None)
    rows = [r for r in rows if r["variant"] != POPULARITY]
    names = [r["variant"] for r in rows]
    means = [r[metric][0] for r in rows]
    stds = [r[metric][1] for r in rows]
    colors = ["#8c8c8c" if n in ID_ONLY else "#4c9f70" if "zero-shot" in n else "#3b6fb6" for n in names]
    fig, ax = plt.subplots(figsize=(8, 0.38 * len(rows) + 1.2))
    y = np.arange(len(rows))[::-1]
    ax.barh(y, means, xerr=stds, color=colors, capsize=3)
    if floor is not None:
        # The level a model that learned nothing but the item unigram reaches.
        ax.axvline(floor, color="#c0392b", linestyle="--", linewidth=1.2, label=f"popularity ({floor:.4f})")
        ax.legend(loc="lower right")
    ax.set_yticks(y, names)
    ax.set_xlabel(f"test {metric} (mean ± std over seeds)")
    ax.set_title("Ablation: ID-only (grey), zero-shot (green), E4SRec variants (blue)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def ablation(cfg: EncoreConfig, seeds: list[int], only: list[str] | None = None,
             data: Dataset | None = None, out_dir: Path | None = None) -> dict[str, Any]:
    """Run the table; returns rows, verdict and the paths of the markdown and PNG it wrote."""
    chosen = [v for v in variants(cfg.train) if not only or v.name in only]
    if any(v.changes["model"] == "e4srec" for v in chosen):
        from training.models.quantization import check_quantization_supported

        check_quantization_supported(cfg.train.e4srec.quantization)  # before hours of ID rows, not after
    data = data or load_lake(cfg)
    needs_content = any(v.changes["model"] in ("content", "e4srec") for v in chosen)
    content = content_table(cfg, data.vocab, ("lyrics", "audio", "meta")) if needs_content else None
    ws = Workspace.at(cfg.home)
    out_dir = out_dir or ws.outputs / "bench-table"
    out_dir.mkdir(parents=True, exist_ok=True)
    done_file = out_dir / "runs.jsonl"
    done = finished_runs(done_file)
    results = []
    for v in chosen:
        for seed in seeds:
            tc = variant_config(cfg.train, v, seed)
            key = run_key(tc, data.info)
            if key in done:
                results.append(done[key])
                continue
            log.info("table: %s, seed %d", v.name, seed)
            out = train(cfg.model_copy(update={"train": tc}), data=data, content=content, register=False,
                        log_model=False, run_name=f"table: {v.name} seed {seed}",
                        tags={"encore.bench": "table", "encore.variant": v.name})
            # Under a candidates protocol the full-ranking figures ride along as "full <metric>".
            test = {**out.test, **{f"full {k}": x for k, x in out.test_full.items()}}
            rec = {"key": key, "variant": v.name, "seed": seed, "run_id": out.run_id, "test": test,
                   "best_epoch": out.fit.best_epoch if out.fit else None,
                   "samples_per_s": out.fit.samples_per_s if out.fit else None,
                   "popularity": out.baseline,
                   "by_popularity": out.by_popularity.to_dict("records") if out.by_popularity is not None else None}
            record_run(done_file, rec)
            results.append(rec)
    ev = cfg.train.eval
    metrics = [f"{m}@{k}" for m in ("hr", "ndcg") for k in (5, 10)] + ["mrr"]
    protocol = None
    if ev.protocol != "full":
        # The paper reports @20 over 200 candidates; the full-ranking NDCG@10 stands beside it.
        metrics = [f"{m}@{k}" for m in ("recall", "ndcg") for k in (5, 10, 20)] + ["full ndcg@10"]
        protocol = (f"{ev.num_candidates + 1} candidates per example (sampled metrics can reorder models; "
                    f"'full ndcg@10' ranks every item), history {'masked' if ev.mask_history else 'not masked'}")
    rows = summarize(results, [v.name for v in chosen], metrics)
    v = verdict(rows)
    floor = popularity_row(results, metrics)
    rows += [floor] if floor else []
    md = out_dir / "ablation.md"
    md.write_text(markdown(rows, metrics, data.info, v, test_examples=len(data.test), protocol=protocol))
    png = bar_chart(rows, "ndcg@10", out_dir / "ablation_ndcg10.png")
    with tracking.run(cfg, "bench table", tags={"encore.bench": "table-summary"}):
        mlflow.log_params({"seeds": ",".join(map(str, seeds)), "variants": len(chosen)})
        mlflow.log_artifact(str(md))
        mlflow.log_artifact(str(png))
        mlflow.log_dict({"rows": rows, "verdict": v}, "ablation.json")
    return {"rows": rows, "verdict": v, "markdown": md, "chart": png, "results": results}
