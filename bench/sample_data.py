"""Benchmark: generate the full-scale sample world (1,000 users, 50,000 tracks, 365 days).

Prints the listen count (target: about 5M) and the generation rate (target: >= 1M listens/min),
with and without audio clips for 2,000 tracks. Not a test:

    .venv/bin/python bench/sample_data.py [--users 1000 --tracks 50000 --days 365]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from encore.sample_world.generator import WorldConfig, generate_world


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--tracks", type=int, default=50000)
    ap.add_argument("--days", type=int, default=365)
    args = ap.parse_args()
    for clips in (0, 2000):
        out = Path(tempfile.mkdtemp(prefix="encore-world-"))
        try:
            s = generate_world(WorldConfig(users=args.users, tracks=args.tracks, days=args.days, clips=clips), out,
                               progress=False)
            size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 1e6
        finally:
            shutil.rmtree(out, ignore_errors=True)
        print(f"clips={clips:>5}: {s.listens:,} listens, {s.sessions:,} sessions in {s.seconds:.1f}s = "
              f"{s.listens / s.seconds * 60 / 1e6:.1f}M listens/min, {size:,.0f} MB on disk")


if __name__ == "__main__":
    main()
