"""Content-only zero-shot baseline: ranks items by how much their content resembles the history's.

No training and no IDs, so it scores cold items (never listened to) as well as warm ones: the
floor that E4SRec's content modalities must beat on cold start.

    item vector  x_i = [x̂_lyrics | x̂_audio | x̂_meta]   each block centred on the catalogue mean,
                                                        L2-normalised, zeros if absent
    user vector  u   = Σ_t decay^(steps back from newest) · x_{h_t}   (a recency-weighted mean;
                       the mean's denominator is left out because cosine ignores scale)
    score(i)         = cos(u, x_i); items without any content score NO_CONTENT

Cosine is computed block by block (u_m · c_{m,i} / ‖c_{m,i}‖), so scoring never copies the
catalogue's content tables, which can be hundreds of thousands of rows wide.

Why centre: pretrained encoders put every item in one narrow cone (on the sample world any two
audio clips have cosine ~0.92, same style or not), so raw cosine mostly measures the shared
direction and the per-block sum lets whichever block has it dominate. Subtracting the mean of
the present rows keeps only what tells items apart.
"""

from __future__ import annotations

from typing import Any

import torch

from training.models.base import CONTENT_MODALITIES, Batch, ContentTable, SequenceModel, pad_logits

__all__ = ["NO_CONTENT", "ContentBaseline"]

# Below any cosine (>= -1) but finite, so arithmetic on scores (ties, masking) stays NaN-free.
NO_CONTENT = -1e4


class ContentBaseline(SequenceModel):
    """Cosine between each item's content and a recency-weighted mean of the history's content."""

    kind = "content"

    def __init__(self, n_items: int, content_dims: dict[str, int], decay: float = 0.9) -> None:
        super().__init__(n_items)
        if not 0 < decay <= 1:
            raise ValueError(f"decay must be in (0, 1], got {decay}")
        unknown = sorted(set(content_dims) - set(CONTENT_MODALITIES))
        if unknown:
            raise ValueError(f"unknown content modalities {unknown}; expected a subset of {list(CONTENT_MODALITIES)}")
        if not content_dims:
            raise ValueError("the content baseline needs at least one content modality")
        self.content_dims = {m: int(d) for m, d in content_dims.items()}
        self.modalities = [m for m in CONTENT_MODALITIES if m in self.content_dims]
        self.decay = decay
        for m in self.modalities:
            self.register_buffer(f"content_{m}", torch.zeros(n_items + 1, self.content_dims[m]))
            self.register_buffer(f"present_{m}", torch.zeros(n_items + 1, dtype=torch.bool))

    def set_item_tables(self, content: ContentTable) -> None:
        """Copy the content vectors [n_items + 1, d_m], centred, and presence masks into the buffers."""
        rows = self.n_items + 1
        for m in self.modalities:
            if m not in content.vectors:
                raise ValueError(f"content table has no {m!r} vectors, which this model was built with")
            vectors = content.vectors[m]
            if tuple(vectors.shape) != (rows, self.content_dims[m]):
                raise ValueError(f"content {m!r} must be [{rows}, {self.content_dims[m]}], got {tuple(vectors.shape)}")
            present = content.present[m].bool()
            # Centre on the mean of the present rows; absent rows stay zero.
            mean = vectors[present].mean(dim=0) if present.any() else torch.zeros(vectors.shape[1])
            getattr(self, f"content_{m}").copy_(torch.where(present.unsqueeze(1), vectors - mean, 0.0))
            getattr(self, f"present_{m}").copy_(present)

    def _inverse_norms(self, m: str) -> torch.Tensor:
        """1 / ‖c_{m,i}‖ for present items, 0 for absent ones: [n_items + 1]."""
        table, present = getattr(self, f"content_{m}"), getattr(self, f"present_{m}")
        return torch.where(present, 1.0 / table.norm(dim=1).clamp_min(1e-12), 0.0)

    def loss(self, batch: Batch) -> torch.Tensor:
        raise RuntimeError("the content baseline has no training")

    def score(self, items: torch.Tensor, completion: torch.Tensor) -> torch.Tensor:
        B, L = items.shape
        # Left-padded, newest last: column j is L-1-j steps back. Pads get weight 0.
        steps = torch.arange(L - 1, -1, -1, device=items.device, dtype=torch.float32)
        weights = (self.decay ** steps).expand(B, L) * (items != 0)  # [B, L]
        scores = torch.zeros(B, self.n_items + 1, device=items.device)
        user_sq = torch.zeros(B, device=items.device)  # ‖u‖² summed over blocks
        n_blocks = torch.zeros(self.n_items + 1, device=items.device)  # ‖x_i‖² = number of present blocks
        for m in self.modalities:
            table = getattr(self, f"content_{m}")
            inv = self._inverse_norms(m)  # [n+1]
            x_hist = table[items] * inv[items].unsqueeze(-1)  # [B, L, d]: normalised, zeros if absent
            u_m = (weights.unsqueeze(-1) * x_hist).sum(dim=1)  # [B, d]
            scores += (u_m @ table.T) * inv  # [B, n+1]: u_m · x̂_{m,i}
            user_sq += u_m.pow(2).sum(dim=1)
            n_blocks += (inv > 0).float()
        scores = scores / (user_sq.sqrt().clamp_min(1e-12).unsqueeze(1) * n_blocks.sqrt().clamp_min(1.0))
        scores = scores.masked_fill(n_blocks == 0, NO_CONTENT)
        return pad_logits(scores)  # [B, n_items + 1]

    def config(self) -> dict[str, Any]:
        return {"n_items": self.n_items, "content_dims": self.content_dims, "decay": self.decay}
