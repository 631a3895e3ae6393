"""MLflow for every training run: experiment setup, params, tags, plots and registration.

The registry side of training lives here: a trained recommender is logged as a pyfunc model
(``training/pyfunc.py``) and registered under ``mlflow.model_name`` with alias ``challenger``.
Scoring later loads ``models:/<name>@champion`` and never imports this package.
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
from encore.core.config import EncoreConfig
from mlflow import MlflowClient

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
CHALLENGER = "challenger"


def configure(cfg: EncoreConfig) -> str:
    """Point MLflow at the config's tracking/registry stores; return the experiment id.

    The experiment is created with an explicit artifact location: with a sqlite tracking URI and
    none, MLflow writes artifacts to ./mlruns of whatever directory it runs in (STACK-NOTES).
    """
    if cfg.mlflow.tracking_uri is None:
        (cfg.home / "mlflow").mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(cfg.mlflow_tracking_uri())
    mlflow.set_registry_uri(cfg.mlflow_registry_uri())
    exp = mlflow.get_experiment_by_name(cfg.mlflow.experiment)
    if exp is None:
        exp_id = mlflow.create_experiment(cfg.mlflow.experiment, artifact_location=cfg.mlflow_artifact_location())
    else:
        exp_id = exp.experiment_id
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config → ``{"train.e4srec.lora.r": "16", ...}`` (MLflow params are flat strings)."""
    out: dict[str, str] = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = str(v)[:6000]
    return out


def git_commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True,
                               timeout=10).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@contextlib.contextmanager
def run(cfg: EncoreConfig, name: str, run_id: str | None = None, nested: bool = False,
        tags: dict[str, str] | None = None) -> Iterator[mlflow.ActiveRun]:
    """An MLflow run on the configured store; ``run_id`` continues an interrupted one."""
    configure(cfg)
    with mlflow.start_run(run_id=run_id, run_name=None if run_id else name, nested=nested,
                          tags=None if run_id else tags) as active:
        yield active


def metric_name(key: str) -> str:
    """MLflow metric keys allow no "@": ``ndcg@10`` is logged as ``ndcg_at_10``."""
    return key.replace("@", "_at_")


def log_metrics(prefix: str, metrics: dict[str, float], step: int | None = None) -> None:
    mlflow.log_metrics({f"{prefix}{metric_name(k)}": float(v) for k, v in metrics.items()
                        if isinstance(v, int | float)}, step=step)


def plot_history(history: list[dict[str, float]], path: Path, title: str) -> Path:
    """Training loss and validation NDCG@10/HR@10 per epoch, one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
    a.plot(epochs, [r["train_loss"] for r in history], marker="o")
    a.set(xlabel="epoch", ylabel="training loss", title="loss")
    for key in ("valid_ndcg@10", "valid_hr@10"):
        if history and key in history[0]:
            b.plot(epochs, [r[key] for r in history], marker="o", label=key[len("valid_"):])
    b.set(xlabel="epoch", title="validation (full ranking)")
    b.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def set_alias(cfg: EncoreConfig, version: str, alias: str = CHALLENGER) -> None:
    MlflowClient().set_registered_model_alias(cfg.mlflow.model_name, alias, version)


def model_version_for_alias(cfg: EncoreConfig, alias: str) -> Any:
    """The registry's model version behind ``alias`` (raises if the alias is not set)."""
    configure(cfg)
    return MlflowClient().get_model_version_by_alias(cfg.mlflow.model_name, alias)
