"""BERT4Rec: sequential recommendation with a bidirectional transformer (Sun et al., CIKM 2019).

Cloze training: hide a random share of a user's items behind a [MASK] token and predict them from both
sides. At inference a [MASK] is appended after the history and its output scores the next item.

Item index n_items + 1 is [MASK] (the embedding table has n_items + 2 rows); it is never scored.

Departures from the paper:
- Pre-LN blocks with a final LayerNorm (shared with SASRec); positions count back from the newest item.
- Masked items are always replaced by [MASK] (the paper's choice too, unlike BERT's 80/10/10).
- The paper adds extra training samples that mask only the last item (the inference task). Here that
  is ``mask_last``: the share of a batch's rows repeated, in the same batch, with only their newest
  item masked (``last_item_rows``). A cloze row whose random draw masked nothing gets its newest
  item masked, which keeps every row in the loss.
- The output head is tied to the item table without a per-item bias; loss "ce" by default as in SASRec.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from training.models.base import Batch, IdEncoder, pad_logits
from training.models.losses import sequence_loss
from training.models.sasrec import TransformerStack, init_weights, right_positions


def cloze_mask(items: torch.Tensor, mask_prob: float) -> torch.Tensor:
    """Which items to hide: items [B, T] (left-padded) -> BoolTensor [B, T].

    Each non-pad item is hidden with probability mask_prob; padding never is. A row with items but no
    draw gets its newest item hidden. torch.rand on items' device, so torch.manual_seed fixes the draw.
    """
    real = items != 0  # [B, T]
    masked = (torch.rand(items.shape, device=items.device) < mask_prob) & real
    nothing = ~masked.any(dim=1) & real[:, -1]  # [B]; left padding puts the newest item last
    masked[:, -1] |= nothing
    return masked  # [B, T]


def last_item_rows(items: torch.Tensor, share: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Extra rows that hide only the newest item: items [B, T] -> (rows [R, T], masked [R, T]).

    R = round(share * B) rows drawn without replacement (torch.randperm, so torch.manual_seed fixes
    them); rows with no items are skipped. Left padding puts the newest item in the last column.
    """
    n = round(share * items.shape[0])
    rows = items[torch.randperm(items.shape[0], device=items.device)[:n]]
    rows = rows[rows[:, -1] != 0]  # [R, T]
    masked = torch.zeros_like(rows, dtype=torch.bool)
    masked[:, -1] = True
    return rows, masked


class BERT4Rec(IdEncoder):
    """Bidirectional transformer over item ids, trained by masked-item prediction."""

    kind: ClassVar[str] = "bert4rec"

    def __init__(self, n_items: int, **settings: Any) -> None:
        super().__init__(n_items, **settings)  # IdEncoderSettings, kept for config()
        max_len, hidden, layers, heads, inner, dropout = (self.max_len, self.hidden, self.layers, self.heads,
                                                          self.inner, self.dropout_p)
        if not 0 < self.mask_prob < 1:
            raise ValueError(f"mask_prob must be in (0, 1), got {self.mask_prob}")
        if not 0 <= self.mask_last <= 1:
            raise ValueError(f"mask_last must be in [0, 1], got {self.mask_last}")
        self.mask_token = n_items + 1

        self.item_emb = nn.Embedding(n_items + 2, hidden, padding_idx=0)  # row n_items + 1 = [MASK]
        # Training reads the whole window (L + 1 items), inference L items ending in [MASK].
        self.pos_emb = nn.Embedding(max_len + 1, hidden)
        self.emb_norm = nn.LayerNorm(hidden)
        self.dropout = nn.Dropout(dropout)
        self.encoder = TransformerStack(hidden, layers, heads, inner, dropout, self.block)
        # BERT's prediction transform before the tied output layer.
        self.head = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.LayerNorm(hidden))

        self.apply(init_weights)

    def encode(self, items: torch.Tensor) -> torch.Tensor:
        """Output at each position: items [B, T] (left-padded, may contain [MASK]) -> [B, T, H]."""
        items = items[:, -(self.max_len + 1) :]  # the positional table covers max_len + 1 items
        T = items.shape[1]
        keep = items != 0  # [B, T]
        x = self.item_emb(items) + self.pos_emb(right_positions(T, items.device))
        x = self.dropout(self.emb_norm(x)) * keep.unsqueeze(-1)
        # Every item sees every item; a pad query sees only itself so its softmax is never empty (NaN).
        itself = torch.eye(T, dtype=torch.bool, device=items.device)
        allowed = keep.unsqueeze(1) | itself  # [B, T, T]
        return self.head(self.encoder(x, allowed, keep))  # [B, T, H]

    def item_table(self) -> torch.Tensor:
        """Scoring table without [MASK]: [n_items + 1, H], so the mask token can never be predicted."""
        return self.item_emb.weight[: self.n_items + 1]

    def loss(self, batch: Batch) -> torch.Tensor:
        items = batch["items"][:, -(self.max_len + 1) :]  # [B, L + 1]: the whole window, newest last
        masked = cloze_mask(items, self.mask_prob)  # [B, L + 1]
        if self.mask_last > 0:
            extra, extra_masked = last_item_rows(items, self.mask_last)  # [R, L + 1]
            items, masked = torch.cat([items, extra]), torch.cat([masked, extra_masked])  # [B + R, L + 1]
        inputs = items.masked_fill(masked, self.mask_token)
        targets = items.masked_fill(~masked, 0)  # only masked positions enter the loss
        hidden = self.encode(inputs)  # [B, L + 1, H]
        return sequence_loss(hidden, targets, self.item_table(), *self.loss_args())

    def score(self, items: torch.Tensor, completion: torch.Tensor) -> torch.Tensor:
        # ID encoders ignore completion. Drop the oldest column and append [MASK]: the input stays L long.
        mask_col = torch.full((items.shape[0], 1), self.mask_token, dtype=items.dtype, device=items.device)
        inputs = torch.cat([items[:, 1:], mask_col], dim=1)  # [B, L]
        h = self.encode(inputs)[:, -1]  # [B, H], the [MASK] position
        return pad_logits(h @ self.item_table().T)  # [B, n_items + 1]

    def item_embeddings(self) -> torch.Tensor:
        return self.item_table().detach()  # [n_items + 1, H]
