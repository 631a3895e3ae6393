"""The trained recommender as an MLflow pyfunc: user histories in, top-K tracks with scores out.

Input DataFrame, one row per user:
    user_id: str, track_ids: list[str] (oldest first), completions: list[float] (optional; NaN =
    unknown, same length as track_ids)
Output DataFrame: user_id, track_ids (top K, best first), scores (the model's logits for them),
history_len (history items the model knows; 0 = nothing to rank from, the caller's fallback case).
Params: ``k`` (default 10), ``mask_history`` (default: the training run's eval setting).

Artifacts: ``model/`` (a ``SequenceModel.save`` folder, self-contained: E4SRec's backbone and
adapter are inside) and ``vocab.json``. The model's code travels in the MLflow model
(``code_paths``), so a scoring machine needs the libraries, not this repository.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from mlflow.models import ModelSignature
from mlflow.types.schema import Array, ColSpec, ParamSchema, ParamSpec, Schema

import mlflow
from training.metrics import SCORE_BUDGET_BYTES, rows_per_forward
from training.models.base import SequenceModel

__all__ = ["SCORE_BUDGET_BYTES", "Recommender", "log_recommender", "rows_per_forward", "signature"]

REPO = Path(__file__).resolve().parent.parent
def signature(default_k: int, mask_history: bool) -> ModelSignature:
    inputs = Schema([ColSpec("string", "user_id"), ColSpec(Array("string"), "track_ids"),
                     ColSpec(Array("double"), "completions", required=False)])
    outputs = Schema([ColSpec("string", "user_id"), ColSpec(Array("string"), "track_ids"),
                      ColSpec(Array("double"), "scores"), ColSpec("long", "history_len")])
    params = ParamSchema([ParamSpec("k", "long", default_k), ParamSpec("mask_history", "boolean", mask_history)])
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)


class Recommender(mlflow.pyfunc.PythonModel):
    """Loads the saved model and vocabulary; ranks the whole vocabulary for each history."""

    def load_context(self, context: Any) -> None:
        from training.models import load

        # A scoring actor given a GPU uses it; everywhere else the model stays on CPU.
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = load(Path(context.artifacts["model"])).to(self.device).eval()
        meta = json.loads(Path(context.artifacts["vocab"]).read_text())
        self.track_ids = np.array(meta["track_ids"], dtype=object)
        self.index = {t: i + 1 for i, t in enumerate(meta["track_ids"])}
        self.max_len = int(meta["max_len"])
        self.mask_history = bool(meta["mask_history"])
        self.batch_size = rows_per_forward(len(self.track_ids))

    def _encode(self, tracks: Any, comps: Any) -> tuple[list[int], np.ndarray, np.ndarray]:
        tracks = list(tracks) if tracks is not None else []
        comps = list(comps) if comps is not None and len(comps) == len(tracks) else [np.nan] * len(tracks)
        # Tracks outside the vocabulary (new since training) carry no ID: they leave the history.
        kept = [(self.index[t], c) for t, c in zip(tracks, comps, strict=True) if t in self.index]
        full = [i for i, _ in kept]
        items = np.zeros(self.max_len, dtype=np.int64)
        comp = np.full(self.max_len, np.nan, dtype=np.float32)
        tail = kept[-self.max_len:]
        if tail:
            items[-len(tail):] = [i for i, _ in tail]
            comp[-len(tail):] = [np.nan if c is None else c for _, c in tail]
        return full, items, comp

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        params = params or {}
        k = int(params.get("k", 10))
        mask = bool(params.get("mask_history", self.mask_history))
        comps = model_input["completions"] if "completions" in model_input else [None] * len(model_input)
        encoded = [self._encode(t, c) for t, c in zip(model_input["track_ids"], comps, strict=True)]
        out_ids, out_scores = [], []
        with torch.no_grad():
            for start in range(0, len(encoded), self.batch_size):
                chunk = encoded[start:start + self.batch_size]
                items = torch.from_numpy(np.stack([e[1] for e in chunk])).to(self.device)
                comp = torch.from_numpy(np.stack([e[2] for e in chunk])).to(self.device)
                scores = self.model.score(items, comp).float()  # [B, items + 1]; column 0 is padding
                if mask:
                    for row, (full, _, _) in enumerate(chunk):
                        if full:
                            scores[row, full] = float("-inf")
                top = torch.topk(scores, k=min(k, scores.shape[1] - 1), dim=1)
                for vals, idx in zip(top.values, top.indices, strict=True):
                    ok = torch.isfinite(vals)
                    out_ids.append(self.track_ids[(idx[ok] - 1).cpu().numpy()].tolist())
                    out_scores.append(vals[ok].cpu().tolist())
        return pd.DataFrame({"user_id": model_input["user_id"].astype(str).to_numpy(),
                             "track_ids": out_ids, "scores": out_scores,
                             "history_len": np.array([len(e[0]) for e in encoded], dtype=np.int64)})


# What the pyfunc and its code_paths import when a scorer loads it. Pinned to this venv's versions:
# MLflow would otherwise infer them in a subprocess (slow) and then warn, at every load, about
# packages it picked up on the way (backports-tarfile) that the venv does not hold as such.
_REQUIREMENTS = ("mlflow", "torch", "transformers", "peft", "numpy", "pandas", "pyyaml", "pydantic")


def pip_requirements() -> list[str]:
    """``name==version`` for each of :data:`_REQUIREMENTS` installed here."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for name in _REQUIREMENTS:
        try:
            out.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            continue
    return out


def log_recommender(model: SequenceModel, track_ids: list[str], max_len: int, mask_history: bool,
                    example: pd.DataFrame, registered_name: str | None) -> Any:
    """Log ``model`` in the active run as pyfunc ``model``; register it when a name is given."""
    with tempfile.TemporaryDirectory(prefix="encore-model-") as tmp:
        folder = Path(tmp) / "model"
        model.save(folder)
        vocab = Path(tmp) / "vocab.json"
        vocab.write_text(json.dumps({"track_ids": track_ids, "max_len": max_len, "mask_history": mask_history}))
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=Recommender(),
            artifacts={"model": str(folder), "vocab": str(vocab)},
            code_paths=[str(REPO / "training"), str(REPO / "encore")],
            signature=signature(10, mask_history),
            input_example=example,
            pip_requirements=pip_requirements(),
            registered_model_name=registered_name,
        )
        shutil.rmtree(folder, ignore_errors=True)
    return info
