"""The recommenders. ``build_id_encoder`` and ``load`` are the ways in from outside this package."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from training.models.base import IdEncoder, SequenceModel

# kind -> (module, class); imported on use so that loading one model does not import the others.
REGISTRY: dict[str, tuple[str, str]] = {
    "sasrec": ("training.models.sasrec", "SASRec"),
    "bert4rec": ("training.models.bert4rec", "BERT4Rec"),
    "gru4rec": ("training.models.gru4rec", "GRU4Rec"),
    "e4srec": ("training.models.e4srec", "E4SRec"),
    "content": ("training.models.content", "ContentBaseline"),
    "llm-zeroshot": ("training.models.llm_zeroshot", "LLMZeroShot"),
}
ID_ENCODERS = ("sasrec", "bert4rec", "gru4rec")


def model_class(kind: str) -> type[SequenceModel]:
    if kind not in REGISTRY:
        raise ValueError(f"unknown model {kind!r}; choose one of {sorted(REGISTRY)}")
    module, name = REGISTRY[kind]
    return getattr(importlib.import_module(module), name)


def build_id_encoder(kind: str, n_items: int, max_len: int, settings: dict) -> IdEncoder:
    """An untrained ID encoder; ``settings`` = ``IdEncoderSettings.model_dump()``."""
    if kind not in ID_ENCODERS:
        raise ValueError(f"{kind!r} is not an ID encoder; choose one of {ID_ENCODERS}")
    cls = model_class(kind)
    settings = {k: v for k, v in settings.items() if k != "epochs"}  # a training budget, not architecture
    return cls(n_items=n_items, max_len=max_len, **settings)  # type: ignore[return-value]


def load(folder: Path) -> SequenceModel:
    """A saved model folder (``SequenceModel.save``) back as a model, in eval mode."""
    kind = json.loads((Path(folder) / "model.json").read_text())["kind"]
    return model_class(kind).load(Path(folder))
