"""Training data: splits never leak the future, windows cover every target once, formats parse."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from encore.core.config import TrainConfig
from training.data import (
    DataError,
    Sequences,
    Vocab,
    load_standard,
    loo_split,
    prefix_samples,
    read_standard,
    seq2seq_windows,
    split,
    standard_attributes,
    time_split,
    vocabulary,
)

NAN = float("nan")


def seqs(*items: list[int], start: int = 0) -> Sequences:
    users = [f"u{i}" for i in range(len(items))]
    arrays = [np.array(s, dtype=np.int64) for s in items]
    comps = [np.linspace(0.1, 0.9, len(s)).astype(np.float32) for s in items]
    ts = [start + 100 * np.arange(len(s), dtype=np.int64) + 7 * i for i, s in enumerate(items)]
    return Sequences(users, arrays, comps, ts)


def test_leave_one_out_holds_out_the_last_two_items_and_trains_on_the_rest() -> None:
    ds = loo_split(seqs([1, 2, 3, 4, 5], [6, 7], [2, 4, 6]), Vocab([str(i) for i in range(1, 8)]), max_len=3)
    assert [s.tolist() for s in ds.train.items] == [[1, 2, 3], [6, 7], [2]]  # u1 is too short to test
    assert ds.valid.users == ["u0", "u2"] and ds.valid.targets.tolist() == [4, 4]
    assert ds.test.targets.tolist() == [5, 6]
    # Histories: the last max_len items before the target, left-padded.
    assert ds.valid.items.tolist() == [[1, 2, 3], [0, 0, 2]]
    assert ds.test.items.tolist() == [[2, 3, 4], [0, 2, 4]]
    assert torch.isnan(ds.test.completion[1, 0]) and not torch.isnan(ds.test.completion[1, 1])


def test_masking_history_is_the_models_window_not_the_whole_past() -> None:
    ds = loo_split(seqs([1, 2, 3, 4, 5, 6]), Vocab([str(i) for i in range(1, 7)]), max_len=2)
    masked = set(ds.test.history[0].indices.tolist())
    assert masked == {4, 5}  # item 1..3 are older than the window and stay recommendable


def test_time_split_trains_only_on_listens_before_validation_and_tests_after_the_quantile() -> None:
    data = seqs(list(range(1, 21)), list(range(21, 41)))
    ds = time_split(data, Vocab([str(i) for i in range(1, 41)]), max_len=5, quantile=0.9)
    t_valid, t_test = ds.info["valid_from"], ds.info["test_from"]
    assert t_valid < t_test
    for t in ds.train.ts:
        assert (t < t_valid).all()
    for evalset, lo, hi in ((ds.valid, t_valid, t_test), (ds.test, t_test, None)):
        assert len(evalset) > 0
        assert (evalset.timestamps >= lo).all() and (hi is None or (evalset.timestamps < hi).all())
    # Every history item was played before its target.
    all_ts = {int(i): int(t) for s, ts in zip(data.items, data.ts, strict=True) for i, t in zip(s, ts, strict=True)}
    for row, target_time in zip(ds.test.items, ds.test.timestamps, strict=True):
        assert all(all_ts[int(i)] < target_time for i in row if i > 0)


def test_seq2seq_windows_make_every_item_after_the_first_a_target_exactly_once() -> None:
    data = seqs(list(range(1, 12)), [12, 13])
    items, comp = seq2seq_windows(data, max_len=4)
    assert items.shape[1] == 5 and comp.shape == items.shape
    targets = [int(w[i + 1]) for w in items for i in range(len(w) - 1) if w[i] > 0]
    assert sorted(targets) == [*range(2, 12), 13]


def test_prefix_samples_are_seeded_and_differ_between_epochs() -> None:
    data = seqs(list(range(1, 40)), list(range(40, 70)))
    a, _ = prefix_samples(data, max_len=5, per_user=4, seed=1)
    b, _ = prefix_samples(data, max_len=5, per_user=4, seed=1)
    c, _ = prefix_samples(data, max_len=5, per_user=4, seed=2)
    assert a.shape == (8, 6) and torch.equal(a, b) and not torch.equal(a, c)
    # Each window is a contiguous run of the user's sequence ending at its target.
    for w in a:
        real = w[w > 0].tolist()
        assert real == list(range(real[0], real[0] + len(real)))


def test_vocabulary_keeps_tracks_with_enough_plays_most_played_first() -> None:
    vocab = vocabulary([["a", "b", "b", "c"], ["b", "c", "d"]], min_plays=2)
    assert vocab.track_ids == ["b", "c"] and vocab.encode(["c", "a", "b"]).tolist() == [2, 0, 1]


def test_split_refuses_data_that_leaves_no_test_example() -> None:
    with pytest.raises(DataError, match="no validation or test"):
        split(seqs([1, 2]), Vocab(["1", "2"]), TrainConfig())


def test_standard_format_reads_both_layouts_and_attributes(tmp_path: Path) -> None:
    one_line = tmp_path / "seq.txt"
    one_line.write_text("1 1 2 3 4\n2 2 3 5\n")
    per_pair = tmp_path / "pairs.txt"
    per_pair.write_text("".join(f"{u} {i}\n" for u, row in (("1", [1, 2, 3, 4]), ("2", [2, 3, 5])) for i in row))
    assert [s.tolist() for s in read_standard(one_line).items] == [s.tolist() for s in read_standard(per_pair).items]
    ds = load_standard(one_line, TrainConfig(max_len=3))
    assert ds.test.targets.tolist() == [ds.vocab.index["4"], ds.vocab.index["5"]]
    attrs = tmp_path / "attrs.json"
    attrs.write_text('{"1": [0, 2], "3": [1]}')
    table = standard_attributes(attrs, ds.vocab)
    meta, present = table.vectors["meta"], table.present["meta"]
    assert meta.shape == (len(ds.vocab) + 1, 3)
    assert meta[ds.vocab.index["1"]].tolist() == [1.0, 0.0, 1.0] and not present[ds.vocab.index["2"]]


def test_standard_format_names_a_bad_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_text("1 1 2\n7\n")
    with pytest.raises(DataError, match=r"bad.txt:2"):
        read_standard(bad)


def test_popularity_breakdown_buckets_examples_by_plays_of_newest_item_and_target_and_by_history_length() -> None:
    from training.train import popularity_breakdown

    # Training plays: item 1 x7 (6-20); items 2-7 once (1-5); 8 and 9 never (0).
    train = [[1, 1, 1, 1, 2], [1, 1, 1, 3], [4, 5], [6, 7]]
    ds = loo_split(seqs(*[[*s, 9, 8] for s in train]), Vocab([str(i) for i in range(1, 10)]), max_len=3)
    # Every test example: newest history item 9, target 8; the first two are then rewritten.
    assert [s.tolist() for s in ds.train.items] == train
    ds.test.items[0, -1], ds.test.targets[0] = 1, 2  # newest item popular (7 plays), target rare (1)
    ds.test.items[1, -1], ds.test.targets[1] = 3, 1  # newest rare, target popular
    ranks = torch.tensor([0, 20, 1, 3])  # hit@10 for examples 0, 2, 3
    out = popularity_breakdown(ds, ranks, [10]).set_index(["facet", "bucket"])
    assert out.loc[("newest item", "6-20"), "examples"] == 1 and out.loc[("newest item", "6-20"), "hr@10"] == 1.0
    assert out.loc[("newest item", "1-5"), "hr@10"] == 0.0
    assert out.loc[("newest item", "0"), "examples"] == 2
    assert out.loc[("target", "1-5"), "hr@10"] == 1.0 and out.loc[("target", "6-20"), "hr@10"] == 0.0
    assert out.loc[("target", "0"), "mrr"] == pytest.approx((1 / 2 + 1 / 4) / 2)
    assert ("target", ">20") not in out.index  # empty buckets are left out
    # max_len 3: every test history holds 3 items (its last 3), so all four are in the 1-3 bucket.
    assert out.loc[("history", "1-3"), "examples"] == 4 and ("history", "4-7") not in out.index


@pytest.mark.parametrize("grouped", [False, True])
def test_epoch_batches_hold_every_window_once(grouped: bool) -> None:
    from training.trainer import epoch_batches

    g = torch.Generator().manual_seed(0)
    items = torch.zeros(1000, 11, dtype=torch.long)
    for r, n in enumerate(torch.randint(2, 12, (1000,), generator=g).tolist()):
        items[r, 11 - n:] = 1
    order = torch.randperm(1000, generator=g)
    batches = epoch_batches(order, items, 16, grouped, seed=3)
    assert sorted(torch.cat(batches).tolist()) == list(range(1000))
    assert all(len(b) <= 16 for b in batches)
    assert [b.tolist() for b in epoch_batches(order, items, 16, grouped, seed=3)] == [b.tolist() for b in batches]


def test_grouped_batches_hold_alike_lengths_in_a_shuffled_order() -> None:
    from training.trainer import epoch_batches

    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(2, 52, (4000,), generator=g)
    items = torch.zeros(4000, 51, dtype=torch.long)
    for r, n in enumerate(lengths.tolist()):
        items[r, 51 - n:] = 1
    order = torch.randperm(4000, generator=g)
    plain = epoch_batches(order, items, 32, False, seed=1)
    grouped = epoch_batches(order, items, 32, True, seed=1)
    # A padded batch is as wide as its longest window: grouping cuts the padded width to pay for.
    width = lambda bs: sum(int(lengths[b].max()) * len(b) for b in bs)  # noqa: E731
    assert width(grouped) < 0.7 * width(plain)
    # Not sorted over the whole epoch: short and long batches alternate.
    maxima = [int(lengths[b].max()) for b in grouped]
    assert maxima != sorted(maxima) and maxima != sorted(maxima, reverse=True)


@pytest.mark.parametrize("kind", ["bert4rec", "sasrec"])
def test_bert4rec_crops_draw_random_windows_each_epoch_and_other_models_keep_the_fixed_ones(kind: str) -> None:
    from types import SimpleNamespace

    from training.models import build_id_encoder
    from training.trainer import windows_for

    data = SimpleNamespace(train=seqs(list(range(1, 40)), list(range(40, 70))))
    tc = TrainConfig(max_len=5)
    fixed, _ = seq2seq_windows(data.train, 5)
    plain = build_id_encoder(kind, 80, 5, tc.id.model_dump(exclude={"epochs"}))
    assert torch.equal(windows_for(plain, data, tc, epoch=0)[0], fixed)

    cropped = build_id_encoder(kind, 80, 5, {**tc.id.model_dump(exclude={"epochs"}), "crops": 8})
    first, second = (windows_for(cropped, data, tc, epoch=e)[0] for e in (0, 1))
    if kind == "sasrec":  # crops are BERT4Rec's alone
        assert torch.equal(first, fixed) and torch.equal(second, fixed)
        return
    assert first.shape == (16, 6) and not torch.equal(first, second)
    assert torch.equal(first, windows_for(cropped, data, tc, epoch=0)[0])  # the seed and epoch fix the draw
    # Windows end at random points, not only at each sequence's newest item as the fixed ones do.
    newest = {w[-1].item() for w in first}
    assert newest - {39, 69}
