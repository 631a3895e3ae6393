"""GRU4Rec: session-based recommendation with recurrent networks (Hidasi et al., ICLR 2016).

Item embedding -> dropout -> multi-layer GRU -> linear -> scores against the item table (tied weights).

Departures from the paper (following RecBole's GRU4Rec):
- Trained on fixed windows of a user's history, predicting the next item at every position, instead of
  session-parallel mini-batches; loss "ce" (full softmax) by default or "bce" with sampled negatives,
  instead of TOP1/BPR.
- An item embedding layer feeds the GRU (the paper's best runs used one-hot input) and the output layer
  is tied to it.

Left padding: zero pad vectors are not enough for a GRU, because its biases move the state even on zero
input, so a history would encode differently under more padding. Each row is therefore shifted to the
left, packed with its true length (the GRU never sees padding), and shifted back.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from training.models.base import NextItemEncoder


class GRU4Rec(NextItemEncoder):
    """Recurrent next-item model over item ids."""

    kind: ClassVar[str] = "gru4rec"

    def __init__(self, n_items: int, **settings: Any) -> None:
        super().__init__(n_items, **settings)  # IdEncoderSettings, kept for config()
        # A GRU has no length limit, attention heads or feed-forward size: those settings go unused.
        hidden, layers, dropout = self.hidden, self.layers, self.dropout_p


        self.item_emb = nn.Embedding(n_items + 1, hidden, padding_idx=0)
        self.dropout = nn.Dropout(dropout)
        # nn.GRU's dropout acts between layers only (and warns when there is one layer).
        self.gru = nn.GRU(hidden, hidden, num_layers=layers, batch_first=True, dropout=dropout if layers > 1 else 0.0)
        self.proj = nn.Linear(hidden, hidden)

        # RecBole's GRU4Rec init: xavier for embeddings and GRU weights.
        nn.init.xavier_normal_(self.item_emb.weight)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()
        for name, param in self.gru.named_parameters():
            if name.startswith("weight"):
                nn.init.xavier_uniform_(param)

    def encode(self, items: torch.Tensor) -> torch.Tensor:
        """State after each position: items [B, T] (left-padded) -> [B, T, H]; padding rows are 0."""
        B, T = items.shape
        real = items != 0  # [B, T]
        # History length = everything from the first real item on (an inner 0 counts as an item).
        # argmax returns the first maximum: the index of the oldest real item; T for an empty row.
        first = torch.where(real.any(1), real.int().argmax(1), T)  # [B]
        length = T - first  # [B]
        cols = torch.arange(T, device=items.device)
        to_right = (cols + first.unsqueeze(1)) % T  # [B, T]: right-padded column j reads left column j + first
        x = self.dropout(self.item_emb(items.gather(1, to_right)))  # [B, T, H], right-padded
        # pack needs lengths >= 1 on the CPU; an empty row runs one pad step and is zeroed below.
        packed = pack_padded_sequence(x, length.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.gru(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=T)  # [B, T, H], right-padded
        to_left = (cols - first.unsqueeze(1)) % T  # inverse shift
        out = out.gather(1, to_left.unsqueeze(-1).expand(B, T, self.hidden))  # [B, T, H], left-padded
        out = self.proj(out)
        return out * (cols >= first.unsqueeze(1)).unsqueeze(-1)  # [B, T, H]
