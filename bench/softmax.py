"""Training cost of the loss over large catalogues: full softmax (dense, chunked) against sampled softmax.

SASRec (Encore's defaults: hidden 64, 2 blocks, batch 128, 50 positions) trains on random item
windows for a few steps at each catalogue size; each (size, loss) runs in its own process so that
peak RSS is its own. Prints samples/s and peak RSS, and the ratio to sampled softmax measured in
the same run.

    python bench/softmax.py                        # 10k, 100k, 1M items
    python bench/softmax.py --items 10000,150000 --steps 5

Losses:
    dense    the old full softmax: one [B*T, n] logit matrix and its gradient (skipped where the
             estimate exceeds --max-dense-gb; the estimate is printed instead)
    ce       the exact full softmax in item chunks (training.models.losses.chunked_cross_entropy)
    sampled  sampled softmax with the defaults: 1,024 negatives shared by the batch (half uniform, half
             by popularity), logQ-corrected
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

LOSSES = ("dense", "ce", "sampled")


def worker(items: int, loss: str, steps: int, batch: int, max_len: int) -> dict:
    import torch
    import torch.nn.functional as F

    from training.models import losses
    from training.models.sasrec import SASRec

    torch.manual_seed(0)
    model = SASRec(n_items=items, max_len=max_len, loss="sampled" if loss == "sampled" else "ce")
    # The default sampler draws half its negatives by training popularity: a Zipf-like count vector.
    model.set_item_counts(torch.cat([torch.zeros(1), 1.0 / torch.arange(1, items + 1)]))
    if loss == "dense":
        # The code before chunking: F.cross_entropy over one [N, n] logit matrix.
        def dense(h, table, target, bias=None, chunk=None):  # type: ignore[no-untyped-def]
            return F.cross_entropy(h @ table.T, target)

        losses.chunked_cross_entropy = dense  # type: ignore[assignment]
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    g = torch.Generator().manual_seed(1)
    model.train()
    times, values = [], []
    for step in range(steps + 1):  # step 0 warms up (allocator, threads) and is not timed
        x = torch.randint(1, items + 1, (batch, max_len + 1), generator=g)
        t0 = time.perf_counter()
        value = model.loss({"items": x, "completion": torch.full(x.shape, float("nan"))})
        opt.zero_grad()
        value.backward()
        opt.step()
        if step:
            times.append(time.perf_counter() - t0)
        values.append(float(value))
    return {"items": items, "loss": loss, "steps": steps, "samples_per_s": batch * len(times) / sum(times),
            "seconds_per_step": sum(times) / len(times),
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", default="10000,100000,1000000", help="catalogue sizes, comma-separated")
    ap.add_argument("--steps", type=int, default=3, help="timed optimizer steps per run (after one warm-up)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--max-len", type=int, default=50)
    ap.add_argument("--max-dense-gb", type=float, default=8.0, help="skip dense runs estimated above this")
    ap.add_argument("--worker", nargs=2, metavar=("ITEMS", "LOSS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(int(args.worker[0]), args.worker[1], args.steps, args.batch_size, args.max_len)))
        return

    from training.models.losses import full_ce_bytes

    rows = []
    for n in [int(x) for x in args.items.split(",")]:
        for loss in LOSSES:
            need = full_ce_bytes(args.batch_size * args.max_len, n) / 1e9
            if loss == "dense" and need > args.max_dense_gb:
                rows.append({"items": n, "loss": loss, "skipped": f"logits + gradient alone: {need:.1f} GB"})
                continue
            steps = args.steps if loss == "sampled" or n <= 100_000 else 1
            cmd = [sys.executable, __file__, "--worker", str(n), loss, "--steps", str(steps),
                   "--batch-size", str(args.batch_size), "--max-len", str(args.max_len)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if out.returncode:
                rows.append({"items": n, "loss": loss, "skipped": f"failed (rc {out.returncode}): "
                             f"{out.stderr.strip().splitlines()[-1:]}"})
                continue
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"  {n:>9,} items  {loss:<8} {rows[-1]['samples_per_s']:>9.1f} samples/s  "
                  f"{rows[-1]['peak_rss_gb']:.2f} GiB", file=sys.stderr, flush=True)

    sampled = {r["items"]: r["samples_per_s"] for r in rows if r["loss"] == "sampled" and "samples_per_s" in r}
    print(f"SASRec, batch {args.batch_size} x {args.max_len} positions, {time.strftime('%Y-%m-%d')}\n")
    print("| items | loss | samples/s | s/step | peak RSS (GiB) | samples/s vs sampled |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        if "skipped" in r:
            print(f"| {r['items']:,} | {r['loss']} | not run: {r['skipped']} | | | |")
            continue
        ratio = r["samples_per_s"] / sampled[r["items"]] if r["items"] in sampled else float("nan")
        print(f"| {r['items']:,} | {r['loss']} | {r['samples_per_s']:.1f} | {r['seconds_per_step']:.2f} | "
              f"{r['peak_rss_gb']:.2f} | {ratio:.3f}× |")


if __name__ == "__main__":
    main()
