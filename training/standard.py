"""``encore bench standard``: train and evaluate on a standard sequential benchmark file.

No Spark, no Feast: the file (``user item item ...`` per line, or ``user item`` per line in time
order; 1-indexed; leave-one-out) goes straight to the same models, trainer and evaluator, and each
run is tracked in MLflow like any other. Item attributes (``{"item": [attribute ids]}``, as the
S3-Rec/E4SRec releases ship for Beauty) become the metadata modality.

``standard_table`` runs several models over several seeds and summarises them as mean ± std
beside the published figures (``ANCHORS``) for the dataset and protocol. Finished runs are kept in
``<home>/outputs/bench-standard/<dataset>-<protocol>/runs.jsonl`` keyed by config and data, so a
killed table resumes where it stopped.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from encore.core.config import EncoreConfig, TrainConfig
from encore.core.workspace import Workspace
from training.ablation import finished_runs, mean_std, record_run, run_config, run_key
from training.data import Dataset, load_standard, standard_attributes
from training.metrics import evaluate_ranks, metrics_from_ranks
from training.models.base import ContentTable
from training.train import TrainOutcome, train

log = logging.getLogger(__name__)

METRICS = ["hr@5", "hr@10", "ndcg@5", "ndcg@10"]

# What each name in ``--models`` trains. "e4srec" reads ID + the attribute file where one is given.
VARIANTS: dict[str, dict[str, Any]] = {
    "sasrec": {"model": "sasrec"},
    "sasrec-ligr": {"model": "sasrec", "id.block": "ligr"},
    "bert4rec": {"model": "bert4rec"},
    "gru4rec": {"model": "gru4rec"},
    "e4srec-id": {"model": "e4srec", "e4srec.modalities": ["id"]},
    "e4srec": {"model": "e4srec", "e4srec.modalities": ["id", "meta"]},
    "content": {"model": "content"},
}

# Published figures, per (dataset, protocol): {"model", "source", metric: value or None}.
# Read from secondary copies of the papers' tables (the [10/11] issue's anchor table, and our own
# reading of E4SRec's Table 2); no copy of the papers is available offline here to re-check digits.
# Beauty here is the S3-Rec split that shared/datasets/beauty ships (leave-one-out). The BCE-era
# rows (GRU4Rec, BERT4Rec, SASRec with 1 negative) are far below what a softmax loss gives.
_TIGER = "TIGER (Rajput et al., NeurIPS 2023) Table 1, as reprinted"
_ESASREC = "eSASRec (arXiv 2508.06450) benchmark, as listed"
ANCHORS: dict[tuple[str, str], list[dict[str, Any]]] = {
    ("beauty", "full"): [
        {"model": "GRU4Rec", "source": _TIGER, "hr@10": 0.0283, "ndcg@10": 0.0137},
        {"model": "BERT4Rec", "source": _TIGER, "hr@10": 0.0347, "ndcg@10": 0.0170},
        {"model": "SASRec (BCE, 1 negative)", "source": _TIGER, "hr@10": 0.0605, "ndcg@10": 0.0318},
        {"model": "SASRec (BCE)", "source": "E4SRec (WWW 2024) Table 2, ICLRec setting",
         "hr@5": 0.0365, "hr@10": 0.0627, "ndcg@5": 0.0236, "ndcg@10": 0.0281},
        {"model": "TIGER", "source": _TIGER, "hr@10": 0.0648, "ndcg@10": 0.0384},
        {"model": "E4SRec (Llama2-13B)", "source": "E4SRec (WWW 2024) Table 2",
         "hr@5": 0.0527, "hr@10": 0.0753, "ndcg@5": 0.0376, "ndcg@10": 0.0448},
        {"model": "ActionPiece", "source": "as listed by eSASRec's benchmark", "hr@10": 0.0775, "ndcg@10": 0.0424},
        {"model": "HSTU (re-run)", "source": "as listed by eSASRec's benchmark", "hr@10": 0.0788, "ndcg@10": 0.0439},
        {"model": "DuoRec", "source": "FEARec table, as reprinted", "hr@10": 0.0845, "ndcg@10": 0.0443},
        {"model": "SASRec + sampled softmax", "source": _ESASREC, "hr@10": 0.0921, "ndcg@10": 0.0531},
        {"model": "eSASRec (LiGR, sampled softmax)", "source": _ESASREC, "hr@10": 0.0928, "ndcg@10": 0.0523},
        {"model": "RecBole 1.2.1 SASRec", "source": "measured on this machine (shared/STACK-NOTES.md), 6 epochs",
         "hr@5": 0.0478, "hr@10": 0.0723, "ndcg@5": 0.0278, "ndcg@10": 0.0357},
    ],
    ("beauty", "sampled-100"): [
        {"model": "SASRec", "source": "S3-Rec (CIKM 2020) Table 2, 99 sampled negatives",
         "hr@5": 0.3741, "hr@10": 0.4696, "ndcg@5": 0.2848, "ndcg@10": 0.3156},
    ],
}


def dataset_name(data_file: Path) -> str:
    """The anchor key of a benchmark file: its stem, lower case (``Beauty.txt`` -> ``beauty``)."""
    return data_file.stem.lower()


def anchors(data_file: Path, protocol: str) -> list[dict[str, Any]]:
    """Published rows for this dataset and protocol; [] where none are on record."""
    return ANCHORS.get((dataset_name(data_file), protocol), [])


@dataclass
class StandardInputs:
    """A benchmark file read once for every run of a table."""

    cfg: EncoreConfig
    data: Dataset
    content: ContentTable
    has_attributes: bool


def variant_config(tc: TrainConfig, name: str, seed: int) -> TrainConfig:
    """``tc`` with ``--models`` entry ``name`` and ``seed`` (``training.ablation.run_config``: ID
    models train ``train.id.epochs``, so ``compare``'s paired reading is E4SRec against its own table)."""
    return run_config(tc, VARIANTS[name], seed)


def _protocol_config(cfg: EncoreConfig, protocol: str) -> EncoreConfig:
    tc = cfg.train
    if protocol == "sampled-100":
        tc = tc.model_copy(update={"eval": tc.eval.model_copy(update={"protocol": "sampled", "num_candidates": 100})})
    elif protocol != "full":
        raise ValueError(f"unknown protocol {protocol!r}: full or sampled-100")
    return cfg.model_copy(update={"train": tc})


def read_inputs(cfg: EncoreConfig, data_file: Path, attributes: Path | None, protocol: str) -> StandardInputs:
    cfg = _protocol_config(cfg, protocol)
    data = load_standard(data_file, cfg.train)
    content = standard_attributes(attributes, data.vocab) if attributes else ContentTable()
    return StandardInputs(cfg, data, content, attributes is not None)


def _e4srec_modalities(tc: TrainConfig, has_attributes: bool) -> TrainConfig:
    # A standard file has no lyrics, audio or completions: E4SRec reads ID and attributes only.
    wanted = [m for m in tc.e4srec.modalities if m == "id" or (m == "meta" and has_attributes)]
    return tc.model_copy(update={"e4srec": tc.e4srec.model_copy(update={"modalities": wanted})})


def run_one(inputs: StandardInputs, tc: TrainConfig, name: str, protocol: str) -> tuple[TrainOutcome, float]:
    """Train and test one config on the inputs; returns the outcome and its wall seconds."""
    if tc.model == "e4srec":
        tc = _e4srec_modalities(tc, inputs.has_attributes)
    start = time.monotonic()
    out = train(inputs.cfg.model_copy(update={"train": tc}), data=inputs.data, content=inputs.content,
                register=False, log_model=False, run_name=f"standard: {name} seed {tc.seed} ({protocol})",
                tags={"encore.bench": "standard", "encore.protocol": protocol, "encore.variant": name})
    return out, time.monotonic() - start


def unmasked_test(out: TrainOutcome, inputs: StandardInputs, tc: TrainConfig) -> dict[str, float]:
    """The same trained model's test metrics with the history left in the ranking.

    Encore masks the history window at evaluation; published full-ranking figures mostly do not.
    Only re-evaluation, no training: the trained model is scored a second time."""
    if out.trained is None or tc.eval.protocol != "full":
        return {}
    t = inputs.data.test
    settings = tc.eval.model_copy(update={"mask_history": False})
    first = next(iter(out.trained.parameters()), None)
    device = first.device if first is not None else "cpu"
    ranks = evaluate_ranks(out.trained, t.items, t.completion, t.targets, t.history, settings,
                           batch_size=max(64, tc.batch_size), device=str(device), seed=tc.seed)
    return metrics_from_ranks(ranks, tc.eval.ks)


def bench_standard(cfg: EncoreConfig, data_file: Path, attributes: Path | None = None,
                   protocol: str = "full") -> tuple[TrainOutcome, list[dict[str, Any]]]:
    """Train ``cfg.train.model`` once on ``data_file``; return the outcome and the published rows."""
    inputs = read_inputs(cfg, data_file, attributes, protocol)
    out, _ = run_one(inputs, inputs.cfg.train, cfg.train.model, protocol)
    return out, anchors(data_file, protocol)


def summarize(results: list[dict[str, Any]], names: list[str]) -> list[dict[str, Any]]:
    """One row per variant: mean ± std of each metric (masked and unmasked), epochs and wall time."""
    rows = []
    for name in names:
        runs = [r for r in results if r["variant"] == name]
        if not runs:
            continue
        row: dict[str, Any] = {"variant": name, "seeds": [r["seed"] for r in runs],
                               "epochs": [r["epochs"] for r in runs], "best_epoch": [r["best_epoch"] for r in runs],
                               "wall_s": mean_std([r["wall_s"] for r in runs])}
        for m in METRICS:
            row[m] = mean_std([r["test"][m] for r in runs])
            if all(r.get("unmasked") for r in runs):
                row[f"unmasked {m}"] = mean_std([r["unmasked"][m] for r in runs])
        rows.append(row)
    return rows


def compare(results: list[dict[str, Any]], name: str = "e4srec", metric: str = "ndcg@10") -> dict[str, dict[str, Any]]:
    """``name``'s ``metric`` against every other variant in ``results``: does it win by more than 2σ?

    Two readings of "2σ of the difference": ``two_std`` treats the two means as independent (the
    ablation's verdict: 2 · hypot of their stds over seeds); ``paired_two_std`` is 2 · the std of
    the per-seed differences over the seeds both ran, which is smaller when a seed moves both alike
    (E4SRec's ID table is the same seed's SASRec). A win needs the gap above both.
    """
    by_seed: dict[str, dict[int, float]] = defaultdict(dict)
    for r in results:
        by_seed[r["variant"]][r["seed"]] = r["test"][metric]
    if name not in by_seed:
        return {}
    mine = by_seed[name]
    out = {}
    for other, theirs in by_seed.items():
        if other == name:
            continue
        a, b = mean_std(list(mine.values())), mean_std(list(theirs.values()))
        common = sorted(set(mine) & set(theirs))
        diffs = [mine[s] - theirs[s] for s in common]
        paired = 2 * mean_std(diffs)[1] if len(diffs) > 1 else float("nan")
        gap = a[0] - b[0]
        two_std = 2 * float(np.hypot(a[1], b[1]))
        out[other] = {"gap": gap, "two_std": two_std, "paired_two_std": paired, "paired_seeds": common,
                      "beats": bool(gap > two_std and len(diffs) > 1 and gap > paired)}
    return out


def split_table(results: list[dict[str, Any]], names: list[str], metric: str = "ndcg@10") -> list[dict[str, Any]]:
    """Mean test ``metric`` over seeds per (facet, bucket) of ``TrainOutcome.by_popularity``:
    training plays of the newest history item and of the target, and history length."""
    cells: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    examples: dict[tuple[str, str], int] = {}
    for r in results:
        if r["variant"] not in names:
            continue
        for b in r.get("by_popularity") or []:
            key = (b["facet"], b.get("bucket", b.get("plays")))  # "plays": runs recorded before the history facet
            cells[key][r["variant"]].append(b[metric])
            examples[key] = b["examples"]
    return [{"facet": f, "bucket": k, "examples": examples[(f, k)],
             **{n: float(np.mean(v[n])) if v.get(n) else None for n in names}} for (f, k), v in cells.items()]


def _cell(v: tuple[float, float] | None, seeds: int) -> str:
    if v is None:
        return "—"
    return f"{v[0]:.4f} ± {v[1]:.4f}" if seeds > 1 else f"{v[0]:.4f}"


def markdown(rows: list[dict[str, Any]], published: list[dict[str, Any]], info: dict[str, Any],
             protocol: str, budget: str, versus: dict[str, dict[str, Any]] | None = None,
             splits: list[dict[str, Any]] | None = None) -> str:
    """Encore's rows (mean ± std over seeds) and, below them, the published figures, marked as such;
    then E4SRec + attributes against the other rows (``compare``) and the splits (``split_table``)."""
    unmasked = [f"unmasked {m}" for m in ("hr@10", "ndcg@10")]
    lines = [f"{info.get('users')} users × {info.get('items')} items, protocol {protocol}; {budget}.", "",
             "| Encore model | seeds | " + " | ".join(METRICS + unmasked) + " | epochs (best) | wall per run |",
             "|---|---|" + "---|" * (len(METRICS) + len(unmasked)) + "---|---|"]
    for r in rows:
        n = len(r["seeds"])
        cells = [_cell(r.get(m), n) for m in METRICS + unmasked]
        epochs = "/".join(str(e) for e in r["epochs"])
        best = "/".join(str(b) for b in r["best_epoch"])
        wall = f"{r['wall_s'][0] / 60:.1f} min"
        lines.append(f"| {r['variant']} | {n} | " + " | ".join(cells) + f" | {epochs} ({best}) | {wall} |")
    if published:
        lines += ["", "Published figures (not run here; from the papers' tables as reprinted):", "",
                  "| published model | " + " | ".join(METRICS) + " | source |", "|---|" + "---|" * (len(METRICS) + 1)]
        for p in published:
            cells = [f"{p[m]:.4f}" if p.get(m) is not None else "—" for m in METRICS]
            lines.append(f"| {p['model']} | " + " | ".join(cells) + f" | {p['source']} |")
    else:
        lines += ["", "No published figures are on record for this dataset and protocol."]
    if versus:
        lines += ["", "e4srec (ID + the attribute file), test ndcg@10 against each model (gap; 2σ of "
                      "independent means; 2σ of the per-seed differences):", ""]
        for other, m in versus.items():
            lines.append(f"- {other}: {m['gap']:+.4f} (2σ {m['two_std']:.4f}; paired 2σ {m['paired_two_std']:.4f} "
                         f"over seeds {m['paired_seeds']}) → {'beats' if m['beats'] else 'does NOT beat'} it")
    if splits:
        names = [k for k in splits[0] if k not in ("facet", "bucket", "examples")]
        lines += ["", "Test ndcg@10 by training plays of the newest history item and of the target, and by "
                      "history length (mean over seeds):", "",
                  "| facet | bucket | examples | " + " | ".join(names) + " |", "|---|---|---|" + "---|" * len(names)]
        for b in splits:
            cells = [f"{b[n]:.4f}" if b[n] is not None else "—" for n in names]
            lines.append(f"| {b['facet']} | {b['bucket']} | {b['examples']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def standard_table(cfg: EncoreConfig, data_file: Path, attributes: Path | None, protocol: str,
                   names: list[str], seeds: list[int], out_dir: Path | None = None) -> dict[str, Any]:
    """Run every (variant, seed) not yet done; return rows, results and the markdown's path."""
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown model {unknown[0]!r}: choose from {', '.join(VARIANTS)}")
    inputs = read_inputs(cfg, data_file, attributes, protocol)
    out_dir = out_dir or Workspace.at(cfg.home).outputs / "bench-standard" / f"{dataset_name(data_file)}-{protocol}"
    out_dir.mkdir(parents=True, exist_ok=True)
    done_file = out_dir / "runs.jsonl"
    done = finished_runs(done_file)
    results = []
    for name in names:
        for seed in seeds:
            tc = variant_config(inputs.cfg.train, name, seed)
            key = run_key(tc, {**inputs.data.info, "attributes": str(attributes), "protocol": protocol})
            if key in done:
                log.info("standard: %s seed %d already done (run %s)", name, seed, done[key]["run_id"])
                results.append(done[key])
                continue
            log.info("standard: %s, seed %d", name, seed)
            out, wall = run_one(inputs, tc, name, protocol)
            rec = {"key": key, "variant": name, "seed": seed, "run_id": out.run_id, "test": out.test,
                   "unmasked": unmasked_test(out, inputs, tc), "wall_s": wall,
                   "epochs": len(out.fit.history) if out.fit else 0,
                   "best_epoch": out.fit.best_epoch if out.fit else 0,
                   "samples_per_s": out.fit.samples_per_s if out.fit else None,
                   "popularity": out.baseline,
                   "by_popularity": out.by_popularity.to_dict("records") if out.by_popularity is not None else None}
            record_run(done_file, rec)
            results.append(rec)
    rows = summarize(results, names)
    tc = inputs.cfg.train
    id_epochs = tc.id.epochs or tc.epochs
    epochs = (f"{tc.epochs} epochs" if id_epochs == tc.epochs
              else f"{id_epochs} epochs for the ID models and E4SRec's encoder, {tc.epochs} for E4SRec")
    budget = (f"at most {epochs} (patience {tc.patience}), batch {tc.batch_size}, lr {tc.lr}, "
              f"loss {tc.id.loss}, max length {tc.max_len}"
              + (", E4SRec batches grouped by length" if tc.e4srec.group_by_length else ""))
    md = out_dir / "table.md"
    md.write_text(markdown(rows, anchors(data_file, protocol), inputs.data.info, protocol, budget,
                           versus=compare(results), splits=split_table(results, names)))
    return {"rows": rows, "results": results, "markdown": md, "info": inputs.data.info}
