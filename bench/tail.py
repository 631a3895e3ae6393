"""Where a content gain comes from: test metrics by how often the tracks were played in training.

Content can only add what co-listening leaves out, and that is the tail: a track played once or
twice has an ID vector that has seen almost no updates, while its lyrics, genes and audio are
whole. This trains the chosen rows of the ablation table (same settings as ``encore bench
table``; one seed by default) and prints NDCG@10 per bucket of training plays of

    newest item   the newest track in the test history (what the next track should follow)
    target        the held-out track itself (how well its scoring row has been trained)

side by side, so a row's overall gain or loss can be traced to the head or the tail. Every run is
tracked in MLflow with ``test_by_popularity.csv``; the table is also written to
``<home>/outputs/bench-tail/by_popularity.csv`` and drawn in ``by_popularity.png``.

    ENCORE_HOME=<workspace> python bench/tail.py [--only SASRec --only "E4SRec + metadata" ...]
        [--seed 0] [--epochs 8] [--id-epochs 30] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from encore.core.config import load_config  # noqa: E402
from encore.core.workspace import Workspace  # noqa: E402
from training.ablation import apply_changes, variant_config, variants  # noqa: E402
from training.data import content_table, load_lake  # noqa: E402
from training.train import train  # noqa: E402

DEFAULT_ROWS = ["SASRec", "E4SRec (ID)", "E4SRec + metadata", "E4SRec + all (concat)"]


def plot(table: pd.DataFrame, path: Path) -> Path:
    """Grouped bars: one panel per facet, one group per plays bucket, one bar per row of the table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = [c for c in table.columns if c != "examples"]
    facets = list(dict.fromkeys(table.index.get_level_values(0)))
    fig, axes = plt.subplots(1, len(facets), figsize=(6 * len(facets), 4), sharey=True, squeeze=False)
    width = 0.8 / len(names)
    for ax, facet in zip(axes[0], facets, strict=True):
        part = table.loc[facet]
        x = np.arange(len(part))
        for i, name in enumerate(names):
            ax.bar(x + i * width, part[name], width, label=name)
        ax.set_xticks(x + width * (len(names) - 1) / 2,
                      [f"{b}\n({n} ex.)" for b, n in zip(part.index, part["examples"], strict=True)])
        ax.set_xlabel("items in the test history" if facet == "history" else f"training plays of the {facet}")
        ax.set_title("by history length" if facet == "history" else f"by the {facet}'s popularity")
    axes[0][0].set_ylabel("test NDCG@10")
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", help=f"a table row (repeatable; default {DEFAULT_ROWS})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, help="most epochs (E4SRec rows)")
    parser.add_argument("--id-epochs", type=int, help="most epochs (ID rows and E4SRec's ID encoder)")
    parser.add_argument("--batch-size", type=int)
    args = parser.parse_args()
    # The trainer logs each epoch's loss and validation NDCG@10: the progress of a long run.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    names = args.only or DEFAULT_ROWS
    rows = {v.name: v for v in variants()}
    unknown = [n for n in names if n not in rows]
    if unknown:
        sys.exit(f"unknown rows {unknown}; the table has {list(rows)}")

    cfg = load_config()
    overrides = {k: v for k, v in (("epochs", args.epochs), ("id.epochs", args.id_epochs),
                                   ("batch_size", args.batch_size)) if v is not None}
    base = apply_changes(cfg.train, overrides)
    data = load_lake(cfg)
    content = content_table(cfg, data.vocab, ("lyrics", "audio", "meta"))
    columns, overall = {}, {}
    for name in names:
        tc = variant_config(base, rows[name], args.seed)
        out = train(cfg.model_copy(update={"train": tc}), data=data, content=content, register=False,
                    log_model=False, run_name=f"tail: {name} seed {args.seed}", tags={"encore.bench": "tail"})
        columns[name] = out.by_popularity.set_index(["facet", "bucket"])
        overall[name] = out.test["ndcg@10"]
    first = next(iter(columns.values()))
    table = pd.concat({"examples": first["examples"], **{n: c["ndcg@10"] for n, c in columns.items()}}, axis=1)
    out_dir = Workspace.at(cfg.home).outputs / "bench-tail"
    out_dir.mkdir(parents=True, exist_ok=True)
    table.to_csv(out_dir / "by_popularity.csv")
    plot(table, out_dir / "by_popularity.png")
    print(f"\nTest NDCG@10 by training plays and history length (seed {args.seed}, {len(data.test)} test examples)")
    print(table.to_string(float_format=lambda x: f"{x:.4f}"))
    print("all test examples: " + ", ".join(f"{n} {v:.4f}" for n, v in overall.items()))


if __name__ == "__main__":
    main()
