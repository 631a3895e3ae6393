"""How much room a sample world leaves for content: reference rankers built from the planted truth.

The sample world plants one content signal, each track's style (lyrics, genes and audio are drawn
from it; a session mostly stays in one style). Whether content can help a recommender depends on
how well the listening itself already reveals style: where plays concentrate on popular tracks,
co-listening gives every history item a good ID embedding and content adds little. This prints,
on the workspace's leave-one-out test set (the table's protocol: full ranking, history masked):

    popularity     training play counts
    style oracle   the planted style of the newest history item, then popularity within it; a
                   model that reads style perfectly from content and ranks by popularity gets this

and the catalogue's tail (plays per track, share of listens on rare tracks), so a table's gaps
can be read against the room there was.

    ENCORE_HOME=<workspace> python bench/headroom.py [--world <folder sample-data wrote>]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from encore.core.config import load_config  # noqa: E402
from training.data import load_lake, training_plays  # noqa: E402
from training.metrics import full_ranking_ranks, metrics_from_ranks  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", type=Path, help="the folder `encore sample-data --out` wrote (default <home>/world)")
    args = parser.parse_args()
    cfg = load_config()
    truth_file = (args.world or cfg.home / "world") / "truth" / "tracks.parquet"
    if not truth_file.exists():
        sys.exit(f"no planted truth at {truth_file}: pass --world, the folder `encore sample-data --out` wrote")
    data = load_lake(cfg)
    truth = pd.read_parquet(truth_file, columns=["track_id", "style"]).set_index("track_id")["style"]
    n = len(data.vocab) + 1
    style = np.full(n, -1, dtype=np.int64)  # [n+1]; -1: padding or a track the truth lacks
    style[1:] = truth.reindex(data.vocab.track_ids).fillna(-1).to_numpy(dtype=np.int64)

    plays = training_plays(data).astype(np.float64)  # training plays per item [n+1]
    test = data.test
    newest = test.items[:, -1].numpy()  # [N]: left-padded histories, newest last
    same_style = style[newest][:, None] == style[None, :]  # [N, n+1]
    rankers = {
        "popularity": np.broadcast_to(plays, (len(test), n)),
        # Any in-style item outranks every other; popularity orders within each group.
        "style oracle": plays[None, :] + same_style * (plays.max() + 1),
    }
    played = plays[1:][plays[1:] > 0]
    print(f"{len(test)} test users, {len(data.vocab)} items; training plays per played item: "
          f"mean {played.mean():.1f}, median {np.median(played):.0f}; listens on items with <= 5 plays: "
          f"{played[played <= 5].sum() / played.sum():.0%}; test target in the newest item's style: "
          f"{np.mean(style[test.targets.numpy()] == style[newest]):.0%}; never played in training: "
          f"{np.mean(plays[test.targets.numpy()] == 0):.0%}")
    print(f"{'ranker':<14} {'hr@10':>7} {'ndcg@10':>8} {'mrr':>7}")
    for name, scores in rankers.items():
        ranks = full_ranking_ranks(torch.as_tensor(np.ascontiguousarray(scores), dtype=torch.float32),
                                   test.targets, test.history if cfg.train.eval.mask_history else None)
        m = metrics_from_ranks(ranks, [10])
        print(f"{name:<14} {m['hr@10']:>7.4f} {m['ndcg@10']:>8.4f} {m['mrr']:>7.4f}")


if __name__ == "__main__":
    main()
