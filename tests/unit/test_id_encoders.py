"""SASRec, BERT4Rec and GRU4Rec: causality, padding, masking, learning, and the SequenceModel contract."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch

from encore.core.config import IdEncoderSettings
from training.models import bert4rec as bert4rec_module
from training.models.base import IdEncoder
from training.models.bert4rec import BERT4Rec, cloze_mask
from training.models.gru4rec import GRU4Rec
from training.models.losses import sequence_loss
from training.models.sasrec import SASRec

MODELS: list[type[IdEncoder]] = [SASRec, BERT4Rec, GRU4Rec]
N_ITEMS = 20
L = 10
# Small but complete: two layers exercise stacking; the production sizes come from IdEncoderSettings.
SMALL = {"hidden": 32, "layers": 2, "heads": 2, "inner": 64, "dropout": 0.1}


def small(model_cls: type[IdEncoder], **overrides: object) -> IdEncoder:
    return model_cls(n_items=N_ITEMS, max_len=L, **{**SMALL, **overrides})


def left_pad(rows: list[list[int]], width: int) -> torch.Tensor:
    """Histories (oldest first) -> LongTensor [len(rows), width], left-padded with 0."""
    return torch.tensor([[0] * (width - len(r)) + r for r in rows])


def cycle_windows(batch: int, width: int) -> torch.Tensor:
    """A deterministic world: every user walks 1 -> 2 -> ... -> N_ITEMS -> 1; [batch, width], left-padded.

    Windows start anywhere and hold 2..width items, so the models see padding and the wrap-around.
    """
    start = torch.randint(0, N_ITEMS, (batch, 1))
    walk = (start + torch.arange(width)) % N_ITEMS + 1  # [batch, width]
    length = torch.randint(2, width + 1, (batch, 1))
    return walk * (torch.arange(width) >= width - length)  # keep the newest `length` items


def cycle_batch(batch: int) -> dict[str, torch.Tensor]:
    items = cycle_windows(batch, L + 1)
    return {"items": items, "completion": torch.full(items.shape, float("nan"))}


def train(model: IdEncoder, steps: int, lr: float = 5e-3) -> list[float]:
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        loss = model.loss(cycle_batch(64))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def next_item_hit_rate(model: IdEncoder) -> float:
    """Share of cycle histories whose true next item ranks first."""
    windows = cycle_windows(256, L + 1)
    history, target = windows[:, :-1], windows[:, -1]
    model.eval()
    with torch.no_grad():
        scores = model.score(history, torch.full(history.shape, float("nan")))
    return (scores.argmax(1) == target).float().mean().item()


def record_encoder_inputs(model: IdEncoder, seen: dict[str, torch.Tensor], monkeypatch: pytest.MonkeyPatch) -> None:
    """Wrap model.encode so the test sees the token ids it was given."""
    encode = model.encode

    def spy(items: torch.Tensor) -> torch.Tensor:
        seen["inputs"] = items
        return encode(items)

    monkeypatch.setattr(model, "encode", spy)


def bert4rec_loss_inputs(model: IdEncoder, batch: dict[str, torch.Tensor],
                         monkeypatch: pytest.MonkeyPatch) -> tuple[torch.Tensor, torch.Tensor]:
    """The token ids BERT4Rec's loss encoded and the targets it scored, for one ``batch``."""
    seen: dict[str, torch.Tensor] = {}

    def spy(hidden: torch.Tensor, targets: torch.Tensor, *args: object) -> torch.Tensor:
        seen["targets"] = targets
        return sequence_loss(hidden, targets, *args)

    monkeypatch.setattr(bert4rec_module, "sequence_loss", spy)
    record_encoder_inputs(model, seen, monkeypatch)
    model.loss(batch)
    return seen["inputs"], seen["targets"]


# -- causality and padding --


@pytest.mark.parametrize("block", ["pre-ln", "ligr"])
def test_sasrec_output_at_a_position_ignores_every_later_item(block: str) -> None:
    torch.manual_seed(0)
    model = small(SASRec, block=block).eval()
    items = torch.randint(1, N_ITEMS + 1, (6, L))
    items[:3, :4] = 0  # some rows left-padded
    t = 5
    perturbed = items.clone()
    perturbed[:, t + 1 :] = torch.randint(1, N_ITEMS + 1, (6, L - t - 1))
    assert not torch.equal(items, perturbed)
    with torch.no_grad():
        a, b = model.encode(items), model.encode(perturbed)
    torch.testing.assert_close(a[:, : t + 1], b[:, : t + 1])
    assert not torch.allclose(a[:, t + 1 :], b[:, t + 1 :])  # later positions do read the new items


@pytest.mark.parametrize(("model_cls", "block"), [(SASRec, "pre-ln"), (SASRec, "ligr"), (GRU4Rec, "pre-ln")])
def test_output_is_the_same_under_more_left_padding_and_never_nan(model_cls: type[IdEncoder], block: str) -> None:
    torch.manual_seed(0)
    model = model_cls(n_items=N_ITEMS, max_len=20, **SMALL, block=block).eval()
    rows = [[3, 4, 5], [7], [1, 2, 3, 4, 5, 6, 7, 8], []]  # the last row is all padding
    short, long = left_pad(rows, 10), left_pad(rows, 20)
    with torch.no_grad():
        h_short, h_long = model.encode(short), model.encode(long)
        s_short, s_long = model.score(short, short.float()), model.score(long, long.float())
    assert not h_short.isnan().any() and not h_long.isnan().any()
    torch.testing.assert_close(h_short, h_long[:, -10:])
    torch.testing.assert_close(s_short, s_long)
    assert (h_long[:, :10] == 0).all()  # padding outputs are zeroed


def test_bert4rec_handles_left_padding_without_nan() -> None:
    torch.manual_seed(0)
    model = small(BERT4Rec).eval()
    items = left_pad([[3, 4, 5], [7], []], L)
    with torch.no_grad():
        scores = model.score(items, items.float())
    assert not scores.isnan().any()


# -- BERT4Rec masking and scoring --


def test_cloze_mask_hides_about_mask_prob_of_items_never_padding_and_at_least_one_per_row() -> None:
    torch.manual_seed(0)
    items = torch.randint(1, N_ITEMS + 1, (2000, 50))
    items[torch.arange(50) < torch.randint(0, 50, (2000, 1))] = 0  # left padding, 1..50 items per row
    items[0] = 0  # a row with no items at all
    masked = cloze_mask(items, 0.2)
    assert not masked[items == 0].any()
    assert masked[1:].any(dim=1).all() and not masked[0].any()
    share = masked.sum() / (items != 0).sum()
    assert abs(share.item() - 0.2) < 0.02


def test_bert4rec_loss_covers_exactly_the_masked_positions(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = small(BERT4Rec)
    batch = cycle_batch(32)
    inputs, targets = bert4rec_loss_inputs(model, batch, monkeypatch)
    is_mask = inputs == model.mask_token
    assert inputs.shape == batch["items"].shape  # the whole window, not items[:, :-1]
    assert torch.equal(targets != 0, is_mask)
    assert torch.equal(targets[is_mask], batch["items"][is_mask])
    assert torch.equal(inputs[~is_mask], batch["items"][~is_mask])


@pytest.mark.parametrize("share", [1.0, 0.5])
def test_bert4rec_mask_last_repeats_rows_with_only_the_newest_item_masked(
        share: float, monkeypatch: pytest.MonkeyPatch) -> None:
    # The paper's extra samples: the inference task ([MASK] in the newest place) trains directly.
    torch.manual_seed(0)
    model = small(BERT4Rec, mask_last=share)
    batch = cycle_batch(32)
    inputs, targets = bert4rec_loss_inputs(model, batch, monkeypatch)
    extra = round(share * 32)
    assert inputs.shape == (32 + extra, L + 1)
    rows, row_targets = inputs[32:], targets[32:]
    assert (rows[:, -1] == model.mask_token).all() and (rows[:, :-1] != model.mask_token).all()
    assert (row_targets[:, :-1] == 0).all()
    # Each extra row is one of the batch's own windows (drawn without replacement), its newest item the
    # only target.
    originals = Counter(tuple(r.tolist()) for r in batch["items"])
    restored = Counter(tuple(r.tolist()) for r in torch.cat([rows[:, :-1], row_targets[:, -1:]], dim=1))
    assert restored <= originals


def test_bert4rec_without_mask_last_trains_on_the_cloze_rows_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    model = small(BERT4Rec, mask_last=0.0)
    seen: dict[str, torch.Tensor] = {}
    record_encoder_inputs(model, seen, monkeypatch)
    model.loss(cycle_batch(32))
    assert seen["inputs"].shape == (32, L + 1)


def test_bert4rec_scores_the_mask_appended_last_over_real_items_only(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = small(BERT4Rec).eval()
    seen = {}
    record_encoder_inputs(model, seen, monkeypatch)
    items = left_pad([[3, 4, 5], list(range(1, L + 1))], L)
    with torch.no_grad():
        scores = model.score(items, items.float())
    inputs = seen["inputs"]
    assert inputs.shape == items.shape
    assert (inputs[:, -1] == model.mask_token).all()
    assert torch.equal(inputs[:, :-1], items[:, 1:])  # the oldest column makes room for [MASK]
    assert scores.shape == (2, N_ITEMS + 1)  # no column for [MASK]
    assert (scores[:, 0] == float("-inf")).all() and scores[:, 1:].isfinite().all()


# -- learning --


@pytest.mark.parametrize("model_cls", MODELS)
def test_model_learns_a_deterministic_cycle(model_cls: type[IdEncoder]) -> None:
    torch.manual_seed(0)
    model = small(model_cls)
    losses = train(model, steps=200)
    # A third, not less: BERT4Rec's cloze loss keeps a floor (a short row with every item masked has no clue).
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10 / 3
    assert next_item_hit_rate(model) > 0.9


@pytest.mark.parametrize("model_cls", [SASRec, BERT4Rec])
def test_ligr_blocks_learn_the_cycle_with_sampled_softmax(model_cls: type[IdEncoder]) -> None:
    # eSASRec's setting: LiGR layers and sampled softmax.
    torch.manual_seed(0)
    model = small(model_cls, block="ligr", loss="sampled", sampled={"negatives": 16, "sampler": "uniform"})
    assert all(type(b).__name__ == "LiGRBlock" for b in model.encoder.blocks)  # type: ignore[attr-defined]
    losses = train(model, steps=300)  # the gates start half-open (sigmoid(0)): a slower start
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:10]) / 10
    assert next_item_hit_rate(model) > 0.8


def test_unknown_transformer_block_fails_at_construction() -> None:
    with pytest.raises(ValueError, match="block"):
        SASRec(n_items=N_ITEMS, block="post-ln")


@pytest.mark.parametrize("model_cls", MODELS)
def test_bce_loss_with_sampled_negatives_decreases(model_cls: type[IdEncoder]) -> None:
    torch.manual_seed(0)
    model = small(model_cls, loss="bce", num_negatives=4)
    losses = train(model, steps=100)
    assert sum(losses[-10:]) / 10 < 0.8 * sum(losses[:10]) / 10


@pytest.mark.parametrize("model_cls", MODELS)
def test_sampled_softmax_with_shared_negatives_learns_the_cycle(model_cls: type[IdEncoder]) -> None:
    torch.manual_seed(0)
    model = small(model_cls, loss="sampled", sampled={"negatives": 16, "sampler": "uniform"})
    losses = train(model, steps=200)
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:10]) / 10
    assert next_item_hit_rate(model) > 0.8


@pytest.mark.parametrize("loss", ["ce", "bce", "sampled"])
@pytest.mark.parametrize("model_cls", MODELS)
def test_losses_give_finite_gradients(model_cls: type[IdEncoder], loss: str) -> None:
    torch.manual_seed(0)
    model = small(model_cls, loss=loss, num_negatives=3, sampled={"negatives": 8, "sampler": "mixed", "in_batch": 4})
    model.set_item_counts(torch.arange(N_ITEMS + 1))  # popularity for the mixed sampler's half
    value = model.loss(cycle_batch(16))
    assert value.ndim == 0 and value.isfinite()
    value.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(g.isfinite().all() for g in grads)


def test_bad_loss_name_fails_at_construction() -> None:
    for model_cls in MODELS:
        with pytest.raises(ValueError, match="loss"):
            model_cls(n_items=N_ITEMS, loss="bpr")


# -- the SequenceModel contract --


@pytest.mark.parametrize("model_cls", MODELS)
def test_settings_build_the_model_and_config_returns_the_constructor_kwargs(model_cls: type[IdEncoder]) -> None:
    settings = IdEncoderSettings().model_dump(exclude={"epochs"})  # epochs: a training budget
    model = model_cls(n_items=N_ITEMS, max_len=L, **settings)
    assert model.config() == {"n_items": N_ITEMS, "max_len": L, **settings}
    assert model.item_embeddings().shape == (N_ITEMS + 1, settings["hidden"])


@pytest.mark.parametrize("model_cls", MODELS)
@pytest.mark.parametrize("block", ["pre-ln", "ligr"])
def test_save_and_load_round_trip_gives_identical_scores(model_cls: type[IdEncoder], block: str,
                                                         tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = small(model_cls, block=block)
    train(model, steps=3)
    model.save(tmp_path / "model")
    loaded = model_cls.load(tmp_path / "model")
    assert loaded.config() == model.config() and not loaded.training
    items = cycle_windows(8, L)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded.score(items, items.float()), model.score(items, items.float()))
    torch.testing.assert_close(loaded.item_embeddings(), model.item_embeddings())
