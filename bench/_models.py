"""Models with random weights for the benchmarks (bench/train.py, bench/score.py): real shapes, no data."""

from __future__ import annotations

from typing import Any


def random_e4srec(items: int, backbone: str | None, max_len: int = 50) -> Any:
    """E4SRec over ``backbone`` (default MiniLM) with ID + lyrics + metadata + completion, random
    item tables: the multimodal model's cost without training it. Seeded: the same every call."""
    import torch

    from encore.core.config import E4SRecSettings
    from training.models.base import ContentTable
    from training.models.e4srec import E4SRec
    from training.train import PROMPTS, default_backbone

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    every = torch.ones(items + 1, dtype=torch.bool)
    content = ContentTable(vectors={"lyrics": torch.randn(items + 1, 384, generator=g),
                                    "meta": torch.rand(items + 1, 58, generator=g)},
                           present={"lyrics": every, "meta": every})
    settings = E4SRecSettings(modalities=["id", "lyrics", "meta", "completion"]).model_dump(mode="json")
    model = E4SRec(items, str(backbone or default_backbone()), (PROMPTS / "e4srec_v1.txt").read_text(), settings,
                   64, {"lyrics": 384, "meta": 58}, max_len=max_len)
    model.set_item_tables(torch.randn(items + 1, 64, generator=g), content)
    return model
