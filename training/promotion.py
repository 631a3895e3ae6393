"""Champion/challenger promotion through the MLflow registry, under ``mlflow/promotion.yaml``.

``promote`` evaluates ``@challenger`` and ``@champion`` on the same held-out examples with the same
metric code, applies the policy's gates and, when every gate passes, moves ``@champion`` to the
challenger and ``@previous-champion`` to the version it replaces. The decision, both metric sets
and the reason are tags on the challenger's model version, acted on or not (``dry_run`` only
reports). ``rollback`` points ``@champion`` back at ``@previous-champion``.

This is the registry-facing side of training: models are loaded by URI as pyfuncs, exactly as
scoring will load them, so what is judged is what will run.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml
from mlflow.exceptions import MlflowException
from pydantic import BaseModel, ConfigDict, Field, ValidationError

import mlflow
from encore.core import faults
from encore.core.atomic import new_run_id, write_report
from encore.core.config import ConfigError, EncoreConfig, registered_model_name
from encore.core.schemas import SCORING_INPUT
from encore.core.workspace import Workspace
from mlflow import MlflowClient
from training import tracking
from training.data import read_listens
from training.metrics import MISS, metrics_from_ranks

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
DEFAULT_POLICY = REPO / "mlflow" / "promotion.yaml"
CHAMPION, CHALLENGER, PREVIOUS = "champion", tracking.CHALLENGER, "previous-champion"
TAG = "encore.promotion."


class PromotionError(RuntimeError):
    """Promotion or rollback cannot run (no challenger, no previous champion); says what to do."""


class PromotionPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    primary_metric: str = Field("ndcg@10", description="metric that decides, e.g. ndcg@10, hr@10, mrr")
    min_improvement: float = Field(0.0, ge=0, description="absolute gain over the champion it needs")
    ks: list[int] = Field([5, 10, 20], min_length=1, description="cut-offs computed")
    max_users: int = Field(2000, ge=1, description="held-out users evaluated (seeded sample beyond)")
    seed: int = 0
    mask_history: bool = True
    min_catalog_share: float = Field(0.95, ge=0, le=1, description="vocabulary share in today's catalog")


def load_policy(cfg: EncoreConfig) -> PromotionPolicy:
    path = cfg.mlflow.promotion_policy or DEFAULT_POLICY
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        policy = PromotionPolicy.model_validate(data)
    except FileNotFoundError:
        raise ConfigError(f"promotion policy not found: {path}") from None
    except (yaml.YAMLError, ValidationError) as exc:
        raise ConfigError(f"invalid promotion policy {path}: {exc}") from None
    metric_names = {f"{m}@{k}" for m in ("hr", "recall", "ndcg") for k in policy.ks} | {"mrr"}
    if policy.primary_metric not in metric_names:
        raise ConfigError(f"promotion policy {path}: primary_metric {policy.primary_metric!r} is not one of "
                          f"{sorted(metric_names)}")
    return policy


@dataclass(frozen=True)
class HeldOut:
    """One example per user: the newest listen is the target, the listens before it the history."""

    user_ids: list[str]
    histories: list[list[str]]  # oldest first, at most features.sequence_length (what scoring feeds)
    completions: list[list[float]]
    targets: list[str]

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame({"user_id": self.user_ids, "track_ids": self.histories, "completions": self.completions})


def held_out(cfg: EncoreConfig, policy: PromotionPolicy) -> HeldOut:
    """Every user's newest listen from the lake (a seeded sample of ``max_users`` users).

    Leave-one-out training never trains on a user's newest listen, so neither model has seen the
    targets, whichever lake it was trained on.
    """
    df = read_listens(cfg)
    df = df[df["track_ids"].map(len) >= 2].reset_index(drop=True)
    if df.empty:
        raise PromotionError("no user has two listens in the lake: nothing to evaluate on")
    if len(df) > policy.max_users:
        keep = np.sort(np.random.default_rng(policy.seed).choice(len(df), policy.max_users, replace=False))
        df = df.iloc[keep].reset_index(drop=True)
    n = cfg.features.sequence_length
    hist = [list(t[:-1])[-n:] for t in df["track_ids"]]
    comps = [[float(c) for c in list(c[:-1])[-n:]] for c in df["completions"]]
    return HeldOut(df["user_id"].astype(str).tolist(), hist, comps, [str(t[-1]) for t in df["track_ids"]])


def evaluate_model(model: Any, data: HeldOut, policy: PromotionPolicy) -> tuple[dict[str, float], str]:
    """Metrics of a loaded pyfunc on ``data``: the target's rank in its top-max(ks) list (else a miss).

    Also returns what is wrong with the lists themselves ("" if nothing): non-finite scores, or
    users given no recommendation at all (a model with NaN weights drops every item).
    """
    k = max(policy.ks)
    out = model.predict(data.frame(), params={"k": k, "mask_history": policy.mask_history})
    ranks = []
    for listed, target in zip(out["track_ids"], data.targets, strict=True):
        listed = list(listed)
        ranks.append(listed.index(target) if target in listed else MISS)
    metrics = metrics_from_ranks(torch.tensor(ranks, dtype=torch.float64), policy.ks)
    bad_scores = sum(not all(math.isfinite(float(x)) for x in sc) for sc in out["scores"])
    empty = sum(len(t) == 0 for t in out["track_ids"])
    problems = [f"{bad_scores} list(s) with non-finite scores" if bad_scores else "",
                f"{empty} user(s) given no recommendation" if empty else "",
                *(f"{m} is {v}" for m, v in metrics.items() if not math.isfinite(v))]
    return metrics, "; ".join(p for p in problems if p)


@dataclass
class Gate:
    name: str
    passed: bool
    detail: str


@dataclass
class Decision:
    model_name: str
    decision: str  # promote | reject | noop
    reason: str
    challenger_version: str
    champion_version: str | None
    gates: list[Gate] = field(default_factory=list)
    challenger_metrics: dict[str, float] = field(default_factory=dict)
    champion_metrics: dict[str, float] = field(default_factory=dict)
    held_out_users: int = 0
    dry_run: bool = False
    acted: bool = False
    at: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _signature_gate(model: Any) -> Gate:
    """The challenger takes what scoring feeds (SCORING_INPUT) and returns ranked track lists."""
    meta = model.metadata
    sig = meta.get_input_schema() if meta is not None else None
    if sig is None:
        return Gate("signature", False, "the model has no input signature")
    have = {c.name: str(c.type) for c in sig.inputs}
    required = {c.name for c in sig.inputs if c.required}
    unknown = sorted(required - set(SCORING_INPUT))
    if unknown:
        return Gate("signature", False, f"requires input(s) scoring does not feed: {', '.join(unknown)}")
    wrong = [f"{n}: {have[n]} (scoring feeds {SCORING_INPUT[n]})" for n in have
             if n in SCORING_INPUT and _norm(have[n]) != _norm(SCORING_INPUT[n])]
    if wrong:
        return Gate("signature", False, "input type mismatch: " + "; ".join(wrong))
    outs = meta.get_output_schema()
    missing = {"user_id", "track_ids", "scores"} - {c.name for c in (outs.inputs if outs else [])}
    if missing:
        return Gate("signature", False, f"output lacks {', '.join(sorted(missing))}")
    return Gate("signature", True, "inputs " + ", ".join(f"{n}: {_norm(t)}" for n, t in have.items()))


def _norm(t: str) -> str:
    return t.replace(" ", "").replace("DataType.", "").lower()


def _catalog_gate(model: Any, cfg: EncoreConfig, policy: PromotionPolicy) -> Gate:
    """The challenger's items are tracks of today's catalog (bronze tracks table)."""
    inner = model.unwrap_python_model()
    vocab = list(getattr(inner, "track_ids", []))
    if not vocab:
        return Gate("item_map", False, "the model carries no item map")
    tracks = Workspace.at(cfg.home).tracks
    if not any(tracks.rglob("*.parquet")):
        return Gate("item_map", False, f"no track catalog under {tracks}: run `encore ingest`")
    import pyarrow.dataset as ds

    known = set(ds.dataset(tracks, format="parquet").to_table(columns=["track_id"]).column("track_id").to_pylist())
    share = sum(t in known for t in vocab) / len(vocab)
    ok = share >= policy.min_catalog_share
    return Gate("item_map", ok, f"{share:.1%} of {len(vocab):,} model items are catalog tracks "
                                f"(needs {policy.min_catalog_share:.0%})")


def _load(uri: str) -> tuple[Any | None, str]:
    try:
        return mlflow.pyfunc.load_model(uri), ""
    except Exception as exc:  # any failure to load is the gate's finding, not a crash
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"


def _alias_version(client: MlflowClient, name: str, alias: str) -> str | None:
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def promote(cfg: EncoreConfig, model_name: str | None = None, dry_run: bool = False,
            policy: PromotionPolicy | None = None) -> Decision:
    """Judge ``@challenger`` against ``@champion``; move the aliases when every gate passes."""
    policy = policy or load_policy(cfg)
    name = registered_model_name(cfg, model_name)
    tracking.configure(cfg)
    client = MlflowClient()
    challenger = _alias_version(client, name, CHALLENGER)
    if challenger is None:
        raise PromotionError(f"registered model {name!r} has no @{CHALLENGER}: run `encore train` first")
    champion = _alias_version(client, name, CHAMPION)
    d = Decision(name, "reject", "", challenger, champion, dry_run=dry_run, at=datetime.now(UTC).isoformat())
    if champion == challenger:
        d.decision, d.reason = "noop", f"version {challenger} is already @{CHAMPION}"
        return _finish(cfg, client, d)

    model, err = _load(f"models:/{name}/{challenger}")
    d.gates.append(Gate("loads", model is not None, err or "pyfunc and artifacts load"))
    if model is not None:
        d.gates.append(_signature_gate(model))
        d.gates.append(_catalog_gate(model, cfg, policy))
    if all(g.passed for g in d.gates):
        data = held_out(cfg, policy)
        d.held_out_users = len(data.user_ids)
        d.challenger_metrics, problems = evaluate_model(model, data, policy)
        d.gates.append(Gate("metrics_finite", not problems, problems or "metrics and scores finite, no empty list"))
        if not problems and champion is not None:
            d.gates.append(_compare(name, champion, data, policy, d))
    failed = [g for g in d.gates if not g.passed]
    if failed:
        d.reason = "; ".join(f"{g.name}: {g.detail}" for g in failed)
    else:
        d.decision = "promote"
        d.reason = ("first champion; sanity gates passed" if champion is None else
                    next(g.detail for g in d.gates if g.name == "better"))
    return _finish(cfg, client, d)


def _compare(name: str, champion: str, data: HeldOut, policy: PromotionPolicy, d: Decision) -> Gate:
    model, err = _load(f"models:/{name}/{champion}")
    if model is None:
        # A champion that no longer loads cannot serve either: the challenger need not beat it.
        log.warning("champion version %s does not load (%s): judging the challenger on sanity gates", champion, err)
        return Gate("better", True, f"champion v{champion} does not load ({err}); sanity gates decide")
    d.champion_metrics, _ = evaluate_model(model, data, policy)
    m = policy.primary_metric
    new, old = d.challenger_metrics[m], d.champion_metrics[m]
    gain = new - old if math.isfinite(old) else math.inf
    ok = gain > policy.min_improvement  # strictly: a tie keeps the champion
    return Gate("better", ok, f"{m} {new:.4f} vs champion v{champion} {old:.4f} "
                              f"({gain:+.4f}; needs > {policy.min_improvement:+.4f})")


def _finish(cfg: EncoreConfig, client: MlflowClient, d: Decision) -> Decision:
    # The decision's record first, then the aliases: a run killed in between is judged again by the
    # rerun (nothing moved yet); a run killed after @champion moved is a noop for the rerun, and its
    # version already carries the record. @previous-champion moves before @champion, so @champion
    # always names a version that passed its gates, never nothing.
    if not d.dry_run:
        if d.decision != "noop":
            tags = {"decision": d.decision, "reason": d.reason[:5000], "at": d.at,
                    "champion_version": d.champion_version or "",
                    "challenger_metrics": json.dumps(d.challenger_metrics),
                    "champion_metrics": json.dumps(d.champion_metrics),
                    "gates": json.dumps([asdict(g) for g in d.gates])[:5000],
                    "held_out_users": str(d.held_out_users)}
            for k, v in tags.items():
                client.set_model_version_tag(d.model_name, d.challenger_version, TAG + k, v)
        if d.decision == "promote":
            faults.point("promote.recorded")
            if d.champion_version is not None:
                client.set_registered_model_alias(d.model_name, PREVIOUS, d.champion_version)
            faults.point("promote.previous_set")  # kill test: @previous-champion moved, @champion not
            client.set_registered_model_alias(d.model_name, CHAMPION, d.challenger_version)
            d.acted = True
        write_report(Workspace.at(cfg.home).reports("promote"), new_run_id(), d.to_dict())
    log.info("promotion of %s v%s: %s (%s)", d.model_name, d.challenger_version, d.decision, d.reason)
    return d


@dataclass
class Rollback:
    model_name: str
    champion_version: str  # the champion now (was @previous-champion)
    rolled_back_version: str


def rollback(cfg: EncoreConfig, model_name: str | None = None) -> Rollback:
    """Point ``@champion`` back at ``@previous-champion`` (which is then cleared)."""
    name = registered_model_name(cfg, model_name)
    tracking.configure(cfg)
    client = MlflowClient()
    current = _alias_version(client, name, CHAMPION)
    previous = _alias_version(client, name, PREVIOUS)
    if previous is None:
        raise PromotionError(f"registered model {name!r} has no @{PREVIOUS}: nothing to roll back to")
    client.set_registered_model_alias(name, CHAMPION, previous)
    client.delete_registered_model_alias(name, PREVIOUS)
    at = datetime.now(UTC).isoformat()
    if current is not None:
        client.set_model_version_tag(name, current, "encore.rolled_back_at", at)
    client.set_model_version_tag(name, previous, "encore.restored_at", at)
    log.info("rolled %s back: @%s v%s -> v%s", name, CHAMPION, current, previous)
    return Rollback(name, previous, current or "")
