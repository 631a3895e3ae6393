"""Tracks without genes -> the 58 MGPHot genes, scored 0..5 by a prompted LLM (Ray Data).

As in "Multimodal Music Recommendation System using LLMs": a few-shot prompt gives the model a
track's artist, title and lyrics and asks for one JSON object scoring every gene 0..5; the answer
is validated and stored divided by ``GENE_SCALE`` (same [0, 1] scale as the catalog's own genes).

    lake/content/annotations/run=R/part-00000.parquet      valid answers of run R (the cache)
        track_id, prompt_version, model, genes list<float32>[58], attempts, annotated_at
    lake/quarantine/annotations/run=R/part-00000.parquet   rejected answers of run R, raw text kept
        track_id, prompt_version, model, reason, raw_text, detail, attempts, annotated_at

Behaviour:

* The cache key is (track_id, prompt_version, model). ``prompt_version`` is the template's file
  stem plus a hash of its text, so editing the prompt re-annotates everything; the model name
  (``annotate.model``, else the local folder name) does the same for a new model.
* A run sends the catalog's tracks that have no genes (all tracks with ``force``), minus those with
  a valid cached answer for the key, minus those quarantined for the key (unless ``retry_invalid``),
  capped by ``limit``. Nothing to send: no backend is built and Ray is not started.
* Each track gets up to ``max_attempts`` tries; an invalid answer, a timeout and a backend error
  each cost one. The first valid answer wins; otherwise the last failure's reason (one of
  ``ANNOTATION_REASONS``) goes to quarantine. A greedy local model gives the same answer every
  time, so it is not asked again after an invalid answer.
* Backends: ``http`` (an OpenAI-compatible ``/chat/completions``, as vLLM serves) or ``local`` (a
  transformers causal LM folder, one copy per Ray actor, on a GPU where the cluster has one).
* Results are collected in the driver, staged under ``tmp/staging/<run>/`` and published with one
  journal (``encore.core.atomic``): a killed run leaves nothing visible, and its rerun sends again
  exactly what is still missing. Consumers read :func:`current_annotations`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import string
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import requests

from encore.core import atomic, faults
from encore.core import lake as lk
from encore.core.config import AnnotateConfig, ConfigError, EncoreConfig
from encore.core.ray_session import get_ray, gpus_per_actor
from encore.core.schemas import ANNOTATION_REASONS, GENE_SCALE, GENES
from encore.core.workspace import Workspace
from jobs.lake import newest_per_key

log = logging.getLogger(__name__)

PACKAGED_PROMPT = Path(__file__).resolve().parent / "prompts" / "mgphot_v1.txt"
PLACEHOLDERS = ("artist", "title", "lyrics")  # $artist, $title, $lyrics: JSON braces stay literal
NO_LYRICS = "(instrumental or unknown)"
# ~500 tokens: with the packaged prompt (5.5k characters, ~1.6k tokens) and a ~500-token answer,
# a track fits a 4k-token context.
MAX_LYRICS_CHARS = 2000
BATCH_SIZE = 4  # tracks per actor call: an LLM answer takes seconds, so small batches balance actors
BLOCKS_PER_ACTOR = 4  # blocks are the unit Ray hands to actors; a few per actor evens out slow ones
HTTP_ACTOR_CPUS = 0.25  # an http actor waits on the server; a whole CPU each would cap concurrency
GENE_SET = frozenset(GENES)
# Model output is untrusted data. A valid answer is ~1.5k characters (58 "gene": n pairs), a chatty
# one a few thousand: anything past these is a runaway generation or a hostile server, rejected
# before it is parsed (the parser tries every "{", so its cost grows with the text) or stored.
MAX_ANSWER_CHARS = 32_000
MAX_RESPONSE_BYTES = 1_000_000  # an HTTP body (JSON envelope included) read at most this far
RAW_TEXT_KEPT = 4_000  # of a rejected answer, kept in quarantine for a person to read
_DETAIL_KEYS = 5  # gene names listed in an error detail before "..."

VALID_SCHEMA = pa.schema([
    ("track_id", pa.string()), ("prompt_version", pa.string()), ("model", pa.string()),
    ("genes", pa.list_(pa.float32())), ("attempts", pa.int32()), ("annotated_at", pa.timestamp("us", tz="UTC")),
])
QUARANTINE_SCHEMA = pa.schema([
    ("track_id", pa.string()), ("prompt_version", pa.string()), ("model", pa.string()), ("reason", pa.string()),
    ("raw_text", pa.string()), ("detail", pa.string()), ("attempts", pa.int32()),
    ("annotated_at", pa.timestamp("us", tz="UTC")),
])
# One row per sent track, as the actors return it; reason is null exactly when genes is not.
RESULT_SCHEMA = pa.schema([
    ("track_id", pa.string()), ("genes", pa.list_(pa.float32())), ("reason", pa.string()),
    ("raw_text", pa.string()), ("attempts", pa.int32()), ("detail", pa.string()),
    ("annotated_at", pa.timestamp("us", tz="UTC")),
])
CURRENT_SCHEMA = pa.schema([("track_id", pa.string()), ("genes", pa.list_(pa.float32()))])
_SEND_COLUMNS = ("track_id", "artist_name", "track_name", "lyrics")


class InvalidAnswer(ValueError):
    """An answer that is not a complete, in-range gene object; ``reason`` is one of ANNOTATION_REASONS."""

    def __init__(self, reason: str, detail: str) -> None:
        assert reason in ANNOTATION_REASONS, reason
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class BackendTimeout(RuntimeError):
    """The backend did not answer within ``annotate.timeout_s``."""


class BackendError(RuntimeError):
    """The backend failed: HTTP error status, connection refused, malformed response, generation error."""


class Backend(Protocol):
    deterministic: bool  # True: asking again gives the same answer, so an invalid one is not retried

    def generate(self, prompt: str) -> str: ...


# --------------------------------------------------------------------------- prompt and cache key
def prompt_file(acfg: AnnotateConfig) -> Path:
    """The template in use: ``annotate.prompt``, else the packaged MGPHot few-shot prompt."""
    return acfg.prompt or PACKAGED_PROMPT


def load_template(acfg: AnnotateConfig) -> str:
    """The template's text; a missing file or a missing ``$artist/$title/$lyrics`` is a ConfigError."""
    path = prompt_file(acfg)
    if not path.is_file():
        raise ConfigError(f"annotate.prompt: template file not found: {path}")
    text = path.read_text(encoding="utf-8")
    tpl = string.Template(text)
    if not tpl.is_valid():
        raise ConfigError(f"annotate.prompt: {path} has a '$' that is not a placeholder; write a literal one as $$")
    missing = [p for p in PLACEHOLDERS if p not in tpl.get_identifiers()]
    if missing:
        raise ConfigError(f"annotate.prompt: {path} lacks the placeholder(s) {', '.join('$' + p for p in missing)}")
    return text


def prompt_version(cfg: EncoreConfig) -> str:
    """``<template stem>-<sha256[:8] of its text>``, e.g. ``mgphot_v1-3fa2c1d0``: any edit is a new version."""
    text = load_template(cfg.annotate)
    return f"{prompt_file(cfg.annotate).stem}-{hashlib.sha256(text.encode('utf-8')).hexdigest()[:8]}"


def model_id(cfg: EncoreConfig) -> str:
    """The model half of the cache key: ``annotate.model``, else (local) the model folder's name."""
    acfg = cfg.annotate
    if acfg.model:
        return acfg.model
    if acfg.backend == "local" and acfg.model_path is not None:
        return acfg.model_path.resolve().name
    if acfg.backend == "http":
        raise ConfigError("annotate.model: set the model name the server serves (it is also the cache key)")
    raise ConfigError("annotation is not configured: set annotate.backend (local or http) and "
                      "annotate.model_path (local) or annotate.url and annotate.model (http)")


def render_prompt(template: str, artist: str | None, title: str | None, lyrics: str | None) -> str:
    """Fill ``$artist``, ``$title``, ``$lyrics``; blank lyrics say so, long ones are cut to MAX_LYRICS_CHARS."""
    text = (lyrics or "").strip()
    if not text:
        text = NO_LYRICS
    elif len(text) > MAX_LYRICS_CHARS:
        text = text[:MAX_LYRICS_CHARS].rstrip() + "\n[...]"
    # Values are not re-parsed, so a "$" or "{" in a title or lyric goes through as written.
    return string.Template(template).substitute(artist=artist or "", title=title or "", lyrics=text)


# --------------------------------------------------------------------------- answers
def _first_json_object(text: str) -> dict[str, Any] | None:
    """The first ``{...}`` in ``text`` that decodes as a JSON object (prose and ``` fences around it are fine)."""
    decoder = json.JSONDecoder()
    start = text.find("{")
    while start != -1:
        try:
            obj, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            start = text.find("{", start + 1)
            continue
        except RecursionError:  # thousands of nested brackets: hostile or broken, never genes
            return None
        return obj
    return None


def _names(keys: list[str]) -> str:
    return ", ".join(keys[:_DETAIL_KEYS]) + (f" ... ({len(keys)} in all)" if len(keys) > _DETAIL_KEYS else "")


def _is_score(v: object) -> bool:
    # bool is an int subclass; True is not a score. 3.0 is (some servers emit floats).
    if isinstance(v, bool):
        return False
    if isinstance(v, int):
        return 0 <= v <= GENE_SCALE
    return isinstance(v, float) and v.is_integer() and 0 <= v <= GENE_SCALE


def parse_answer(text: str) -> list[float]:
    """The 58 gene scores in GENES order, each in [0, 1] (score / GENE_SCALE), or InvalidAnswer.

    Checked in order: not absurdly long (too_long), a JSON object exists (no_json), every gene is in
    it (missing_genes), nothing else is (unknown_genes), every value is an integer 0..5 (bad_value).
    """
    if len(text) > MAX_ANSWER_CHARS:
        raise InvalidAnswer("too_long", f"{len(text):,} characters (at most {MAX_ANSWER_CHARS:,})")
    obj = _first_json_object(text)
    if obj is None:
        raise InvalidAnswer("no_json", "no JSON object in the answer")
    missing = [g for g in GENES if g not in obj]
    if missing:
        raise InvalidAnswer("missing_genes", _names(missing))
    unknown = sorted(k for k in obj if k not in GENE_SET)
    if unknown:
        raise InvalidAnswer("unknown_genes", _names(unknown))
    bad = [f"{g}={obj[g]!r}" for g in GENES if not _is_score(obj[g])]
    if bad:
        raise InvalidAnswer("bad_value", _names(bad))
    return [float(obj[g]) / GENE_SCALE for g in GENES]  # [58]


# --------------------------------------------------------------------------- backends
class HttpBackend:
    """An OpenAI-compatible chat-completions server (vLLM, llama.cpp server, TGI, hosted APIs)."""

    deterministic = False  # server-side batching can change a greedy answer; a retry may help

    def __init__(self, acfg: AnnotateConfig, api_key: str | None = None) -> None:
        if not acfg.url:
            raise ConfigError("annotate.url: set the server's base URL, e.g. http://127.0.0.1:8000/v1")
        if not acfg.model:
            raise ConfigError("annotate.model: set the model name the server serves")
        self.endpoint = acfg.url.rstrip("/") + "/chat/completions"
        self.model = acfg.model
        self.timeout_s = acfg.timeout_s
        self.temperature = acfg.temperature
        self.max_tokens = acfg.max_new_tokens
        key = api_key if api_key is not None else os.environ.get(acfg.api_key_env)
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.session = requests.Session()  # keeps the connection open across tracks

    def generate(self, prompt: str) -> str:
        body = {"model": self.model, "messages": [{"role": "user", "content": prompt}],
                "temperature": self.temperature, "max_tokens": self.max_tokens}
        try:
            with self.session.post(self.endpoint, json=body, headers=self.headers, timeout=self.timeout_s,
                                   stream=True) as r:
                raw = _read_capped(r, MAX_RESPONSE_BYTES)
        except requests.Timeout as exc:
            raise BackendTimeout(f"no answer from {self.endpoint} within {self.timeout_s}s") from exc
        except requests.RequestException as exc:
            raise BackendError(f"{type(exc).__name__}: {exc}") from exc
        text = raw.decode("utf-8", errors="replace")
        if not r.ok:
            raise BackendError(f"HTTP {r.status_code} from {self.endpoint}: {text[:300]}")
        try:
            content = json.loads(text)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise BackendError(f"malformed chat-completions response: {text[:300]}") from exc
        if not isinstance(content, str):
            raise BackendError(f"answer content is {type(content).__name__}, not text")
        return content


def _read_capped(r: requests.Response, limit: int) -> bytes:
    """The response body, or BackendError once it passes ``limit`` bytes (the rest is never read)."""
    buf = bytearray()
    for chunk in r.iter_content(chunk_size=65536):
        buf += chunk
        if len(buf) > limit:
            raise BackendError(f"response from the server passed {limit:,} bytes; not read further")
    return bytes(buf)


class LocalBackend:
    """A Hugging Face causal LM folder, loaded once (per actor), on CUDA when there is one."""

    def __init__(self, acfg: AnnotateConfig) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local folder only: never a download
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = acfg.model_path
        if path is None or not path.is_dir():
            raise ConfigError(f"annotate.model_path: not a model folder: {path}")
        self.torch = torch
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        # GPU: the checkpoint's own dtype (usually bf16). CPU: float32, which every CPU kernel has.
        dtype = "auto" if self.device == "cuda" else torch.float32
        self.model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype,
                                                          use_safetensors=True)  # no pickles
        self.model.to(self.device).eval()
        self.max_new_tokens = acfg.max_new_tokens
        self.temperature = acfg.temperature
        self.deterministic = acfg.temperature == 0
        self.chat = bool(getattr(self.tokenizer, "chat_template", None))

    def generate(self, prompt: str) -> str:
        tok = self.tokenizer
        if self.chat:
            text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                           add_generation_prompt=True)
        else:
            text = prompt
        # A chat template writes its own BOS; adding special tokens again would double it.
        enc = tok(text, return_tensors="pt", add_special_tokens=not self.chat).to(self.device)
        sampling: dict[str, Any] = (dict(do_sample=True, temperature=self.temperature) if self.temperature > 0
                                    else dict(do_sample=False))
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        try:
            with self.torch.inference_mode():
                out = self.model.generate(**enc, max_new_tokens=self.max_new_tokens, pad_token_id=pad, **sampling)
        except Exception as exc:  # out of memory, a prompt past the context: this track fails, the run goes on
            raise BackendError(f"generation failed: {type(exc).__name__}: {exc}") from exc
        new = out[0, enc["input_ids"].shape[1]:]  # [T_new]: the answer only, not the echoed prompt
        return tok.decode(new, skip_special_tokens=True)


def _check_backend_config(acfg: AnnotateConfig) -> None:
    """Fail in the driver, naming the keys to set, before any actor starts."""
    if acfg.backend is None:
        raise ConfigError("annotation is not configured: set annotate.backend (local or http) and "
                          "annotate.model_path (local) or annotate.url and annotate.model (http)")
    if acfg.backend == "local":
        if acfg.model_path is None:
            raise ConfigError("annotate.model_path: set the causal LM folder for annotate.backend=local")
        if not acfg.model_path.is_dir():
            raise ConfigError(f"annotate.model_path: not a folder: {acfg.model_path}")
    elif not acfg.url:
        raise ConfigError("annotate.url: set the server's base URL (e.g. http://127.0.0.1:8000/v1) "
                          "for annotate.backend=http")


def make_backend(acfg: AnnotateConfig, api_key: str | None = None) -> Backend:
    """The configured backend; ConfigError names the keys to set. ``api_key`` overrides the env var."""
    _check_backend_config(acfg)
    if acfg.backend == "local":
        return LocalBackend(acfg)
    return HttpBackend(acfg, api_key=api_key)


# --------------------------------------------------------------------------- one track, one batch
def annotate_track(backend: Backend, prompt: str, max_attempts: int) -> dict[str, Any]:
    """Ask up to ``max_attempts`` times; the first valid answer wins.

    Returns genes ([58] in [0, 1], or None), reason (None when valid, else the last failure's),
    raw_text (the last answer received, or None), attempts (tries made) and detail (why, or None).
    """
    reason: str | None = None
    detail: str | None = None
    raw: str | None = None
    for attempt in range(1, max_attempts + 1):
        try:
            raw = backend.generate(prompt)
        except BackendTimeout as exc:
            reason, detail = "timeout", str(exc)
            continue
        except BackendError as exc:
            reason, detail = "backend_error", str(exc)
            if attempt < max_attempts:
                time.sleep(min(2.0 ** (attempt - 1), 8.0))  # a restarting server gets a moment
            continue
        try:
            genes = parse_answer(raw)
        except InvalidAnswer as exc:
            reason, detail = exc.reason, exc.detail
            raw = raw[:RAW_TEXT_KEPT]
            if backend.deterministic:
                return dict(genes=None, reason=reason, raw_text=raw, attempts=attempt, detail=detail)
            continue
        return dict(genes=genes, reason=None, raw_text=raw, attempts=attempt, detail=None)
    return dict(genes=None, reason=reason, raw_text=raw, attempts=max_attempts, detail=detail)


class Annotator:
    """Ray Data callable class: builds the backend once per actor, annotates a batch of tracks.

    In: pyarrow batch with track_id, artist_name, track_name, lyrics. Out: RESULT_SCHEMA rows.
    """

    def __init__(self, acfg: AnnotateConfig, template: str, api_key: str | None = None) -> None:
        self.backend = make_backend(acfg, api_key=api_key)
        self.template = template
        self.max_attempts = acfg.max_attempts

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = []
        for t in batch.select(list(_SEND_COLUMNS)).to_pylist():
            prompt = render_prompt(self.template, t["artist_name"], t["track_name"], t["lyrics"])
            res = annotate_track(self.backend, prompt, self.max_attempts)
            rows.append({"track_id": t["track_id"], **res, "annotated_at": datetime.now(UTC)})
        return pa.Table.from_pylist(rows, schema=RESULT_SCHEMA)


# --------------------------------------------------------------------------- the job
@dataclass
class AnnotateReport:
    run_id: str
    prompt_version: str
    model: str | None  # None when nothing was to be sent and no model is configured
    catalog_tracks: int = 0
    skipped_has_genes: int = 0  # the catalog has genes (only without force)
    skipped_cached: int = 0  # a valid answer for (prompt_version, model) exists
    skipped_quarantined: int = 0  # an invalid answer for the key exists (only without retry_invalid)
    sent: int = 0
    valid: int = 0
    invalid: dict[str, int] = field(default_factory=dict)  # reason -> tracks
    attempts: int = 0  # requests made, retries included
    seconds: float = 0.0
    recovered_publications: int = 0


def _configured_model(cfg: EncoreConfig) -> str | None:
    try:
        return model_id(cfg)
    except ConfigError:
        return None


def _run_dataset(root: Path) -> pads.Dataset | None:
    """Every ``run=R/`` folder under ``root`` as one dataset (``run`` as a string column)."""
    if not root.is_dir() or not any(root.glob("run=*/*.parquet")):
        return None
    part = pads.partitioning(pa.schema([("run", pa.string())]), flavor="hive")
    return pads.dataset(root, format="parquet", partitioning=part)


def _keyed_ids(root: Path, version: str, model: str) -> set[str]:
    d = _run_dataset(root)
    if d is None:
        return set()
    key = (pc.field("prompt_version") == version) & (pc.field("model") == model)
    return set(d.to_table(columns=["track_id"], filter=key)["track_id"].to_pylist())


def _read_catalog(ws: Workspace) -> pa.Table:
    cols = [*_SEND_COLUMNS, "genes"]
    t = lk.read_tracks(ws.tracks, cols)  # sorted by track: `limit` takes the same tracks on every run
    if t is None:
        log.warning("annotate: no bronze tracks under %s; run ingest with a catalog first", ws.tracks)
        return pa.table({c: pa.array([], pa.list_(pa.float32()) if c == "genes" else pa.string()) for c in cols})
    return t


def _results_on_ray(cfg: EncoreConfig, template: str, todo: pa.Table) -> pa.Table:
    """Annotate ``todo`` (track_id, artist_name, track_name, lyrics) on an actor pool; RESULT_SCHEMA rows."""
    acfg = cfg.annotate
    ray = get_ray(cfg.ray)
    n = todo.num_rows
    per_block = max(1, math.ceil(n / (acfg.concurrency * BLOCKS_PER_ACTOR)))
    blocks = [todo.slice(i, per_block) for i in range(0, n, per_block)]
    local = acfg.backend == "local"
    # Read in the driver: on a cluster the actors do not see the driver's environment.
    api_key = None if local else os.environ.get(acfg.api_key_env)
    out = ray.data.from_arrow(blocks).map_batches(
        Annotator,
        fn_constructor_kwargs=dict(acfg=acfg, template=template, api_key=api_key),
        batch_format="pyarrow",
        batch_size=BATCH_SIZE,
        # No more actors than blocks: each local actor loads a whole model.
        compute=ray.data.ActorPoolStrategy(size=min(acfg.concurrency, len(blocks))),
        num_gpus=gpus_per_actor(ray, acfg.num_gpus) if local else 0,
        num_cpus=1 if local else HTTP_ACTOR_CPUS,
    )
    tables = [t for t in ray.get(out.to_arrow_refs()) if t.num_rows]
    return pa.concat_tables(tables).cast(RESULT_SCHEMA) if tables else RESULT_SCHEMA.empty_table()


def _stage(table: pa.Table, folder: Path) -> None:
    folder.mkdir(parents=True)
    pq.write_table(table, folder / "part-00000.parquet", compression="snappy")


def _publish(ws: Workspace, run_id: str, results: pa.Table, version: str, model: str) -> None:
    """Stage the valid and the rejected answers, then swap both in under one journal."""
    n = results.num_rows
    keyed = {"track_id": results["track_id"], "prompt_version": pa.array([version] * n, pa.string()),
             "model": pa.array([model] * n, pa.string())}
    ok = pc.is_null(results["reason"])
    full = pa.table({**keyed, **{c: results[c] for c in results.column_names if c != "track_id"}})
    stage = ws.staging(run_id)
    swaps = []
    valid = full.filter(ok).select(VALID_SCHEMA.names).cast(VALID_SCHEMA)
    if valid.num_rows:
        _stage(valid, stage / "annotations" / f"run={run_id}")
        swaps.append(atomic.Swap(stage / "annotations" / f"run={run_id}", ws.annotations / f"run={run_id}",
                                 ws.trash / run_id / "annotations"))
    bad = full.filter(pc.invert(ok)).select(QUARANTINE_SCHEMA.names).cast(QUARANTINE_SCHEMA)
    if bad.num_rows:
        live = ws.quarantine("annotations") / f"run={run_id}"
        _stage(bad, stage / "quarantine" / f"run={run_id}")
        swaps.append(atomic.Swap(stage / "quarantine" / f"run={run_id}", live, ws.trash / run_id / "quarantine"))
    faults.point("annotate.staged")  # kill test: answers staged, nothing published
    atomic.publish_run(swaps, ws.journals, stage, ws.trash / run_id)


def annotate(cfg: EncoreConfig, force: bool = False, retry_invalid: bool = False,
             limit: int | None = None) -> AnnotateReport:
    """Annotate the catalog's tracks that lack genes and have no cached answer; returns (and stores) the report.

    ``force``: also tracks whose catalog has genes. ``retry_invalid``: send quarantined tracks again.
    ``limit``: send at most this many (to try a model on a few tracks first).
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    t0 = time.perf_counter()
    run_id = atomic.new_run_id()
    ws = Workspace.at(cfg.home)
    acfg = cfg.annotate
    template = load_template(acfg)
    version = prompt_version(cfg)
    # The lake lock, like every writer of lake/: recovery and staging must not race another job's
    # publication (jobs under it clear tmp/staging at start).
    with ws.lock("lake"):
        recovered = atomic.recover(ws.journals)
        # Whatever staging is left belongs to killed runs (we hold the lock): it was never published.
        shutil.rmtree(ws.tmp / "staging", ignore_errors=True)
        catalog = _read_catalog(ws)
        model = _configured_model(cfg)  # None is only an error if something is to be sent (below)
        report = AnnotateReport(run_id=run_id, prompt_version=version, model=model,
                                catalog_tracks=catalog.num_rows, recovered_publications=recovered)
        todo = catalog if force else catalog.filter(pc.is_null(catalog["genes"]))
        report.skipped_has_genes = catalog.num_rows - todo.num_rows
        if todo.num_rows:
            model = model_id(cfg)  # raises the ConfigError naming the keys to set
            cached = _keyed_ids(ws.annotations, version, model)
            rejected = _keyed_ids(ws.quarantine("annotations"), version, model) - cached
            ids = todo["track_id"]
            is_cached = pc.is_in(ids, value_set=pa.array(sorted(cached), pa.string()))
            is_rejected = pc.is_in(ids, value_set=pa.array(sorted(rejected), pa.string()))
            report.skipped_cached = pc.sum(is_cached).as_py() or 0
            drop = is_cached
            if not retry_invalid:
                report.skipped_quarantined = pc.sum(is_rejected).as_py() or 0
                drop = pc.or_(drop, is_rejected)
            todo = todo.filter(pc.invert(drop))
        if limit is not None:
            todo = todo.slice(0, limit)
        report.sent = todo.num_rows
        if todo.num_rows:
            assert model is not None
            _check_backend_config(acfg)
            log.info("annotate %s: sending %d tracks to %s (%s, prompt %s)", run_id, todo.num_rows, model,
                     acfg.backend, version)
            results = _results_on_ray(cfg, template, todo.select(list(_SEND_COLUMNS)))
            reasons = [r for r in results["reason"].to_pylist() if r is not None]
            report.valid = results.num_rows - len(reasons)
            report.invalid = dict(sorted(Counter(reasons).items()))
            report.attempts = pc.sum(results["attempts"]).as_py() or 0
            _publish(ws, run_id, results, version, model)
        report.seconds = round(time.perf_counter() - t0, 3)
        atomic.write_report(ws.reports("annotate"), run_id, asdict(report))
    log.info("annotate %s: %d tracks, %d sent, %d valid, invalid %s, skipped %d with genes / %d cached / "
             "%d quarantined, %d attempts, %.1fs", run_id, report.catalog_tracks, report.sent, report.valid,
             report.invalid or "none", report.skipped_has_genes, report.skipped_cached, report.skipped_quarantined,
             report.attempts, report.seconds)
    return report


def current_annotations(cfg: EncoreConfig) -> pa.Table:
    """(track_id, genes list<float32>[58] in [0, 1]): the latest valid answer per track for the config's key.

    The key is the config's (prompt_version, model_id); an empty table (same schema) when there is
    none, or when no model is configured (as in the demo: every catalog track has genes).
    """
    model = _configured_model(cfg)
    d = _run_dataset(Workspace.at(cfg.home).annotations)
    if d is None or model is None:
        return CURRENT_SCHEMA.empty_table()
    key = (pc.field("prompt_version") == prompt_version(cfg)) & (pc.field("model") == model)
    t = d.to_table(columns=["track_id", "genes", "annotated_at", "run"], filter=key)
    if not t.num_rows:
        return CURRENT_SCHEMA.empty_table()
    return newest_per_key(t, "track_id", ["annotated_at", "run"]).select(CURRENT_SCHEMA.names).cast(CURRENT_SCHEMA)


__all__ = [
    "PACKAGED_PROMPT", "AnnotateReport", "Annotator", "BackendError", "BackendTimeout", "HttpBackend",
    "InvalidAnswer", "LocalBackend", "annotate", "annotate_track", "current_annotations", "load_template",
    "make_backend", "model_id", "parse_answer", "prompt_version", "render_prompt",
]
