"""The paper preset end to end on a sample world with heavy listeners, and its ablation rows.

    python bench/paper_preset.py --home /tmp/paper-home                 # world, lake, table
    python bench/paper_preset.py --home /tmp/paper-home --lm /models/Qwen2.5-7B-Instruct

Generates a world whose listeners pass the paper's filters at the paper's own numbers (>= 1,000
plays, >= 50 sessions of 20-minute gaps, tracks with >= 7 plays), ingests it and builds the
features, then runs `encore bench table --preset paper` over the ID models and the LLM zero-shot
ranker. Without --lm the ranker reads a tiny random causal LM whose tokenizer knows every word of
the catalogue (tests/fixtures/tiny_llm.py): it has no knowledge, so its Recall@10 over 200
candidates should sit near random's 0.05 — a sanity check of the protocol, not a result.
Prints each filter step's counts and the table (docs/paper.md quotes it).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
WORLD_ARGS = ["--users", "40", "--tracks", "3000", "--days", "120", "--clips", "none", "--seed", "5"]
ROWS = ["SASRec", "BERT4Rec", "GRU4Rec", "LLM zero-shot"]


def sh(*args: str, env_home: Path) -> None:
    import os

    env = {**os.environ, "ENCORE_HOME": str(env_home)}
    subprocess.run([str(BIN / "encore"), *args], check=True, env=env)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", type=Path, required=True, help="workspace to build (reused when it has a lake)")
    ap.add_argument("--lm", type=Path, help="local causal LM folder for the zero-shot row (default: tiny random)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", default="30", help="ID models' most epochs")
    args = ap.parse_args()
    home: Path = args.home.resolve()
    t0 = time.time()
    world = home / "world"
    if not (home / "lake").exists():
        sh("sample-data", "--out", str(world), *WORLD_ARGS, env_home=home)
        sh("ingest", "--listens", str(world / "userid-timestamp-artid-artname-traid-traname.tsv"),
           "--profiles", str(world / "userid-profile.tsv"), "--catalog", str(world / "catalog.jsonl"), env_home=home)
        sh("features", env_home=home)
    print(f"world and lake ready in {time.time() - t0:.0f} s")

    lm = args.lm
    if lm is None:
        sys.path.insert(0, str(ROOT))
        from encore.core.config import load_config
        from tests.fixtures.tiny_llm import make_tiny_causal_lm_for_texts
        from training.data import Vocab, item_texts, read_listens

        cfg = load_config(home=home)
        tracks = sorted({t for ts in read_listens(cfg)["track_ids"] for t in ts})
        lm = make_tiny_causal_lm_for_texts(home / "tiny-lm", item_texts(cfg, Vocab(tracks))[1:])
    only = [a for row in ROWS for a in ("--only", row)]
    t1 = time.time()
    sh("bench", "table", "--preset", "paper", "--seeds", args.seeds, "--epochs", args.epochs, "--backbone",
       str(lm), *only, env_home=home)
    print(f"table in {time.time() - t1:.0f} s; whole bench {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
