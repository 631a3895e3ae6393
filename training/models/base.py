"""What every recommender in ``training/models`` is: a ``SequenceModel``.

Item indices: 0 is padding, 1..n_items are vocabulary items (``training.data.Vocab``).
Histories are **left-padded** to a fixed length, so the newest item is always the last column.

A training batch is a dict of tensors:
    "items":      LongTensor  [B, L+1]  a window of a user's items, newest last, 0 = pad
    "completion": FloatTensor [B, L+1]  that listen's completion ratio in [0, 1], NaN = unknown
Models read ``items[:, :-1]`` as input. Sequence-to-sequence models (SASRec, GRU4Rec) predict
``items[:, 1:]`` at every position; BERT4Rec masks items itself; E4SRec predicts ``items[:, -1]``.

Every model's output is the same under more or less left padding (each model's tests check it), so
a batch may drop the columns that are padding in every row (``trim_padding``): short histories
(Beauty's median is 6 items against a window of 51) then cost what they hold, not the window.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

Batch = dict[str, torch.Tensor]


class SequenceModel(nn.Module):
    """Scores every item for a batch of histories; trains on windows."""

    kind: ClassVar[str] = ""

    def __init__(self, n_items: int) -> None:
        super().__init__()
        self.n_items = n_items

    def forward(self, batch: Batch) -> torch.Tensor:
        # DeepSpeed's engine calls forward(). A batch with a "score" key asks for scores instead of
        # the loss: under ZeRO-3 only what runs inside forward() sees gathered parameters.
        if "score" in batch:
            return self.score(batch["items"], batch["completion"])
        return self.loss(batch)

    def set_item_counts(self, counts: torch.Tensor) -> None:
        """Training plays per item, [n_items + 1] (row 0 padding): the popularity sampler's distribution.

        A buffer that is not saved: it describes the training data, and scoring never samples.
        """
        from training.models.losses import popularity_cdf

        counts = torch.as_tensor(counts)
        if counts.shape != (self.n_items + 1,):
            raise ValueError(f"item counts must be [{self.n_items + 1}], got {tuple(counts.shape)}")
        self.register_buffer("_sampling_cdf", popularity_cdf(counts), persistent=False)

    def sampling_cdf(self) -> torch.Tensor | None:
        """The popularity sampler's cdf [n_items + 1], once ``set_item_counts`` ran; else None."""
        return getattr(self, "_sampling_cdf", None)

    def tied_parameters(self) -> list[nn.Parameter]:
        """Parameters read outside their own module's forward (tied output tables): ZeRO-3 must
        gather them for the whole model's forward (``deepspeed.zero.register_external_parameter``)."""
        return []

    def loss(self, batch: Batch) -> torch.Tensor:
        """Scalar training loss for one batch (see the module docstring for its keys)."""
        raise NotImplementedError

    def score(self, items: torch.Tensor, completion: torch.Tensor) -> torch.Tensor:
        """Next-item logits for each history: items/completion [B, L] -> [B, n_items + 1].

        Column 0 (padding) is -inf. Masking history items is the evaluator's job, not the model's.
        """
        raise NotImplementedError

    # -- persistence: a folder with model.json (kind + constructor arguments) and weights --
    def config(self) -> dict[str, Any]:
        """JSON-able constructor arguments that ``load`` passes back to ``__init__``."""
        raise NotImplementedError

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "model.json").write_text(json.dumps({"kind": self.kind, "config": self.config()}, indent=2))
        torch.save(self.state_dict(), folder / "weights.pt")

    @classmethod
    def load(cls, folder: Path) -> SequenceModel:
        meta = json.loads((folder / "model.json").read_text())
        model = cls(**meta["config"])
        model.load_state_dict(torch.load(folder / "weights.pt", map_location="cpu", weights_only=True))
        return model.eval()


class IdEncoder(SequenceModel):
    """A sequential ID model whose item-embedding table E4SRec reuses (frozen).

    Every ID encoder takes the same settings (``IdEncoderSettings``), so one config section
    builds any of them; a setting a model has no use for (a GRU's heads) is kept for ``config()``.
    """

    def __init__(self, n_items: int, max_len: int = 50, hidden: int = 64, layers: int = 2, heads: int = 2,
                 inner: int = 256, dropout: float = 0.2, mask_prob: float = 0.2, loss: str = "ce",
                 num_negatives: int = 1, sampled: dict[str, Any] | None = None, block: str = "pre-ln",
                 mask_last: float = 0.0, crops: int = 0) -> None:
        super().__init__(n_items)
        from training.models.losses import SampledSpec, check_loss, resolve_loss

        check_loss(loss, num_negatives)
        self.max_len, self.hidden, self.layers, self.heads, self.inner = max_len, hidden, layers, heads, inner
        self.dropout_p, self.mask_prob, self.num_negatives = dropout, mask_prob, num_negatives
        self.mask_last = mask_last  # BERT4Rec's extra last-item rows; the other encoders ignore it
        self.crops = crops  # BERT4Rec's random windows per user per epoch (trainer.windows_for)
        self.loss_setting = loss  # as configured ("auto" included), for config()
        self.loss_type = resolve_loss(loss, n_items)  # what trains: ce, sampled or bce
        self.sampled_settings = dict(sampled or {})
        self.sampled = SampledSpec.from_settings(self.sampled_settings)
        if block not in ("pre-ln", "ligr"):
            raise ValueError(f"unknown transformer block {block!r}: pre-ln or ligr")
        self.block = block  # transformer blocks (SASRec, BERT4Rec); a GRU has none

    def config(self) -> dict[str, Any]:
        return {"n_items": self.n_items, "max_len": self.max_len, "hidden": self.hidden, "layers": self.layers,
                "heads": self.heads, "inner": self.inner, "dropout": self.dropout_p, "mask_prob": self.mask_prob,
                "loss": self.loss_setting, "num_negatives": self.num_negatives, "sampled": self.sampled_settings,
                "block": self.block, "mask_last": self.mask_last, "crops": self.crops}

    def loss_args(self) -> tuple[str, int, Any, torch.Tensor | None]:
        """The trailing arguments of ``losses.sequence_loss`` for this model's loss setting."""
        return self.loss_type, self.num_negatives, self.sampled, self.sampling_cdf()

    def item_embeddings(self) -> torch.Tensor:
        """The learned item table, [n_items + 1, hidden]; row 0 is padding."""
        return self.item_emb.weight[: self.n_items + 1].detach()  # type: ignore[attr-defined]

    def tied_parameters(self) -> list[nn.Parameter]:
        # The ID encoders score with their input table (tied output): item_emb.weight.
        return [self.item_emb.weight]  # type: ignore[attr-defined]


class NextItemEncoder(IdEncoder):
    """An ID encoder whose state after each item scores the next one (SASRec, GRU4Rec).

    Subclasses provide ``encode(items [B, T]) -> states [B, T', H]`` for the newest T' <= T items.
    """

    def encode(self, items: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, batch: Batch) -> torch.Tensor:
        from training.models.losses import sequence_loss

        items = batch["items"]  # [B, L + 1]
        inputs, targets = items[:, :-1], items[:, 1:]  # [B, L] each
        # A target right after padding has nothing to predict it from (its state is 0): skip it.
        targets = targets.masked_fill(inputs == 0, 0)
        hidden = self.encode(inputs)  # [B, L', H]
        targets = targets[:, -hidden.shape[1]:]
        return sequence_loss(hidden, targets, self.item_emb.weight, *self.loss_args())  # type: ignore[attr-defined]

    def score(self, items: torch.Tensor, completion: torch.Tensor) -> torch.Tensor:
        # ID encoders ignore completion; the argument is part of the SequenceModel contract.
        h = self.encode(items)[:, -1]  # [B, H], state after the newest item
        return pad_logits(h @ self.item_emb.weight.T)  # type: ignore[attr-defined]  # [B, n_items + 1]


def trim_padding(items: torch.Tensor, completion: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop the leading columns that are padding in every row: [B, L] -> [B, L'] with L' >= 1."""
    real = (items != 0).any(dim=0).nonzero()  # columns holding at least one item
    start = int(real[0]) if len(real) else items.shape[1] - 1
    return items[:, start:], completion[:, start:]


def pad_logits(logits: torch.Tensor) -> torch.Tensor:
    """Set column 0 (padding) to -inf so it never ranks."""
    logits = logits.clone()
    logits[:, 0] = float("-inf")
    return logits


CONTENT_MODALITIES: tuple[str, ...] = ("lyrics", "audio", "meta")


@dataclass
class ContentTable:
    """Content vectors per vocabulary item, aligned with item indices (row 0 = padding).

    vectors[m]: FloatTensor [n_items + 1, d_m], zeros where absent;
    present[m]: BoolTensor [n_items + 1], False where the item has no such embedding (and row 0).
    Modalities are a subset of CONTENT_MODALITIES.
    """

    vectors: dict[str, torch.Tensor] = field(default_factory=dict)
    present: dict[str, torch.Tensor] = field(default_factory=dict)

    def dims(self) -> dict[str, int]:
        return {m: int(v.shape[1]) for m, v in self.vectors.items()}
