"""Content embeddings for every catalog track, as a Ray Data job: lyrics, audio, metadata.

    lake/content/embeddings/encoder=E/version=V/run=R/part-0.parquet
        track_id, input_sha, embedding list<float32> (null when there was nothing to encode),
        reason (why null; CONTENT_REASONS), computed_at. Every vector ever computed: the cache.
    lake/features/track_content/part-0.parquet      (the Feast source of view `track_content`)
        one row per catalog track: lyrics_embedding, audio_embedding, metadata_embedding (current
        versions, null + *_reason where missing), genes + genes_source (catalog | llm | none),
        the three versions, event_timestamp, created.

Incremental: a track is encoded again only when no row exists for (track_id, encoder, version)
with the same ``input_sha`` (a digest of what the encoder reads: the lyrics text, the genes, the
audio file's path, size and mtime). A rerun computes nothing; a new version (see
``jobs.encoders.encoder_specs``) recomputes everything for that encoder; a changed input or a new
LLM annotation recomputes that track.

The encoders run as callable classes in Ray actor pools (``ActorPoolStrategy``), one pool per
model (text: lyrics and the gene rendering; audio), chained in one streaming pipeline over the
tracks that need any encoder (see :func:`iter_encoded`): each model loads once per actor, on a
GPU where the cluster has GPUs (``embed.num_gpus``), CPU otherwise. Results stream back to the
driver and are written with pyarrow into staging, then published with the lake's journaled swap:
a killed run leaves nothing visible and its rerun starts clean.

Content describes the recording, not a moment, so ``event_timestamp`` is a fixed epoch
(``CONTENT_VALID_FROM``): point-in-time joins at any date find it, and ``created`` (the newest
vector's computation time) orders rewrites.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from encore.core import atomic, faults
from encore.core import lake as lk
from encore.core.config import EncoreConfig
from encore.core.progress import Progress
from encore.core.schemas import CONTENT_VALID_FROM, ENCODER_ERROR, ENCODERS, TRACK_CONTENT_TABLE
from encore.core.workspace import Workspace
from jobs.encoders import EncoderSpec, build_encoders, encoder_specs
from jobs.lake import newest_per_key

log = logging.getLogger(__name__)

_TS = pa.timestamp("us", tz="UTC")
CACHE_SCHEMA = pa.schema([
    ("track_id", pa.string()), ("input_sha", pa.string()), ("embedding", pa.list_(pa.float32())),
    ("reason", pa.string()), ("computed_at", _TS),
])


class EmbedError(RuntimeError):
    """The job cannot run (no catalog yet); the message says what to run first."""


@dataclass
class EncoderStats:
    version: str = ""
    dim: int | None = None
    catalog: int = 0  # tracks in the catalog
    cached: int = 0  # already had a vector (or a recorded reason) for this version and input
    computed: int = 0  # sent to the encoder this run
    embedded: int = 0  # of those, got a vector
    missing: dict[str, int] = field(default_factory=dict)  # of those, reason -> count


@dataclass
class EmbedReport:
    run_id: str
    started_at: str
    tracks: int = 0
    genes_from: dict[str, int] = field(default_factory=dict)  # catalog | llm | none
    encoders: dict[str, EncoderStats] = field(default_factory=dict)
    encode_seconds: float = 0.0  # the Ray pipeline, all encoders together (they run at once)
    tracks_per_second: float | None = None  # tracks needing any encoder / encode_seconds
    content_rows: int = 0
    content_nulls: dict[str, int] = field(default_factory=dict)  # modality -> tracks without a vector
    recovered_publications: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------- inputs


def _sha(*parts: object) -> str:
    return hashlib.sha1("\x1f".join("" if p is None else str(p) for p in parts).encode()).hexdigest()[:20]


def read_catalog(cfg: EncoreConfig) -> pa.Table:
    """Bronze tracks with genes filled from LLM annotations where the catalog has none.

    Columns: track_id, artist_name, track_name, lyrics, audio_path, genes, genes_source.
    """
    from jobs.annotate import current_annotations

    ws = Workspace.at(cfg.home)
    cat = lk.read_tracks(ws.tracks, ["track_id", "artist_name", "track_name", "lyrics", "audio_path", "genes"])
    if cat is None:
        raise EmbedError(f"no track catalog under {ws.tracks}: run `encore ingest --catalog ...` first")
    llm = current_annotations(cfg)
    llm_genes = dict(zip(llm.column("track_id").to_pylist(), llm.column("genes").to_pylist(), strict=True))
    genes = cat.column("genes").to_pylist()
    source = []
    for i, tid in enumerate(cat.column("track_id").to_pylist()):
        # An annotation exists for a track with catalog genes only when asked for (--force): then
        # the LLM's answer is what the user wanted.
        if tid in llm_genes:
            genes[i] = llm_genes[tid]
            source.append("llm")
        else:
            source.append("catalog" if genes[i] is not None else "none")
    cat = cat.set_column(cat.schema.get_field_index("genes"), "genes", pa.array(genes, pa.list_(pa.float32())))
    return cat.append_column("genes_source", pa.array(source, pa.string()))


def encoder_inputs(name: str, catalog: pa.Table) -> pa.Table:
    """The columns encoder ``name`` reads, plus ``input_sha``: a digest of exactly those inputs."""
    tids = catalog.column("track_id").to_pylist()
    if name == "lyrics":
        cols = {"lyrics": catalog.column("lyrics")}
        shas = [_sha(t) for t in catalog.column("lyrics").to_pylist()]
    elif name == "audio":
        cols = {"audio_path": catalog.column("audio_path")}
        shas = []
        for p in catalog.column("audio_path").to_pylist():
            try:
                st = os.stat(p) if p else None
            except OSError:
                st = None
            # The file's identity without reading it; a file that appears later changes the digest.
            shas.append(_sha(p, st.st_size, st.st_mtime_ns) if st else _sha(p, "absent"))
    elif name == "metadata":
        cols = {"genes": catalog.column("genes")}
        shas = [_sha(None if g is None else np.asarray(g, np.float32).tobytes().hex())
                for g in catalog.column("genes").to_pylist()]
    else:
        raise ValueError(f"unknown encoder {name!r}")
    return pa.table({"track_id": pa.array(tids, pa.string()), "input_sha": pa.array(shas, pa.string()), **cols})


def cached(ws: Workspace, spec: EncoderSpec, extra: Sequence[pa.Table] = (),
           columns: Sequence[str] = tuple(CACHE_SCHEMA.names)) -> pa.Table:
    """The newest cache row per track for ``spec``'s version (plus ``extra`` staged rows).

    The newest, not any: a track whose lyrics went A -> B -> A must be encoded again for A, since
    the content table takes each track's newest row. ``columns`` must include track_id and
    computed_at (pass fewer to skip reading the vectors).
    """
    folder = ws.embeddings(spec.name, spec.version)
    schema = pa.schema([CACHE_SCHEMA.field(c) for c in columns])
    parts = [ds.dataset(folder, format="parquet", partitioning="hive").to_table(columns=list(columns))
             .cast(schema)] if folder.is_dir() and any(folder.rglob("*.parquet")) else []
    tables = [*parts, *(e.select(list(columns)) for e in extra)]
    t = pa.concat_tables(tables) if tables else schema.empty_table()
    return newest_per_key(t, "track_id", ["computed_at"])


# ---------------------------------------------------------------- the Ray part


class EncodeBatch:
    """Ray Data callable class: one model per actor, serving the encoders that use it.

    In: a pipeline batch (track_id, lyrics, audio_path, genes, need_<encoder> for each encoder).
    Out: the same batch plus ``<name>_embedding`` and ``<name>_reason`` for each of this stage's
    encoders (both null on rows that encoder was not asked for). One bad track costs that track
    (reason ``encoder_error``), never the batch or the job.
    """

    def __init__(self, specs: Sequence[EncoderSpec], threads: int) -> None:
        import torch
        import transformers

        torch.set_num_threads(max(1, threads))
        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        self.encoders = build_encoders(specs)

    def _encode(self, name: str, rows: pa.Table) -> tuple[list[Any], list[str | None]]:
        encoder = self.encoders[name]
        try:
            return encoder.encode(rows)
        except Exception:
            log.exception("%s encoder failed on a batch; retrying its %d tracks one by one", name, rows.num_rows)
        vecs: list[Any] = []
        reasons: list[str | None] = []
        for i in range(rows.num_rows):
            try:
                v, r = encoder.encode(rows.slice(i, 1))
            except Exception as exc:
                log.error("%s encoder failed on track %s: %s", name, rows.column("track_id")[i].as_py(), exc)
                v, r = [None], [ENCODER_ERROR]
            vecs += v
            reasons += r
        return vecs, reasons

    def __call__(self, batch: pa.Table) -> pa.Table:
        for name in self.encoders:
            need = np.flatnonzero(batch.column(f"need_{name}").to_numpy(zero_copy_only=False))
            vecs: list[Any] = [None] * batch.num_rows
            reasons: list[str | None] = [None] * batch.num_rows
            if len(need):
                got, why = self._encode(name, batch.take(pa.array(need)))
                for i, v, r in zip(need, got, why, strict=True):
                    vecs[i], reasons[i] = (None if v is None else np.asarray(v, np.float32)), r
            batch = (batch.append_column(f"{name}_embedding", pa.array(vecs, pa.list_(pa.float32())))
                     .append_column(f"{name}_reason", pa.array(reasons, pa.string())))
        return batch


def _uses_gpu(spec: EncoderSpec) -> bool:
    """Torch models gain from a GPU; librosa descriptors and bare genes run on CPU."""
    return spec.settings.get("kind") not in ("audio-descriptors", "metadata-genes")


def stages(specs: Sequence[EncoderSpec]) -> list[list[EncoderSpec]]:
    """Encoders grouped by the model they run: audio, and text (lyrics + the metadata rendering).

    One actor pool per model, not per output: the text model then loads once per actor (a
    sentence-transformers import and load cost ~5 s of CPU each) and sits on a GPU once.
    """
    audio = [s for s in specs if s.name == "audio"]
    text = [s for s in specs if s.name != "audio"]
    return [g for g in (text, audio) if g]


def iter_encoded(cfg: EncoreConfig, specs: Sequence[EncoderSpec], todo: pa.Table) -> Iterator[pa.Table]:
    """Encode ``todo`` with every encoder in ``specs`` in one streaming Ray Data pipeline.

    ``todo``: track_id, lyrics, audio_path, genes and ``need_<name>`` per encoder. One
    ``map_batches`` stage per model (:func:`stages`), each a callable class in its own actor pool,
    all running at once: models load in parallel and blocks stream from one stage to the next, so
    the librosa stage (one core) overlaps the text stage. CPUs are shared out so every actor fits
    at once; torch stages split ``embed.num_gpus`` where the cluster has GPUs. Yields output
    batches as they finish (in no particular order).
    """
    from encore.core.ray_session import actor_options, get_ray, gpus_per_actor

    ray = get_ray(cfg.ray)
    actors = cfg.embed.actors
    node_cpus = max((n["Resources"].get("CPU", 1.0) for n in ray.nodes() if n.get("Alive")), default=1.0)
    groups = stages(specs)
    gpu_stages = sum(any(_uses_gpu(s) for s in g) for g in groups) or 1
    n = cfg.embed.rows_per_block
    dataset = ray.data.from_arrow([todo.slice(i, n) for i in range(0, todo.num_rows, n)])
    for group in groups:
        with actor_options():
            dataset = dataset.map_batches(
                EncodeBatch,
                # Threads per actor: the node's cores over the pool, not over the stages - a stage that
                # waits on its neighbours should not leave cores idle.
                fn_constructor_kwargs={"specs": group, "threads": int(max(1, node_cpus // actors))},
                batch_format="pyarrow",
                batch_size=_batch_size(cfg, group[0].name),
                compute=ray.data.ActorPoolStrategy(size=actors),
                num_cpus=node_cpus / (len(groups) * actors),
                num_gpus=gpus_per_actor(ray, cfg.embed.num_gpus / gpu_stages) if any(map(_uses_gpu, group)) else 0,
                # Ray Data keeps actor constructor arguments in the object store, and with restarts on
                # (its default) logs at every pool start that a restart could fail. A lost actor fails
                # the job instead; the job is all-or-nothing and a rerun encodes what is missing.
                max_restarts=0,
            )
    # Stream results to the driver rather than `write_parquet`: no write tasks compete with the
    # actors for CPUs, and the job stages one file per encoder for its journaled publication.
    yield from dataset.iter_batches(batch_format="pyarrow", batch_size=None)


def _batch_size(cfg: EncoreConfig, name: str) -> int:
    return cfg.embed.audio.batch_size if name == "audio" else cfg.embed.text.batch_size


# ---------------------------------------------------------------- the job


def _encode_to_stage(cfg: EncoreConfig, active: Sequence[EncoderSpec], todo: pa.Table, stage: Path,
                     report: EmbedReport) -> dict[str, Path]:
    """Run the pipeline and write each encoder's rows to ``stage/embeddings/<name>/part-0.parquet``.

    Batches are written as they arrive, so the driver never holds a whole catalog's vectors.
    Returns encoder -> staged file; fills each encoder's ``embedded`` / ``missing`` counts.
    """
    now = pa.scalar(datetime.now(UTC), _TS)
    files = {s.name: stage / "embeddings" / s.name / "part-0.parquet" for s in active}
    counts = {s.name: Counter() for s in active}
    writers = {}
    bar = Progress(todo.num_rows, "embed " + "+".join(files), "track")
    t1 = time.perf_counter()
    try:
        for name, f in files.items():
            f.parent.mkdir(parents=True)
            writers[name] = pq.ParquetWriter(f, CACHE_SCHEMA)
        for batch in iter_encoded(cfg, active, todo):
            bar.update(batch.num_rows)
            for name, writer in writers.items():
                rows = batch.filter(batch[f"need_{name}"])
                writer.write_table(pa.table({
                    "track_id": rows["track_id"], "input_sha": rows[f"sha_{name}"],
                    "embedding": rows[f"{name}_embedding"], "reason": rows[f"{name}_reason"],
                    "computed_at": pa.array([now.as_py()] * rows.num_rows, _TS)}).cast(CACHE_SCHEMA))
                counts[name].update(r if r is not None else "" for r in rows[f"{name}_reason"].to_pylist())
    finally:
        bar.close()
        for writer in writers.values():
            writer.close()
    report.encode_seconds = round(time.perf_counter() - t1, 3)
    report.tracks_per_second = round(todo.num_rows / report.encode_seconds, 2) if report.encode_seconds else None
    for name, c in counts.items():
        stats = report.encoders[name]
        stats.embedded = c.pop("", 0)
        stats.missing = dict(sorted(c.items()))
    return files


def _content_table(catalog: pa.Table, shas: dict[str, pa.ChunkedArray], latest: dict[str, pa.Table],
                   specs: dict[str, EncoderSpec], report: EmbedReport) -> pa.Table:
    """One row per catalog track, joining each encoder's newest row that matches the current input.

    ``shas``: encoder -> the current input digests, in catalog order (from :func:`encoder_inputs`).
    """
    tids = catalog.column("track_id").to_pylist()
    cols: dict[str, Any] = {"track_id": pa.array(tids, pa.string())}
    created = CONTENT_VALID_FROM
    for name in ENCODERS:
        rows = latest[name]
        by_tid = {t: i for i, t in enumerate(rows.column("track_id").to_pylist())}
        row_shas, embs, reasons = (rows.column(c).to_pylist() for c in ("input_sha", "embedding", "reason"))
        vec_col, reason_col = [], []
        for tid, sha in zip(tids, shas[name].to_pylist(), strict=True):
            i = by_tid.get(tid)
            if i is None or row_shas[i] != sha:  # cannot happen after a complete run; say so if it does
                vec_col.append(None)
                reason_col.append("not_computed")
            else:
                vec_col.append(embs[i])
                reason_col.append(reasons[i])
        if rows.num_rows:
            created = max(created, pc.max(rows.column("computed_at")).as_py())
        cols[f"{name}_embedding"] = pa.array(vec_col, pa.list_(pa.float32()))
        cols[f"{name}_reason"] = pa.array(reason_col, pa.string())
        cols[f"{name}_version"] = pa.array([specs[name].version] * len(tids), pa.string())
        report.content_nulls[name] = sum(v is None for v in vec_col)
    cols["genes"] = catalog.column("genes")
    cols["genes_source"] = catalog.column("genes_source")
    cols["event_timestamp"] = pa.array([CONTENT_VALID_FROM] * len(tids), _TS)
    cols["created"] = pa.array([created] * len(tids), _TS)
    return pa.table(cols)


def embed(cfg: EncoreConfig) -> EmbedReport:
    """Compute the missing content embeddings and publish the ``track_content`` Feast source."""
    t0 = time.perf_counter()
    run_id = atomic.new_run_id()
    ws = Workspace.at(cfg.home)
    report = EmbedReport(run_id=run_id, started_at=datetime.now(UTC).isoformat(timespec="seconds"))
    # The lake lock, like every writer of lake/: recovery and staging cleanup must not race a
    # publication of another job.
    with ws.lock("lake"):
        report.recovered_publications = atomic.recover(ws.journals)
        shutil.rmtree(ws.tmp / "staging", ignore_errors=True)
        stage = ws.staging(run_id)
        catalog = read_catalog(cfg)
        report.tracks = catalog.num_rows
        report.genes_from = dict(Counter(catalog.column("genes_source").to_pylist()))
        specs = encoder_specs(cfg.embed)
        swaps: list[atomic.Swap] = []
        todo = catalog.select(["track_id", "lyrics", "audio_path", "genes"])
        shas: dict[str, pa.Array] = {}
        for name in ENCODERS:
            spec = specs[name]
            stats = report.encoders.setdefault(name, EncoderStats(version=spec.version, catalog=catalog.num_rows))
            inputs = encoder_inputs(name, catalog)  # same row order as the catalog
            have = cached(ws, spec, columns=("track_id", "input_sha", "computed_at"))
            done = set(zip(have.column("track_id").to_pylist(), have.column("input_sha").to_pylist(), strict=True))
            need = [(t, h) not in done for t, h in zip(inputs.column("track_id").to_pylist(),
                                                       inputs.column("input_sha").to_pylist(), strict=True)]
            shas[name] = inputs.column("input_sha")
            todo = todo.append_column(f"need_{name}", pa.array(need, pa.bool_()))
            stats.computed = sum(need)
            stats.cached = inputs.num_rows - stats.computed
            log.info("embed %s %s: %d tracks to encode, %d cached", name, spec.version, stats.computed, stats.cached)
        for name in ENCODERS:
            todo = todo.append_column(f"sha_{name}", shas[name])
        active = [specs[n] for n in ENCODERS if report.encoders[n].computed]
        todo = todo.filter(pc.or_(pc.or_(todo["need_lyrics"], todo["need_audio"]), todo["need_metadata"]))
        written = _encode_to_stage(cfg, active, todo, stage, report) if active else {}
        latest: dict[str, pa.Table] = {}
        for name in ENCODERS:
            stats = report.encoders[name]
            new: list[pa.Table] = []
            if name in written:
                live = ws.embeddings(name, specs[name].version) / f"run={run_id}"
                swaps.append(atomic.Swap(written[name].parent, live, ws.trash / run_id / "embeddings" / name))
                new.append(pq.read_table(written[name]))
                log.info("embed %s: %d vectors, missing %s", name, stats.embedded, stats.missing or "none")
            latest[name] = cached(ws, specs[name], new)
            dims = {len(v) for v in latest[name].column("embedding").to_pylist() if v is not None}
            stats.dim = dims.pop() if len(dims) == 1 else None
        content = _content_table(catalog, shas, latest, specs, report)
        report.content_rows = content.num_rows
        staged = stage / TRACK_CONTENT_TABLE
        staged.mkdir(parents=True)
        pq.write_table(content, staged / "part-0.parquet")
        trash = ws.trash / run_id / TRACK_CONTENT_TABLE
        swaps.append(atomic.Swap(staged, ws.feature_table(TRACK_CONTENT_TABLE), trash))
        faults.point("embed.staged")
        atomic.publish_run(swaps, ws.journals, stage, ws.trash / run_id)
        report.seconds = round(time.perf_counter() - t0, 3)
        atomic.write_report(ws.reports("embed"), run_id, report.to_dict())
    log.info("embed %s: %d tracks, content nulls %s, %.1f s", run_id, report.tracks, report.content_nulls,
             report.seconds)
    return report


def read_content(cfg: EncoreConfig) -> pa.Table:
    """The published ``track_content`` table (empty when ``encore embed`` has not run)."""
    path = Workspace.at(cfg.home).feature_table(TRACK_CONTENT_TABLE)
    if not path.is_dir():
        return pa.table({})
    return ds.dataset(path, format="parquet").to_table()


__all__ = [
    "EmbedError",
    "EmbedReport",
    "embed",
    "encoder_inputs",
    "iter_encoded",
    "read_catalog",
    "read_content",
]

