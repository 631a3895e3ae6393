"""What padding and the prompt cost E4SRec on short histories, each change against the earlier code
in the same run: training batches plain vs length-grouped vs grouped with the shared prompt prefix,
and evaluation in input order vs shortest first, trimmed, with the shared prefix.

A window is left-padded to ``max_len + 1`` items. On Amazon Beauty the median user has 6 items, so
a random batch pays for a window of ~45 (its longest) while holding ~7 items a row, plus the
prompt's 24 instruction tokens. Training: ``e4srec.group_by_length``
(``training.trainer.epoch_batches`` + ``trim_padding``); the shared prefix
(``E4SRec.shares_prefix``, on for causal backbones) runs the instruction once per batch.
Evaluation: ``training.metrics.evaluate_ranks`` scores shortest first and trims each batch; its
baseline is the earlier loop (input order, full width, no shared prefix), written out below.

    python bench/padding.py                         # Beauty from shared/, MiniLM, 20 batches each
    python bench/padding.py --data my.txt --batches 40 --eval-users 4096

The backbone, item tables and weights are random or untrained: speed only, never quality.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
BEAUTY = REPO.parent / "shared" / "datasets" / "beauty" / "Beauty.txt"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=BEAUTY, help="standard benchmark file (user item item ...)")
    ap.add_argument("--batches", type=int, default=20, help="training batches timed per mode")
    ap.add_argument("--eval-users", type=int, default=2048, help="validation users scored per mode")
    ap.add_argument("--batch-size", type=int, default=128)
    args = ap.parse_args()

    import torch

    from encore.core.config import E4SRecSettings, EvalSettings, TrainConfig
    from encore.core.progress import Progress
    from training.data import load_standard, seq2seq_windows
    from training.metrics import evaluate_ranks, full_ranking_ranks
    from training.models.base import ContentTable, trim_padding
    from training.models.e4srec import E4SRec, default_backbone, read_prompt
    from training.trainer import epoch_batches

    tc = TrainConfig(model="e4srec", batch_size=args.batch_size)
    data = load_standard(args.data, tc)
    n = len(data.vocab)
    items, comp = seq2seq_windows(data.train, tc.max_len)
    real = (items != 0).sum(dim=1).float()
    print(f"{args.data.name}: {n:,} items, {len(items):,} training windows of {items.shape[1]}, "
          f"{real.mean():.1f} items a window on average (median {real.median():.0f})")

    torch.manual_seed(0)
    settings = E4SRecSettings(modalities=["id"]).model_dump(mode="json")
    model = E4SRec(n, default_backbone(), read_prompt(), settings, 64, {}, max_len=tc.max_len)
    model.set_item_tables(torch.randn(n + 1, 64), ContentTable())
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    order = torch.randperm(len(items), generator=torch.Generator().manual_seed(0))

    rows = []
    for grouped, shared in ((False, False), (True, False), (True, True)):
        model.shares_prefix = shared
        batches = epoch_batches(order, items, tc.batch_size, grouped, seed=1)[: args.batches]
        model.train()
        width, seen = 0, 0
        t0 = time.perf_counter()
        with Progress(len(batches), f"train, {'grouped' if grouped else 'plain'} batches", "batch") as bar:
            for idx in batches:
                x, c = trim_padding(items[idx], comp[idx]) if grouped else (items[idx], comp[idx])
                model.loss({"items": x, "completion": c}).backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                width += x.shape[1] * len(idx)
                seen += len(idx)
                bar.update(1)
        seconds = time.perf_counter() - t0
        how = "+ shared prefix" if shared else "length-grouped, trimmed" if grouped else "random batches, full width"
        rows.append(("train", how, seen / seconds, width / seen))

    ev = data.valid
    users = torch.arange(min(args.eval_users, len(ev)))
    x_all, c_all, t_all = ev.items[users], ev.completion[users], ev.targets[users]
    hist = ev.history[users.numpy()]
    model.eval()
    model.shares_prefix = False
    t0 = time.perf_counter()
    with torch.no_grad():
        before = torch.cat([full_ranking_ranks(model.score(x_all[s:s + 256], c_all[s:s + 256]), t_all[s:s + 256],
                                               hist[s:s + 256]) for s in range(0, len(users), 256)])
    rows.append(("evaluate", "input order, full width", len(users) / (time.perf_counter() - t0), x_all.shape[1]))
    model.shares_prefix = True
    t0 = time.perf_counter()
    after = evaluate_ranks(model, x_all, c_all, t_all, hist, EvalSettings(), batch_size=256)
    rows.append(("evaluate", "shortest first, trimmed, prefix", len(users) / (time.perf_counter() - t0),
                 float((x_all != 0).sum(dim=1).float().mean())))
    same = float((before == after).float().mean())

    print(f"\n{'step':<9} {'batches':<32} {'rows/s':>8} {'width':>6} {'vs baseline':>12}")
    for step, how, rate, w in rows:
        base = next(r[2] for r in rows if r[0] == step)  # the step's first row: the earlier code
        print(f"{step:<9} {how:<32} {rate:>8.1f} {w:>6.1f} {rate / base:>11.2f}x")
    print(f"\nevaluation ranks equal to the baseline's for {same:.1%} of users "
          "(float sums differ by batch; a tie at the target's score can move its rank)")
    print(f"torch threads: {torch.get_num_threads()}; train width = padded columns per window, "
          "evaluate width = mean real items per history (the trimmed batch's is its longest)")


if __name__ == "__main__":
    main()
