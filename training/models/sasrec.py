"""SASRec: self-attentive sequential recommendation (Kang & McAuley, ICDM 2018).

Causal self-attention over a user's items; the hidden state at each position scores the next item
against the item-embedding table (tied weights, as in the paper and RecBole).

Departures from the paper:
- Pre-LN blocks with a final LayerNorm and a GELU feed-forward (as RecBole's defaults): steadier on small data.
- Positions count back from the newest item (0 = newest). The paper left-pads to a fixed length, so its
  newest item also always has the same position; counting from the right keeps that for any input length,
  and a history's output does not depend on how much left padding it carries.
- ``block="ligr"``: eSASRec's gated pre-norm layer instead of the standard one (``LiGRBlock``).
- Loss: full-softmax cross-entropy by default (Klenitskiy & Vasilev, RecSys 2023); ``loss="bce"`` is the
  paper's sampled binary cross-entropy.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from training.models.base import NextItemEncoder


class LiGRBlock(nn.Module):
    """A pre-norm block whose sublayer outputs pass a learned sigmoid gate before the residual add.

    The LiGR layer (LinkedIn's generative ranker, 2025) as eSASRec (arXiv 2508.06450) uses it in
    SASRec: x + drop(g1 ⊙ attn(n1)), with n1 = LN(x) and g1 = sigmoid(W1 n1); then the same with
    the feed-forward. The gate lets each channel choose how much of a sublayer to add, which
    eSASRec found additive to sampled softmax. Same call as nn.TransformerEncoderLayer.
    """

    def __init__(self, hidden: int, heads: int, inner: int, dropout: float) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.attn = nn.MultiheadAttention(hidden, heads, dropout=dropout, batch_first=True)
        self.gate1, self.gate2 = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)
        self.ff = nn.Sequential(nn.Linear(hidden, inner), nn.GELU(), nn.Dropout(dropout), nn.Linear(inner, hidden))
        self.drop1, self.drop2 = nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, src_mask: torch.Tensor) -> torch.Tensor:
        """x [B, T, H]; src_mask [B * heads, T, T] bool, True = blocked -> [B, T, H]."""
        n = self.norm1(x)
        a, _ = self.attn(n, n, n, attn_mask=src_mask, need_weights=False)
        x = x + self.drop1(torch.sigmoid(self.gate1(n)) * a)
        n = self.norm2(x)
        return x + self.drop2(torch.sigmoid(self.gate2(n)) * self.ff(n))


class TransformerStack(nn.Module):
    """Transformer blocks (pre-LN or LiGR) with a per-row attention pattern; shared with BERT4Rec."""

    def __init__(self, hidden: int, layers: int, heads: int, inner: int, dropout: float,
                 block: str = "pre-ln") -> None:
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden ({hidden}) must be divisible by heads ({heads})")
        self.heads = heads
        if block == "ligr":
            self.blocks = nn.ModuleList(LiGRBlock(hidden, heads, inner, dropout) for _ in range(layers))
        else:
            self.blocks = nn.ModuleList(
                nn.TransformerEncoderLayer(
                    hidden, heads, inner, dropout, activation="gelu", batch_first=True, norm_first=True
                )
                for _ in range(layers)
            )
        self.norm = nn.LayerNorm(hidden)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """x [B, T, H]; allowed [B, T(query), T(key)] bool; keep [B, T] bool (False = padding) -> [B, T, H].

        ``allowed`` must let every query see at least one key (e.g. itself), or softmax over nothing is NaN.
        """
        # nn.MultiheadAttention wants one mask per (row, head), row-major: [B * heads, T, T], True = blocked.
        blocked = (~allowed).repeat_interleave(self.heads, dim=0)
        gate = keep.unsqueeze(-1).to(x.dtype)  # [B, T, 1]
        for block in self.blocks:
            # Zero padding outputs after each block (as the paper does), so pads stay inert.
            x = block(x, src_mask=blocked) * gate
        return self.norm(x) * gate  # [B, T, H]


def right_positions(length: int, device: torch.device) -> torch.Tensor:
    """Position ids counted back from the newest column: [length] = [length - 1, ..., 1, 0]."""
    return torch.arange(length - 1, -1, -1, device=device)


def init_weights(module: nn.Module) -> None:
    """BERT-style init (as RecBole): N(0, 0.02) for linear and embedding weights, identity LayerNorm."""
    if isinstance(module, nn.Linear | nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class SASRec(NextItemEncoder):
    """Causal transformer over item ids; predicts the next item at every position."""

    kind: ClassVar[str] = "sasrec"

    def __init__(self, n_items: int, **settings: Any) -> None:
        super().__init__(n_items, **settings)  # IdEncoderSettings, kept for config()
        max_len, hidden, layers, heads, inner, dropout = (self.max_len, self.hidden, self.layers, self.heads,
                                                          self.inner, self.dropout_p)
        self.item_emb = nn.Embedding(n_items + 1, hidden, padding_idx=0)
        self.pos_emb = nn.Embedding(max_len, hidden)
        self.dropout = nn.Dropout(dropout)
        self.encoder = TransformerStack(hidden, layers, heads, inner, dropout, self.block)

        self.apply(init_weights)

    def encode(self, items: torch.Tensor) -> torch.Tensor:
        """Hidden state after each position: items [B, T] (left-padded) -> [B, T, H]; padding rows are 0."""
        items = items[:, -self.max_len :]  # the positional table covers the newest max_len items
        T = items.shape[1]
        keep = items != 0  # [B, T]
        # The paper scales item embeddings by sqrt(hidden) before adding positions.
        x = self.item_emb(items) * self.hidden**0.5 + self.pos_emb(right_positions(T, items.device))
        x = self.dropout(x) * keep.unsqueeze(-1)
        causal = torch.ones(T, T, dtype=torch.bool, device=items.device).tril()  # [T, T], key <= query
        # Each position may always see itself: a left-pad query would otherwise have no key at all (NaN).
        itself = torch.eye(T, dtype=torch.bool, device=items.device)
        allowed = (causal & keep.unsqueeze(1)) | itself  # [B, T, T]
        return self.encoder(x, allowed, keep)  # [B, T, H]
