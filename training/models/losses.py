"""Training losses shared by the ID encoders (SASRec, BERT4Rec, GRU4Rec).

Every model hands over one hidden vector per position and the item it should predict there
(0 = no target); scores are dot products with the model's own item table (tied weights).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOSSES: tuple[str, ...] = ("ce", "bce")


def check_loss(loss: str, num_negatives: int) -> None:
    """Fail at construction, not at the first batch, on a bad loss setting."""
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    if num_negatives < 1:
        raise ValueError(f"num_negatives must be >= 1, got {num_negatives}")


def sequence_loss(
    hidden: torch.Tensor,
    targets: torch.Tensor,
    item_table: torch.Tensor,
    loss: str,
    num_negatives: int = 1,
) -> torch.Tensor:
    """Mean next/masked-item loss over the positions that have a target.

    hidden [B, T, H]; targets [B, T] LongTensor, 0 = no target here; item_table [n_items + 1, H], row 0 padding.
    "ce":  full softmax over items 1..n_items (padding is no class).
    "bce": per positive, num_negatives items drawn uniformly from 1..n_items; -log σ(pos) - Σ log(1 - σ(neg)).
           A negative can hit the positive by chance (probability 1/n_items); like SASRec we accept that.
    """
    keep = targets != 0  # [B, T]
    h = hidden[keep]  # [N, H]
    pos = targets[keep]  # [N]
    if pos.numel() == 0:
        # Keep the graph: a distributed engine expects every step to reach every weight.
        return hidden.sum() * 0.0
    if loss == "ce":
        logits = h @ item_table[1:].T  # [N, n_items]; class c is item c + 1
        return F.cross_entropy(logits, pos - 1)
    if loss == "bce":
        n_items = item_table.shape[0] - 1
        neg = torch.randint(1, n_items + 1, (pos.shape[0], num_negatives), device=pos.device)  # [N, K]
        pos_logit = (h * item_table[pos]).sum(-1)  # [N]
        neg_logit = torch.einsum("nh,nkh->nk", h, item_table[neg])  # [N, K]
        # softplus(-x) = -log σ(x) and softplus(x) = -log(1 - σ(x)), without overflow.
        return (F.softplus(-pos_logit) + F.softplus(neg_logit).sum(-1)).mean()
    raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
