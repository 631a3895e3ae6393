"""Fusion of an item's modality vectors (ID, lyrics, audio, meta) into one vector, for E4SRec.

Every mode first projects each modality to ``fusion_dim`` with its own Linear. A content modality
that an item lacks (``present`` False) is replaced by a learned per-modality "missing" vector, not
by zeros: a zero vector after the projection would be the bias alone, indistinguishable from a
genuinely small embedding, while a learned vector lets the model say "no lyrics" explicitly.
The ID modality ("id") has no missing vector: every vocabulary item has a row in the ID table.

Modes (``build_fusion``):
    concat    projected vectors side by side -> Linear to out_dim.
    weighted  L2-normalised projected vectors, a learned softmax weight per modality, weighted
              sum -> Linear. Normalising first keeps one loud modality from drowning the others.
    xattn     the ID vector (or a learned query without "id") attends over the content vectors;
              residual + Linear. With "id" alone it attends over itself.
    film      FiLM (Perez et al., AAAI 2018): the content vectors give gamma and beta, and
              out = Linear(gamma * id + beta). Needs "id" and at least one content modality.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FUSION_MODES", "Fusion", "build_fusion"]

FusionMode = Literal["concat", "weighted", "xattn", "film"]
FUSION_MODES: tuple[str, ...] = ("concat", "weighted", "xattn", "film")
ID = "id"


class Fusion(nn.Module):
    """Shared part of every mode: one projection per modality and the missing vectors."""

    def __init__(self, dims: dict[str, int], fusion_dim: int, out_dim: int) -> None:
        super().__init__()
        if not dims:
            raise ValueError("fusion needs at least one modality")
        # "id" first, then content in the caller's order: the order fixes the concat layout.
        self.names: list[str] = sorted(dims, key=lambda m: m != ID)
        self.content: list[str] = [m for m in self.names if m != ID]
        self.fusion_dim = fusion_dim
        self.out_dim = out_dim
        # Each raw modality is standardised per item first (LayerNorm without affine): the ID table,
        # unit-norm text vectors, [0, 1] genes and audio descriptors in the +-9 range would
        # otherwise enter at scales that differ 100x, and the loudest would drown the ID signal.
        self.in_norm = nn.ModuleDict({m: nn.LayerNorm(dims[m], elementwise_affine=False) for m in self.names})
        self.proj = nn.ModuleDict({m: nn.Linear(dims[m], fusion_dim) for m in self.names})
        # Small random init, like an embedding row: distinct from any projected vector at start.
        self.missing = nn.ParameterDict({m: nn.Parameter(torch.randn(fusion_dim) * 0.02) for m in self.content})

    def project(self, parts: dict[str, torch.Tensor], present: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """parts[m] [..., d_m], present[m] bool [...] -> projected [..., fusion_dim] per modality."""
        out: dict[str, torch.Tensor] = {}
        for m in self.names:
            z = self.proj[m](self.in_norm[m](parts[m]))  # [..., F]
            mask = present.get(m)
            if m != ID and mask is not None:
                z = torch.where(mask.unsqueeze(-1), z, self.missing[m].to(z.dtype))
            out[m] = z
        return out

    def forward(self, parts: dict[str, torch.Tensor], present: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.combine(self.project(parts, present))  # [..., out_dim]

    def combine(self, z: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError


class ConcatFusion(Fusion):
    def __init__(self, dims: dict[str, int], fusion_dim: int, out_dim: int) -> None:
        super().__init__(dims, fusion_dim, out_dim)
        self.out = nn.Linear(len(self.names) * fusion_dim, out_dim)

    def combine(self, z: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.out(torch.cat([z[m] for m in self.names], dim=-1))  # [..., out_dim]


class WeightedFusion(Fusion):
    def __init__(self, dims: dict[str, int], fusion_dim: int, out_dim: int) -> None:
        super().__init__(dims, fusion_dim, out_dim)
        self.weight_logits = nn.Parameter(torch.zeros(len(self.names)))  # uniform at start
        self.out = nn.Linear(fusion_dim, out_dim)

    def combine(self, z: dict[str, torch.Tensor]) -> torch.Tensor:
        stacked = F.normalize(torch.stack([z[m] for m in self.names], dim=-2), dim=-1)  # [..., M, F]
        w = torch.softmax(self.weight_logits, dim=0).to(stacked.dtype)  # [M]
        return self.out((stacked * w.unsqueeze(-1)).sum(dim=-2))  # [..., out_dim]


class CrossAttentionFusion(Fusion):
    def __init__(self, dims: dict[str, int], fusion_dim: int, out_dim: int, heads: int = 1) -> None:
        super().__init__(dims, fusion_dim, out_dim)
        # Without an ID the query is learned: "what does the model want to know about this item".
        self.query = None if ID in self.names else nn.Parameter(torch.randn(fusion_dim) * 0.02)
        self.attn = nn.MultiheadAttention(fusion_dim, heads, batch_first=True)
        self.norm = nn.LayerNorm(fusion_dim)
        self.out = nn.Linear(fusion_dim, out_dim)

    def combine(self, z: dict[str, torch.Tensor]) -> torch.Tensor:
        kv_names = self.content or [ID]
        kv = torch.stack([z[m] for m in kv_names], dim=-2)  # [..., M, F]
        lead = kv.shape[:-2]
        kv = kv.reshape(-1, len(kv_names), self.fusion_dim)  # [N, M, F]
        if self.query is None:
            q = z[ID].reshape(-1, 1, self.fusion_dim)  # [N, 1, F]
        else:
            q = self.query.to(kv.dtype).expand(kv.shape[0], 1, self.fusion_dim)
        attended, _ = self.attn(q, kv, kv, need_weights=False)  # [N, 1, F]
        h = self.norm(q + attended).reshape(*lead, self.fusion_dim)  # residual, [..., F]
        return self.out(h)  # [..., out_dim]


class FiLMFusion(Fusion):
    def __init__(self, dims: dict[str, int], fusion_dim: int, out_dim: int) -> None:
        if ID not in dims:
            raise ValueError("fusion 'film' modulates the ID vector: add 'id' to the modalities or pick another fusion")
        if len(dims) < 2:
            raise ValueError("fusion 'film' needs at least one content modality (lyrics, audio or meta) beside 'id'")
        super().__init__(dims, fusion_dim, out_dim)
        self.film = nn.Linear(len(self.content) * fusion_dim, 2 * fusion_dim)
        # Start as the identity modulation (gamma = 1, beta = 0) so early training sees the plain ID.
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)
        self.out = nn.Linear(fusion_dim, out_dim)

    def combine(self, z: dict[str, torch.Tensor]) -> torch.Tensor:
        content = torch.cat([z[m] for m in self.content], dim=-1)  # [..., Mc*F]
        gamma, beta = self.film(content).chunk(2, dim=-1)  # [..., F] each
        return self.out((1 + gamma) * z[ID] + beta)  # [..., out_dim]


_MODES: dict[str, type[Fusion]] = {
    "concat": ConcatFusion,
    "weighted": WeightedFusion,
    "xattn": CrossAttentionFusion,
    "film": FiLMFusion,
}


def build_fusion(mode: str, dims: dict[str, int], fusion_dim: int, out_dim: int) -> Fusion:
    """A fusion module: forward(parts {m: [..., d_m]}, present {m: bool [...]}) -> [..., out_dim].

    ``dims`` maps each modality ("id" included when used) to its input width. ``present`` may omit
    a modality (then every item has it); it is ignored for "id".
    """
    if mode not in _MODES:
        raise ValueError(f"unknown fusion {mode!r}; expected one of {', '.join(FUSION_MODES)}")
    return _MODES[mode](dims, fusion_dim, out_dim)
