"""The ``encore`` command line: parse, build the config, call a stage, map errors to exit codes.

Heavy imports (Spark, numpy) happen inside the commands, so ``encore --help`` answers at once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click

from encore import __version__
from encore.core.config import PRESETS, ConfigError, EncoreConfig, dump_yaml, load_config
from encore.core.quiet import quiet_third_party
from encore.core.workspace import WorkspaceBusy

log = logging.getLogger("encore")


def _setup_logging(verbose: int) -> None:
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose >= 0 else logging.WARNING
    logging.basicConfig(level=level, stream=sys.stderr, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    # py4j logs every gateway call at INFO: never useful, even with -v.
    logging.getLogger("py4j").setLevel(logging.WARNING)
    quiet_third_party(verbose)


def _config(ctx: click.Context) -> EncoreConfig:
    try:
        return load_config(ctx.obj["config_path"], ctx.obj["home"])
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="encore")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), envvar="ENCORE_CONFIG",
              help="Profile file (YAML). Default: none, i.e. the embedded 'local' profile. Env: ENCORE_CONFIG.")
@click.option("--home", type=click.Path(file_okay=False, path_type=Path), envvar="ENCORE_HOME",
              help="Workspace folder holding the lake, Feast, MLflow, reports. Default ./.encore. Env: ENCORE_HOME.")
@click.option("-v", "--verbose", count=True, help="More log lines, third-party warnings included (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors on stderr.")
@click.pass_context
def cli(ctx: click.Context, config_path: Path | None, home: Path | None, verbose: int, quiet: bool) -> None:
    """Encore: music listening logs -> feature store -> nightly LLM-ranked recommendations.

    \b
    Data flows one way:
      raw LastFM-1K files --ingest--> bronze lake --features--> Feast --> training --> MLflow registry
      catalog --annotate (LLM genes)--> --embed (Ray: lyrics, audio, metadata)--^    --> nightly scoring
    With no --config everything runs embedded on this machine (Spark local[*], local Ray, Feast on
    DuckDB+SQLite, MLflow on SQLite) under --home. A profile file (see profiles/cluster.yaml)
    points each engine at a cluster instead.
    """
    _setup_logging(-1 if quiet else verbose)
    ctx.obj = {"config_path": config_path, "home": home}


# --------------------------------------------------------------------------- config
@cli.group()
def config() -> None:
    """Inspect the effective configuration."""


@config.command("show")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of YAML.")
@click.pass_context
def config_show(ctx: click.Context, as_json: bool) -> None:
    """Print the effective config: defaults, profile file and overrides merged, paths resolved."""
    cfg = _config(ctx)
    click.echo(json.dumps(cfg.effective(), indent=2) if as_json else dump_yaml(cfg))


# --------------------------------------------------------------------------- sample data
class _Clips(click.ParamType):
    name = "all|none|N"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int | None:
        if isinstance(value, int) or value is None:
            return value
        v = str(value).strip().lower()
        if v == "all":
            return None
        if v == "none":
            return 0
        try:
            n = int(v)
        except ValueError:
            self.fail(f"{value!r} is not 'all', 'none' or a number of tracks", param, ctx)
        if n < 0:
            self.fail("must be >= 0", param, ctx)
        return n


@cli.command("sample-data")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder to write the world into (created if missing).")
@click.option("--users", default=50, show_default=True, type=click.IntRange(min=1), help="Number of users.")
@click.option("--tracks", default=2000, show_default=True, type=click.IntRange(min=12), help="Catalog size.")
@click.option("--days", default=60, show_default=True, type=click.IntRange(min=1), help="Days of listening.")
@click.option("--seed", default=0, show_default=True, type=int, help="Same seed, same bytes.")
@click.option("--end", "end", default="2009-05-04", show_default=True, type=click.DateTime(["%Y-%m-%d"]),
              help="Last simulated day (UTC).")
@click.option("--clips", default="all", show_default=True, type=_Clips(),
              help="Audio clips for all tracks, none, or N random tracks (each clip ~66 KB).")
@click.option("--clip-seconds", default=3.0, show_default=True, type=click.FloatRange(0.5, 30),
              help="Length of each audio clip.")
# default = generator.DEFAULT_DROP_DURATIONS (not imported here: the generator pulls in numpy)
@click.option("--drop-durations", default=0.015, show_default=True, type=click.FloatRange(0, 1),
              help="Share of catalog tracks written without a duration (truth/ keeps them all), "
                   "e.g. 0.6 to exercise the duration estimator; real Last.fm logs have none.")
@click.option("--span-days", default=None, type=click.IntRange(min=1),
              help="Spread the same listens over this many calendar days ending at --end: each user "
                   "active over a window of their own (weeks to the whole span) with quiet weeks, "
                   "as in long personal exports. E.g. 6935 for 19 years.")
# choices = generator.PRESETS (not imported here, as above; a test checks they agree)
@click.option("--preset", type=click.Choice(["lastfm-1k"]), default=None,
              help="Start from a named world; options given on the command line still apply. lastfm-1k: "
                   "LastFM-1K's shape, 992 users, ~19M listens over 2005-02-14..2009-06-19 with uneven "
                   "activity spans, ~1M distinct tracks (half played once), durations for 60%, content for "
                   "the top 50,000 tracks (1 s clips at 8 kHz), 20% of users at minute precision. Takes "
                   "3.6 GB on disk (listens TSV 2.4 GB, 50,000 clips 0.8 GB, catalog 0.36 GB), ~3.5 min "
                   "and 2.3 GB of memory (measured on 2 cores).")
@click.pass_context
def sample_data(ctx: click.Context, out: Path, users: int, tracks: int, days: int, seed: int, end: Any,
                clips: int | None, clip_seconds: float, drop_durations: float, span_days: int | None,
                preset: str | None) -> None:
    """Generate a deterministic music world in the exact LastFM-1K formats.

    \b
    Writes into --out:
      userid-timestamp-artid-artname-traid-traname.tsv   listens (LastFM-1K format)
      userid-profile.tsv                                 user profiles (LastFM-1K format)
      catalog.jsonl                                      tracks: duration, lyrics, audio path, 58 MGPHot genes
      audio/<track_id>.wav                               clips whose timbre/tempo/key follow the style
      truth/                                             the planted styles and tastes, for evaluation
    About 13.7 listens per user-day: --users 1000 --tracks 50000 --days 365 gives ~5M listens.
    """
    from click.core import ParameterSource

    from encore.sample_world.generator import WorldConfig, generate_world, preset_config

    fields = {"users": users, "tracks": tracks, "days": days, "seed": seed, "end": end.date(), "clips": clips,
              "clip_seconds": clip_seconds, "drop_durations": drop_durations, "span_days": span_days}
    try:
        if preset is None:
            if span_days is not None and span_days < days:
                raise click.BadParameter(f"--span-days ({span_days}) must be at least --days ({days})")
            cfg = WorldConfig(**fields)
        else:  # the preset replaces the defaults, not what was typed
            typed = {k: v for k, v in fields.items()
                     if ctx.get_parameter_source(k) not in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)}
            cfg = preset_config(preset, **typed)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    stats = generate_world(cfg, out)
    rate = stats.listens / max(stats.seconds, 1e-9) * 60
    click.echo(f"sample world in {out}: {stats.listens:,} listens, {stats.sessions:,} sessions, "
               f"{stats.users:,} users, {stats.tracks:,} tracks by {stats.artists:,} artists, "
               f"{stats.clips:,} audio clips ({stats.seconds:.1f}s, {rate / 1e6:.1f}M listens/min)")
    for kind, path in stats.files.items():
        click.echo(f"  {kind:<9} {path}")
    parts = ", ".join(f"{kind} {_size(n)}" for kind, n in stats.sizes.items())
    click.echo(f"  disk      {_size(stats.bytes)} ({stats.bytes:,} bytes): {parts}")


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


# --------------------------------------------------------------------------- ingest
def _print_table_report(name: str, rep: Any) -> None:
    click.echo(f"{name}:")
    click.echo(f"  rows read            {rep.rows_read:>12,}")
    if rep.header_lines:
        click.echo(f"  header lines         {rep.header_lines:>12,}")
    click.echo(f"  quarantined          {rep.quarantined_total:>12,}")
    for reason, n in sorted(rep.quarantined.items()):
        click.echo(f"    {reason:<18} {n:>12,}")
    if rep.duplicates_in_input:
        click.echo(f"  duplicates in input  {rep.duplicates_in_input:>12,}")
    click.echo(f"  already in lake      {rep.already_in_lake:>12,}")
    if rep.replaced:
        click.echo(f"  replaced             {rep.replaced:>12,}")
    click.echo(f"  added                {rep.added:>12,}")
    if getattr(rep, "days_changed", None):
        d, p = rep.days_changed, rep.partitions_written
        click.echo(f"  days changed         {len(d):>12,}  ({d[0]} .. {d[-1]})")
        click.echo(f"  partitions written   {len(p):>12,}  ({p[0]} .. {p[-1]})")
    for w in rep.warnings:
        click.echo(f"  warning: {w}")


@cli.command()
@click.option("--listens", multiple=True, type=click.Path(exists=True, path_type=Path),
              help="Listens file (LastFM-1K .tsv, plain or .gz) or a folder of them. Repeatable.")
@click.option("--profiles", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="userid-profile.tsv (LastFM-1K profile format).")
@click.option("--catalog", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Track catalog, JSON Lines or parquet: artist, title, duration_s [, traid, artid, lyrics, "
                   "audio_path, genes].")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_context
def ingest(ctx: click.Context, listens: tuple[Path, ...], profiles: Path | None, catalog: Path | None,
           as_json: bool) -> None:
    """Load raw files into the bronze lake (PySpark), quarantining what is malformed.

    Listens land in lake/bronze/listens/date=YYYY-MM-DD/, merged with what is there: a rerun on the
    same input adds nothing, a file with new days adds only those days. Rows with the wrong field
    count, bad or out-of-range timestamps, an empty user, invalid UTF-8 or overlong fields go to
    lake/quarantine/ with the raw line and a reason. Exact duplicate listens are dropped and
    counted. Output is published atomically; the report is printed and kept in reports/ingest/.
    """
    from jobs.ingest import IngestError, IngestInputs
    from jobs.ingest import ingest as run_ingest

    cfg = _config(ctx)
    try:
        report = run_ingest(cfg, IngestInputs(listens=listens, profiles=profiles, catalog=catalog))
    except (IngestError, WorkspaceBusy) as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
        return
    click.echo(f"ingest run {report.run_id} ({report.seconds:.1f}s) into {cfg.home.resolve()}")
    if report.recovered_publications:
        click.echo(f"  finished {report.recovered_publications} publication(s) left by an interrupted run")
    for name in ("listens", "tracks", "users"):
        rep = getattr(report, name)
        if rep is not None:
            _print_table_report(name, rep)
    click.echo(f"report: {Path(cfg.home).resolve() / 'reports' / 'ingest' / (report.run_id + '.json')}")


# --------------------------------------------------------------------------- features
_DATE = click.DateTime(["%Y-%m-%d"])


@cli.command()
@click.option("--start", type=_DATE, help="First day to recompute (YYYY-MM-DD). With --end: a backfill.")
@click.option("--end", type=_DATE, help="Last day to recompute (clipped to the lake's last day).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_context
def features(ctx: click.Context, start: Any, end: Any, as_json: bool) -> None:
    """Build the feature tables from the bronze lake (PySpark): sessions, completion, user/track days.

    \b
    Writes lake/features/{listens,sessions,user_daily,track_daily}/date=YYYY-MM-DD/, the Feast sources,
    and lake/features/track_durations/: each track's duration from the catalog, else estimated from
    the listening (gaps between a play's start and the next, else the artist's typical length).
    Without dates: incremental, recomputing from the first bronze day that changed since the last
    run, or from the first play of a track whose duration changed (nothing if neither). With
    --start/--end: a backfill of exactly those days with the current durations, reading the
    31 days before them for the windows; partitions outside the range are not touched, and running
    the same backfill twice gives identical files. Sessions split after gaps longer than
    features.session_gap_minutes (default 30). The report is printed and kept in reports/features/.
    """
    from jobs.features import FeaturesError, build_features

    cfg = _config(ctx)
    try:
        report = build_features(cfg, start.date() if start else None, end.date() if end else None)
    except (FeaturesError, WorkspaceBusy) as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
        return
    if report.mode == "up-to-date":
        click.echo(f"features run {report.run_id}: up to date, every bronze day is already reflected")
        return
    click.echo(f"features run {report.run_id} ({report.seconds:.1f}s): {report.mode} {report.start} .. {report.end}")
    if report.recovered_publications:
        click.echo(f"  finished {report.recovered_publications} publication(s) left by an interrupted run")
    click.echo(f"  listens read {report.listens_read:,}; completion unknown: last of session "
               f"{report.completion_unknown_last_of_session:,}, "
               f"same timestamp {report.completion_unknown_same_timestamp:,}, "
               f"no track duration {report.completion_unknown_duration:,}")
    kinds = (("catalog", "catalog"), ("estimated_gaps", "from gaps"), ("estimated_artist", "from artist"),
             ("unknown", "unknown"))
    for what, counts in (("tracks", report.duration_tracks), ("listens", report.duration_listens)):
        click.echo(f"  durations, {what:<8} " + ", ".join(f"{label} {counts.get(k, 0):,}" for k, label in kinds))
    if report.durations_stale_since:
        click.echo(f"  recomputed from {report.durations_stale_since}: tracks first played then got new durations")
    click.echo(f"  {'table':<15} {'rows':>10} {'partitions':>11} {'removed':>8}  nulls")
    for name, t in report.tables.items():
        nulls = ", ".join(f"{c} {n:,}" for c, n in t.nulls.items() if n) or "-"
        click.echo(f"  {name:<15} {t.rows:>10,} {t.partitions_written:>11,} {t.partitions_removed:>8,}  {nulls}")
    click.echo(f"report: {Path(cfg.home).resolve() / 'reports' / 'features' / (report.run_id + '.json')}")


# --------------------------------------------------------------------------- content
@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_context
def embed(ctx: click.Context, as_json: bool) -> None:
    """Compute content embeddings for the catalog (Ray Data): lyrics, audio, MGPHot metadata.

    \b
    lyrics    text encoder (embed.text.path; default all-MiniLM-L6-v2, shipped in a wheel)
    audio     librosa signal descriptors, or a local transformers audio model
              (embed.audio.kind: pretrained, embed.audio.path: CLAP / MERT / wav2vec2 folder)
    metadata  the 58 MGPHot genes (catalog, else `encore annotate`), and/or their text rendering
              through the text encoder (embed.metadata: genes | text | genes+text)

    Incremental: only tracks without a vector for the encoder's current version and input are
    encoded; a second run computes nothing, a new version (embed.versions.*, or any encoder
    setting) recomputes that encoder. A track whose audio or lyrics is missing or broken gets a
    null and a counted reason, never a zero vector. The encoders run in Ray actor pools, one per model
    (embed.actors per model, GPUs from embed.num_gpus where the cluster has GPUs). Writes
    lake/features/track_content/ (Feast view `track_content`); report in reports/embed/.
    """
    from jobs.embed import EmbedError
    from jobs.embed import embed as run_embed

    cfg = _config(ctx)
    try:
        report = run_embed(cfg)
    except (EmbedError, WorkspaceBusy, ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
        return
    click.echo(f"embed run {report.run_id} ({report.seconds:.1f}s): {report.tracks:,} tracks; genes from "
               + ", ".join(f"{k} {v:,}" for k, v in sorted(report.genes_from.items())))
    if report.recovered_publications:
        click.echo(f"  finished {report.recovered_publications} publication(s) left by an interrupted run")
    if report.tracks_per_second:
        click.echo(f"  encoded in {report.encode_seconds:.1f}s ({report.tracks_per_second:,.1f} tracks/s, "
                   "all encoders at once)")
    click.echo(f"  {'encoder':<9} {'version':<14} {'dim':>4} {'cached':>8} {'computed':>9}  missing")
    for name, e in report.encoders.items():
        missing = ", ".join(f"{k} {v:,}" for k, v in e.missing.items()) or "-"
        dim = e.dim or "-"
        click.echo(f"  {name:<9} {e.version:<14} {dim:>4} {e.cached:>8,} {e.computed:>9,}  {missing}")
    nulls = ", ".join(f"{k} {v:,}" for k, v in report.content_nulls.items())
    click.echo(f"  track_content: {report.content_rows:,} rows; without a vector: {nulls}")
    click.echo(f"report: {Path(cfg.home).resolve() / 'reports' / 'embed' / (report.run_id + '.json')}")


@cli.command()
@click.option("--force", is_flag=True, help="Annotate tracks whose catalog already carries genes too.")
@click.option("--retry-invalid", is_flag=True, help="Ask again for tracks whose earlier answers were quarantined.")
@click.option("--limit", type=click.IntRange(min=1), help="Send at most this many tracks (to try a model).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_context
def annotate(ctx: click.Context, force: bool, retry_invalid: bool, limit: int | None, as_json: bool) -> None:
    """Score the 58 MGPHot genes of catalog tracks with an LLM (few-shot prompt, JSON answers).

    \b
    Backends (annotate.backend):
      local  a Hugging Face causal LM folder (annotate.model_path), run with transformers
      http   an OpenAI-compatible server, e.g. vLLM (annotate.url, annotate.model)
    Tracks whose catalog has genes are skipped unless --force. Answers are validated (all 58
    genes, integers 0-5) and normalised to [0, 1]; a bad answer is retried up to
    annotate.max_attempts times, then quarantined with its raw text and reason under
    lake/quarantine/annotations/. Results are cached by (track, prompt version, model): a rerun
    sends only tracks that have no answer yet. `encore embed` uses them for tracks without genes.
    """
    from jobs.annotate import annotate as run_annotate

    cfg = _config(ctx)
    try:
        report = run_annotate(cfg, force=force, retry_invalid=retry_invalid, limit=limit)
    except (ConfigError, WorkspaceBusy, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from None
    data = asdict(report)
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
        return
    click.echo(f"annotate run {report.run_id} ({report.seconds:.1f}s): prompt {report.prompt_version}, "
               f"model {report.model or '(not configured)'}")
    click.echo(f"  catalog {report.catalog_tracks:,}; skipped: has genes {report.skipped_has_genes:,}, "
               f"cached {report.skipped_cached:,}, quarantined before {report.skipped_quarantined:,}")
    invalid = ", ".join(f"{k} {v:,}" for k, v in report.invalid.items()) or "-"
    click.echo(f"  sent {report.sent:,}: valid {report.valid:,}; quarantined: {invalid}; attempts {report.attempts:,}")


# --------------------------------------------------------------------------- feast
@cli.group()
def feast() -> None:
    """The Feast feature store over the feature tables (repo: feature_repo/)."""


@feast.command("apply")
@click.pass_context
def feast_apply(ctx: click.Context) -> None:
    """Register entities, sources, feature views and services (`feast apply` for this workspace)."""
    from feature_repo.store import FeastError, apply

    cfg = _config(ctx)
    try:
        objs = apply(cfg)
    except FeastError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"feast project '{cfg.feast.project}' applied to registry {cfg.feast_registry()}")
    for kind, names in objs.items():
        click.echo(f"  {kind.replace('_', ' '):<17} {', '.join(names)}")


@feast.command("env")
@click.pass_context
def feast_env(ctx: click.Context) -> None:
    """Print the exports that point the `feast` CLI (run in feature_repo/) at this workspace.

    \b
    eval "$(encore feast env)"; cd feature_repo && feast feature-views list
    """
    from feature_repo.store import feast_files

    fs_yaml, encore_yaml = feast_files(_config(ctx))
    click.echo(f"export FEAST_FS_YAML_FILE_PATH={fs_yaml}")
    click.echo(f"export ENCORE_CONFIG={encore_yaml}")


@cli.command()
@click.option("--end", type=_DATE, help="Load rows up to the end of this day. Default: the last day the tables hold.")
@click.option("--view", "views", multiple=True, help="Only this feature view (repeatable). Default: all.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_context
def materialize(ctx: click.Context, end: Any, views: tuple[str, ...], as_json: bool) -> None:
    """Load the online store (Feast materialize), incrementally from where the last run stopped."""
    from feature_repo.store import FeastError
    from feature_repo.store import materialize as run_materialize

    cfg = _config(ctx)
    try:
        report = run_materialize(cfg, end.date() if end else None, views or None)
    except FeastError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps({"end": report.end, "seconds": report.seconds, "views": report.views}, indent=2))
        return
    click.echo(f"materialized up to {report.end} in {report.seconds:.1f}s")
    for name, v in report.views.items():
        if "skipped" in v:
            click.echo(f"  {name:<13} skipped: {v['skipped']}")
        else:
            click.echo(f"  {name:<13} {v['source_rows']:>10,} rows  from {v['start']}")


# --------------------------------------------------------------------------- train
_MODELS = ("sasrec", "bert4rec", "gru4rec", "e4srec", "content", "llm-zeroshot")


def _with_train(cfg: EncoreConfig, **changes: Any) -> EncoreConfig:
    """``cfg`` with ``train`` settings replaced (dotted keys: ``e4srec.fusion``), validated."""
    from training.ablation import apply_changes

    try:
        tc = apply_changes(cfg.train, {k: v for k, v in changes.items() if v is not None})
        return cfg.model_copy(update={"train": tc})
    except Exception as exc:
        raise click.ClickException(f"invalid training option: {exc}") from None


def _metrics_table(rows: list[tuple[str, dict[str, float]]], ks: list[int]) -> str:
    cols = [f"{m}@{k}" for m in ("hr", "ndcg") for k in ks] + ["mrr"]
    width = max(12, *(len(name) for name, _ in rows))
    lines = [f"{'':<{width}}  " + "  ".join(f"{c:>8}" for c in cols)]
    for name, m in rows:
        lines.append(f"{name:<{width}}  " + "  ".join(f"{m.get(c, float('nan')):>8.4f}" for c in cols))
    return "\n".join(lines)


def _train_options(f: Any) -> Any:
    for opt in reversed([
        click.option("--model", type=click.Choice(_MODELS), help="What to train. Default: train.model (e4srec)."),
        click.option("--modalities", help="E4SRec item parts, comma-separated from id,lyrics,audio,meta,completion."),
        click.option("--fusion", type=click.Choice(["concat", "weighted", "xattn", "film"]),
                     help="How E4SRec combines the modalities."),
        click.option("--backbone", type=click.Path(exists=True, file_okay=False, path_type=Path),
                     help="Hugging Face model folder for E4SRec (Llama, Qwen2, Mistral, BERT...; default MiniLM), "
                          "and the causal LM llm-zeroshot prompts (no default)."),
        click.option("--id-encoder", type=click.Choice(["sasrec", "bert4rec", "gru4rec"]),
                     help="Pretrained ID encoder whose item table E4SRec reuses."),
        click.option("--zero-stage", type=click.IntRange(0, 3), help="DeepSpeed ZeRO stage."),
        click.option("--epochs", type=click.IntRange(min=1), help="Most epochs (early stopping may end sooner)."),
        click.option("--id-epochs", type=click.IntRange(min=1),
                     help="Most epochs for the ID encoder E4SRec takes its table from. Default: --epochs."),
        click.option("--max-len", type=click.IntRange(min=2), help="History items a model reads (default 50)."),
        click.option("--batch-size", type=click.IntRange(min=1), help="Examples per micro-batch."),
        click.option("--lr", type=float, help="Learning rate."),
        click.option("--seed", type=int, help="Random seed."),
        click.option("--preset", type=click.Choice(sorted(PRESETS)),
                     help="A whole protocol in one switch; options given beside it win. paper: the paper's "
                          "filters, sessions, global time split and 200-candidate evaluation (train.paper)."),
        click.option("--split", type=click.Choice(["loo", "time", "paper"]),
                     help="Leave-one-out, a global time split, or the paper's protocol."),
        click.option("--min-item-plays", type=click.IntRange(min=1), help="Vocabulary: tracks with this many plays."),
        click.option("--loss", type=click.Choice(["auto", "ce", "sampled", "bce"]),
                     help="ID encoders' loss. auto (default): full softmax up to 50,000 items, sampled above."),
        click.option("--head", type=click.Choice(["auto", "full", "sampled"]),
                     help="E4SRec's head loss; auto (default) follows the same rule."),
        click.option("--negatives", type=click.IntRange(min=1),
                     help="Sampled softmax: negatives per batch (ID encoders 256, E4SRec 1024 by default)."),
        click.option("--sampler", type=click.Choice(["uniform", "popularity", "mixed"]),
                     help="Sampled softmax: how negatives are drawn (default mixed)."),
        click.option("--windows-per-epoch", type=click.IntRange(min=1),
                     help="Train on this many random windows per epoch (default: all), for budgets on big lakes."),
        click.option("--group-by-length", is_flag=True, default=None,
                     help="E4SRec: batch windows of similar length, so short histories run short forwards."),
        click.option("--quantization", type=click.Choice(["none", "8bit", "4bit"]),
                     help="E4SRec: load the frozen backbone 8-bit or 4-bit (bitsandbytes; CUDA GPU and the gpu "
                          "extra). Default: none."),
    ]):
        f = opt(f)
    return f


def _train_changes(model: str | None = None, modalities: str | None = None, fusion: str | None = None,
                   backbone: Path | None = None, id_encoder: str | None = None, zero_stage: int | None = None,
                   epochs: int | None = None, id_epochs: int | None = None, max_len: int | None = None,
                   batch_size: int | None = None, lr: float | None = None, seed: int | None = None,
                   split: str | None = None, min_item_plays: int | None = None, loss: str | None = None,
                   head: str | None = None,
                   negatives: int | None = None, sampler: str | None = None,
                   windows_per_epoch: int | None = None, group_by_length: bool | None = None,
                   preset: str | None = None, quantization: str | None = None) -> dict[str, Any]:
    given = {"windows_per_epoch": windows_per_epoch, "e4srec.group_by_length": group_by_length,
            "e4srec.quantization": quantization,
            "id.loss": loss, "e4srec.head": head, "id.sampled.negatives": negatives,
            "e4srec.sampled.negatives": negatives, "id.sampled.sampler": sampler,
            "e4srec.sampled.sampler": sampler,
            "model": model, "e4srec.modalities": modalities.split(",") if modalities else None,
            "id.epochs": id_epochs, "max_len": max_len,
            "e4srec.fusion": fusion, "e4srec.backbone": str(backbone.resolve()) if backbone else None,
            "zeroshot.backbone": str(backbone.resolve()) if backbone else None,
            "e4srec.id_encoder": id_encoder, "zero_stage": zero_stage, "epochs": epochs, "batch_size": batch_size,
            "lr": lr, "seed": seed, "split": split, "min_item_plays": min_item_plays}
    return {**(PRESETS[preset] if preset else {}), **{k: v for k, v in given.items() if v is not None}}


@cli.command()
@_train_options
@click.option("--no-register", is_flag=True, help="Track the run in MLflow but do not register the model.")
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON.")
@click.pass_context
def train(ctx: click.Context, no_register: bool, as_json: bool, **opts: Any) -> None:
    """Train a recommender on the lake, evaluate it, track it in MLflow and register it.

    \b
    Data: sequences from the listens table, content from Feast's track_content service, user
    context from the training service (point in time). Split: leave-one-out per user by default.
    Metrics: full ranking over all tracks (HR, NDCG @5/10/20, MRR), history items masked.
    Training runs through DeepSpeed (ZeRO config training/deepspeed/zero<N>.json), checkpoints
    every epoch, stops early on validation NDCG@10, and resumes when rerun after a kill.
    The model is registered as mlflow.model_name (encore-recommender) with alias @challenger.
    \b
    Examples:
      encore train --model sasrec
      encore train --model e4srec --modalities id,lyrics,audio,meta,completion --fusion weighted
      encore train --model e4srec --backbone /models/Qwen2-0.5B --zero-stage 2
    """
    from training.data import DataError
    from training.models.quantization import QuantizationUnavailable
    from training.train import HeadTooLarge
    from training.train import train as run_train

    cfg = _with_train(_config(ctx), **_train_changes(**opts))
    try:
        # DeepSpeed and transformers print progress to stdout; stdout is for the result (--json).
        with contextlib.redirect_stdout(sys.stderr):
            out = run_train(cfg, register=not no_register)
    except (DataError, FileNotFoundError, QuantizationUnavailable, HeadTooLarge) as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps({"run_id": out.run_id, "model": out.model, "test": out.test,
                               "test_full": out.test_full, "valid": out.valid,
                               "popularity_test": out.baseline,
                               "model_version": out.model_version, "trainable_params": out.trainable_params,
                               "best_epoch": out.fit.best_epoch if out.fit else None}, indent=2))
        return
    fit = out.fit
    click.echo(f"{out.model}: {out.info.get('users')} users, {out.info.get('items')} items, "
               f"{out.trainable_params:,} trainable parameters")
    if fit:
        click.echo(f"  {len(fit.history)} epochs ({'early stop' if fit.stopped_early else 'epoch limit'}), "
                   f"best epoch {fit.best_epoch}, {fit.samples_per_s:,.0f} training samples/s")
    ev = cfg.train.eval
    shown = "test" if ev.protocol == "full" else f"test, {ev.num_candidates + 1} candidates"
    rows = [("valid", out.valid), (shown, out.test)] if out.valid else [(shown, out.test)]
    if out.baseline:
        rows.append((f"{shown}, popularity", out.baseline))  # the same test users, ranked by training plays
    if out.test_full:
        rows.append(("test, full ranking", out.test_full))
    click.echo(_metrics_table(rows, cfg.train.eval.ks))
    if ev.protocol != "full":
        click.echo("note: sampled metrics can reorder models (Krichene & Rendle, KDD 2020); the full-ranking "
                   "row is the comparable one")
    click.echo(f"MLflow run {out.run_id}")
    if out.model_version:
        click.echo(f"registered {cfg.mlflow.model_name} version {out.model_version} as @challenger")


@cli.command("export")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder to write: new, empty, or a previous export (replaced whole, atomically).")
@click.option("--preset", type=click.Choice(sorted(PRESETS)),
              help="A whole data protocol in one switch, as for `encore train`; options given beside it win. "
                   "paper: the paper's filters, sessions, global time split and 200 candidates.")
@click.option("--split", type=click.Choice(["loo", "time", "paper"]),
              help="Leave-one-out (default), a global time split, or the paper's protocol.")
@click.option("--min-item-plays", type=click.IntRange(min=1), help="Vocabulary: tracks with this many plays.")
@click.option("--max-len", type=click.IntRange(min=2),
              help="History items a model reads: the window masked when candidates are drawn (default 50).")
@click.option("--seed", type=int, help="Seed of the candidate lists (and of the paper's validation users).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_context
def export_cmd(ctx: click.Context, out: Path, as_json: bool, **opts: Any) -> None:
    """Write the workspace's multimodal benchmark as plain files, for training elsewhere.

    \b
    The data is read as `encore train` reads it (same vocabulary, filters and split). Files:
      sequences.txt          u i1 i2 ...  every kept listen, time order (E4SRec/S3-Rec format)
      completion.txt         u c1 c2 ...  completion per listen (%.4f, nan = unknown)
      timestamps.txt         u t1 t2 ...  epoch seconds per listen
      users.tsv, items.tsv   index -> user_id; index -> track_id, artist, title
      train.txt              what models train on under the split
      valid.tsv, test.tsv    user, target, timestamp, history_items (a prefix of the user's line)
      candidates_test.tsv    the 200-candidate lists (target first), in item indices
      content/*.npy          lyrics, audio, meta vectors [n+1, d] and their presence masks
      genes.csv              the 58 MGPHot genes per item
      datasheet.md           counts, filters, sources, encoders and versions, missing shares, licence
      SHA256SUMS             sha256 of every file
    The same workspace and options give the same bytes. `encore bench standard --data
    OUT/sequences.txt` trains on the export (leave-one-out) with what training on the lake gives.

    \b
    Examples:
      encore export --out bench-export
      encore export --out paper-export --preset paper
    """
    from training.data import DataError
    from training.export import ExportError, export

    cfg = _with_train(_config(ctx), **_train_changes(**opts))
    try:
        with contextlib.redirect_stdout(sys.stderr):  # Feast prints; stdout is for the result (--json)
            summary = export(cfg, out)
    except (DataError, ExportError) as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps({**asdict(summary), "out": str(summary.out)}, indent=2))
        return
    click.echo(f"exported {summary.users:,} users, {summary.items:,} items, {summary.listens:,} listens "
               f"({cfg.train.split} split: {summary.valid_examples:,} validation, {summary.test_examples:,} test "
               f"examples, {summary.candidates + 1} candidates each) to {summary.out}")
    click.echo(f"content: {', '.join(summary.modalities) or 'none'}; {len(summary.files)} files; "
               f"see {summary.out / 'datasheet.md'}")


# --------------------------------------------------------------------------- registry
def _print_decision(d: Any) -> None:
    verb = {"promote": "PROMOTED" if d.acted else "would promote", "reject": "REJECTED", "noop": "nothing to do"}
    click.echo(f"{d.model_name}: challenger v{d.challenger_version} vs champion "
               f"{'v' + d.champion_version if d.champion_version else '(none)'}: "
               f"{verb[d.decision]}{' (dry run)' if d.dry_run else ''}")
    for g in d.gates:
        click.echo(f"  [{'pass' if g.passed else 'FAIL'}] {g.name:<15} {g.detail}")
    if d.challenger_metrics:
        ks = sorted({int(k.split('@')[1]) for k in d.challenger_metrics if '@' in k})
        rows = [(f"challenger v{d.challenger_version}", d.challenger_metrics)]
        if d.champion_metrics:
            rows.append((f"champion v{d.champion_version}", d.champion_metrics))
        click.echo(f"  held-out users: {d.held_out_users:,} (newest listen each, the same for both)")
        click.echo("  " + _metrics_table(rows, ks).replace("\n", "\n  "))
    click.echo(f"  reason: {d.reason}")


@cli.command()
@click.option("--model", "model_name", help="Registered model. Default: mlflow.model_name (encore-recommender).")
@click.option("--dry-run", is_flag=True, help="Evaluate and print the decision; move no alias, write no tag.")
@click.option("--json", "as_json", is_flag=True, help="Print the decision as JSON.")
@click.pass_context
def promote(ctx: click.Context, model_name: str | None, dry_run: bool, as_json: bool) -> None:
    """Promote @challenger to @champion if it passes every gate of the promotion policy.

    \b
    Gates (mlflow/promotion.yaml, or mlflow.promotion_policy):
      loads           the challenger's pyfunc and artifacts load from the registry
      signature       it takes what scoring feeds (user_id, track_ids, completions)
      item_map        its items are tracks of today's catalog (min_catalog_share)
      metrics_finite  its held-out metrics are finite
      better          its primary metric (ndcg@10) beats the champion's by > min_improvement
    Both models are evaluated on the same held-out data (every user's newest listen, the history
    before it) with the same metric code. A first promotion (no champion) needs the sanity gates
    only. On promotion the old champion becomes @previous-champion. The decision, both metric sets
    and the reason are recorded as tags on the challenger's version. Exit code 1 when rejected.
    """
    from training.promotion import PromotionError
    from training.promotion import promote as run_promote

    cfg = _config(ctx)
    try:
        d = run_promote(cfg, model_name, dry_run=dry_run)
    except (PromotionError, ConfigError) as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(d.to_dict(), indent=2))
    else:
        _print_decision(d)
    if d.decision == "reject":
        sys.exit(1)


@cli.command()
@click.option("--model", "model_name", help="Registered model name (never a path: models load only from the "
                                             "configured registry). Default: mlflow.model_name.")
@click.pass_context
def rollback(ctx: click.Context, model_name: str | None) -> None:
    """Point @champion back at @previous-champion (the version the last promotion replaced)."""
    from training.promotion import PromotionError
    from training.promotion import rollback as run_rollback

    try:
        r = run_rollback(_config(ctx), model_name)
    except (PromotionError, ConfigError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{r.model_name}: @champion is v{r.champion_version} again (was v{r.rolled_back_version or '?'})")


# --------------------------------------------------------------------------- scoring
def _print_score(rep: Any) -> None:
    click.echo(f"score run {rep.run_id} ({rep.seconds:.1f}s) for {rep.date}: {rep.model_name} v{rep.model_version} "
               f"(run {rep.model_run_id[:12]}), {rep.mode} features as of {rep.feature_snapshot}")
    click.echo(f"  users: {rep.users_known:,} known, {rep.users_active:,} active; ranked by the model "
               f"{rep.users_model:,}, fallback (popular tracks) {rep.users_fallback:,}")
    click.echo(f"  {rep.rows:,} rows, top {rep.top_k}, {rep.distinct_items:,} distinct tracks"
               f"{'; pushed to the online store' if rep.pushed_online else ''}")
    click.echo(f"recommendations: {rep.output}")


@cli.command()
@click.option("--date", "day", type=_DATE, help="Scoring date. Default: today (UTC), from the online store; "
                                                 "a past date reads point-in-time features from the offline store.")
@click.option("--top-k", type=click.IntRange(min=1), help="Recommendations per user. Default: scoring.top_k (100).")
@click.option("--model", "model_name", help="Registered model name (never a path: models load only from the "
                                             "configured registry). Default: mlflow.model_name.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_context
def score(ctx: click.Context, day: Any, top_k: int | None, model_name: str | None, as_json: bool) -> None:
    """Rank all tracks for every active user with the registry's @champion (Ray Data).

    \b
    Users: everyone with a listen in the 30 days up to the date (Feast `scoring` service).
    Each Ray actor loads the champion once; every user gets the top K of the whole catalog, tracks
    in their recent sequence masked (scoring.mask_heard). Users whose history holds no track the
    model knows get the most played tracks of the last 7 days, flagged fallback=true.
    Output: recommendations/date=YYYY-MM-DD/ (one row per user and rank, with model name, version,
    run id, feature snapshot and scoring run id), swapped in whole: rerunning a date replaces it.
    Tonight's lists are also pushed to Feast's online view user_recommendations.
    """
    from scoring.batch import ScoringError
    from scoring.batch import score as run_score

    cfg = _config(ctx)
    try:
        rep = run_score(cfg, day.date() if day else None, top_k, model_name)
    except (ScoringError, WorkspaceBusy, ConfigError) as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(rep.to_dict(), indent=2))
    else:
        _print_score(rep)


# --------------------------------------------------------------------------- nightly
_STEPS = ("ingest", "features", "annotate", "embed", "materialize", "score", "report")


@cli.command()
@click.option("--date", "day", type=_DATE, help="The night to run. Default: today (UTC).")
@click.option("--force", is_flag=True, help="Rerun every step, even those already done for the date.")
@click.option("--until", type=click.Choice(_STEPS), help="Stop after this step (the rest stay pending).")
@click.option("--inbox", type=click.Path(file_okay=False, path_type=Path),
              help="Folder of new raw files. Default: nightly.inbox, else <home>/inbox.")
@click.option("--json", "as_json", is_flag=True, help="Print the step records as JSON.")
@click.pass_context
def nightly(ctx: click.Context, day: Any, force: bool, until: str | None, inbox: Path | None, as_json: bool) -> None:
    """The nightly job: new raw files in, tonight's recommendations and a run report out.

    \b
    Steps, each recorded as done in <home>/nightly/state-DATE.json:
      ingest       new files in the inbox (listens *.tsv[.gz], *profile*.tsv, catalog .jsonl/.parquet)
      features     incremental feature tables (sessions, completion, user and track days)
      annotate     LLM genes for tracks without them (skipped unless annotate.backend is set)
      embed        content embeddings of tracks not embedded yet
      materialize  feast apply, then the online store up to the lake's last day
      score        every active user with @champion -> recommendations/date=DATE/
      report       reports/nightly-DATE.html and .json
    A rerun for the same date resumes at the step that failed and skips finished ones (--force
    reruns all). Exit codes: 0 done, 1 a step failed (named on stderr), 75 another nightly or
    backfill holds this workspace.
    """
    from encore.nightly.pipeline import NightlyError, progress_printer
    from encore.nightly.pipeline import nightly as run_nightly

    cfg = _config(ctx)
    if inbox is not None:
        cfg = cfg.model_copy(update={"nightly": cfg.nightly.model_copy(update={"inbox": inbox.resolve()})})
    try:
        with contextlib.redirect_stdout(sys.stderr):  # engines print banners; stdout is for the result
            res = run_nightly(cfg, day.date() if day else None, force=force, until=until,
                              on_step=progress_printer())
    except WorkspaceBusy as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(75)
    except NightlyError as exc:
        click.echo(f"Error: nightly {day.date() if day else 'today'}: {exc}\n"
                   f"Finished steps are kept; rerun the same command to resume at '{exc.step}'.", err=True)
        sys.exit(1)
    if as_json:
        click.echo(json.dumps({"date": res.date, "ran": res.ran, "skipped": res.skipped, "steps": res.steps},
                              indent=2, default=str))
        return
    click.echo(f"nightly {res.date}: ran {', '.join(res.ran) or 'nothing'}"
               + (f"; already done: {', '.join(res.skipped)}" if res.skipped else ""))
    if res.recommendations:
        click.echo(f"recommendations: {res.recommendations}")
    if res.report_html:
        click.echo(f"report: {res.report_html}\n        {res.report_json}")
    click.echo(f"state: {res.state_file}")


@cli.command()
@click.option("--start", required=True, type=_DATE, help="First day to recompute (YYYY-MM-DD).")
@click.option("--end", required=True, type=_DATE, help="Last day to recompute.")
@click.pass_context
def backfill(ctx: click.Context, start: Any, end: Any) -> None:
    """Recompute the feature tables for a date range and reload the online store from its start.

    For a fixed bug or a late file: the days in --start..--end are rebuilt exactly (the same run
    twice gives the same files; days outside are not touched), then the online store is reloaded
    from --start to the lake's last day, so it ends on the newest values. Takes the nightly lock.
    """
    from encore.nightly.pipeline import backfill as run_backfill
    from jobs.features import FeaturesError

    cfg = _config(ctx)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            out = run_backfill(cfg, start.date(), end.date())
    except WorkspaceBusy as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(75)
    except (FeaturesError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    f = out["features"]
    click.echo(f"backfill {start.date()} .. {end.date()}: features run {f['run_id']} "
               f"({f['mode']}, {f['seconds']:.1f}s)")
    for name, t in f.get("tables", {}).items():
        click.echo(f"  {name:<12} {t['rows']:>10,} rows  {t['partitions_written']:>4} partitions written")
    m = out["materialize"]
    click.echo(f"  online store reloaded up to {m['end']} ({m['seconds']:.1f}s)")


# --------------------------------------------------------------------------- bench
@cli.group()
def bench() -> None:
    """Model benchmarks: the paper's ablation table, and standard datasets vs published figures."""


@bench.command("table")
@click.option("--seeds", default="0,1,2", show_default=True,
              help="Comma-separated seeds; each variant runs once per seed.")
@click.option("--only", multiple=True, help="Run only this variant (repeatable), e.g. --only SASRec.")
@_train_options
@click.pass_context
def bench_table(ctx: click.Context, seeds: str, only: tuple[str, ...], **opts: Any) -> None:
    """Reproduce the paper's ablation on the lake: ID models, content zero-shot, E4SRec variants.

    \b
    Rows: SASRec, BERT4Rec, GRU4Rec, content zero-shot, E4SRec (ID only), E4SRec + each modality,
    E4SRec + all modalities with each fusion. Every run is tracked in MLflow (none registered);
    the markdown table and a bar chart go to <home>/outputs/bench-table/ and to an MLflow run.
    Finished runs are remembered, so a rerun after a kill resumes.
    """
    from training.ablation import ablation

    changes = _train_changes(**opts)
    if changes.get("model"):
        raise click.ClickException("bench table runs every model; --model does not apply")
    cfg = _with_train(_config(ctx), **changes)
    out = ablation(cfg, [int(s) for s in seeds.split(",")], list(only) or None)
    click.echo(out["markdown"].read_text())
    click.echo(f"table: {out['markdown']}\nchart: {out['chart']}")


@bench.command("standard")
@click.option("--data", "data_file", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="`user item item ...` per line (or `user item` per line in time order), 1-indexed.")
@click.option("--attributes", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help='Item attributes JSON {"item": [attribute ids]}: the metadata modality.')
@click.option("--protocol", type=click.Choice(["full", "sampled-100"]), default="full", show_default=True,
              help="Full ranking, or the target among 100 sampled negatives (warns: not comparable).")
@click.option("--models", help="Comma-separated, from sasrec, sasrec-ligr, bert4rec, gru4rec, e4srec-id, "
                               "e4srec (ID + attributes), content. Default: --model, else sasrec.")
@click.option("--seeds", help="Comma-separated seeds; each model runs once per seed. Default: --seed, else 0.")
@_train_options
@click.pass_context
def bench_standard_cmd(ctx: click.Context, data_file: Path, attributes: Path | None, protocol: str,
                       models: str | None, seeds: str | None, **opts: Any) -> None:
    """Train and evaluate on a standard sequential dataset; print published figures beside ours.

    \b
    Each model runs once per seed; the table gives mean ± std over seeds, test metrics with the
    history masked (Encore's protocol) and unmasked (most papers'), epochs and wall time per run.
    Finished runs are remembered: a rerun after a kill resumes. Table and runs go to
    <home>/outputs/bench-standard/<dataset>-<protocol>/. With --id-epochs, the ID models train
    that many epochs, like the encoder E4SRec reads, and E4SRec trains --epochs on top of it.

    \b
    Example (Amazon Beauty, leave-one-out, full ranking, 3 seeds):
      encore bench standard --data ../shared/datasets/beauty/Beauty.txt \\
        --attributes ../shared/datasets/beauty/Beauty_item2attributes.json \\
        --models sasrec,bert4rec,gru4rec --seeds 0,1,2 --epochs 10
    """
    from training.standard import standard_table

    changes = _train_changes(**opts)
    names = [m.strip() for m in models.split(",")] if models else [changes.pop("model", None) or "sasrec"]
    changes.pop("model", None)
    seed_list = [int(s) for s in seeds.split(",")] if seeds else [changes.get("seed") or 0]
    changes.pop("seed", None)
    cfg = _with_train(_config(ctx), **changes)
    if protocol != "full":
        click.echo("warning: sampled metrics can reorder models (Krichene & Rendle, KDD 2020); "
                   "they are not comparable with full-ranking figures", err=True)
    try:
        out = standard_table(cfg, data_file, attributes, protocol, names, seed_list)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--models") from None
    click.echo(f"{data_file.name}: {out['info'].get('users')} users, {out['info'].get('items')} items, "
               f"protocol {protocol}")
    click.echo(out["markdown"].read_text())
    click.echo(f"table: {out['markdown']}")


# --------------------------------------------------------------------------- summary
@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def summary(ctx: click.Context, as_json: bool) -> None:
    """Summarise the lake: rows, users, tracks, date range, quarantine by reason, feature tables."""
    from encore.core.workspace import Workspace
    from jobs.lake import summarize

    s = summarize(Workspace.at(_config(ctx).home))
    if as_json:
        click.echo(json.dumps(s, indent=2))
        return
    click.echo(f"lake at {s['home']}/lake")
    if "listens" not in s and "tracks" not in s:
        click.echo("  empty: run `encore ingest` first")
    if "listens" in s:
        li = s["listens"]
        click.echo(f"  listens  {li['rows']:>10,} rows  {li['users']:,} users  {li['tracks']:,} tracks  "
                   f"{li['days']:,} days in {li['partitions']} partitions  {li['first']} .. {li['last']}")
    if "tracks" in s:
        t = s["tracks"]
        click.echo(f"  tracks   {t['rows']:>10,} rows  lyrics {t['with_lyrics']:,}  audio {t['with_audio']:,}  "
                   f"genes {t['with_genes']:,}  unknown duration {t['unknown_duration']:,}")
    if "users" in s:
        click.echo(f"  users    {s['users']['rows']:>10,} rows")
    for table, reasons in s["quarantine"].items():
        parts = ", ".join(f"{r} {n:,}" for r, n in sorted(reasons.items()))
        click.echo(f"  quarantine/{table}: {parts}")
    for table, f in s.get("features", {}).items():
        click.echo(f"  features/{table:<12} {f['rows']:>10,} rows  {f['days']:,} days in {f['partitions']} "
                   f"partitions  {f['first']} .. {f['last']}")
    if "content" in s:
        c = s["content"]
        vecs = "  ".join(f"{e} {v['with_vector']:,} ({v['version']})" for e, v in c["encoders"].items())
        click.echo(f"  features/track_content {c['rows']:>10,} rows  with a vector: {vecs}")
    a = s.get("annotations", {})
    if any(a.values()):
        click.echo(f"  annotations (LLM genes): {a['valid']:,} valid, {a['quarantined']:,} quarantined")


# --------------------------------------------------------------------------- lake
@cli.group()
def lake() -> None:
    """The lake's layout: period partitions, snapshots (see docs/lake.md)."""


@lake.command("migrate")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_context
def lake_migrate(ctx: click.Context, as_json: bool) -> None:
    """Rewrite the time-partitioned tables into the configured layout.

    \b
    Needed once for a workspace written by an older Encore (one date=YYYY-MM-DD folder per day),
    and after changing lake.granularity. Rows are unchanged; only their folders move. Every
    other job refuses such a workspace and names this command. A killed migration is finished
    by running it again. Does nothing when every table is already in the layout.
    """
    from jobs.migrate import migrate

    cfg = _config(ctx)
    try:
        rep = migrate(cfg)
    except WorkspaceBusy as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(rep.to_dict(), indent=2))
        return
    if not rep.tables:
        click.echo(f"lake: every table is already in {rep.granularity} periods; nothing to do")
    for name, t in rep.tables.items():
        click.echo(f"  {name:<20} {t['rows']:>12,} rows  {t['days']:>6,} days -> {t['periods']:>4} "
                   f"{rep.granularity} partitions  (from {t['from']})")
    click.echo(f"migrate {rep.run_id} done in {rep.seconds:.1f}s")


def main() -> None:
    from encore.core.lake import LakeLayoutError

    try:
        cli(standalone_mode=True)
    except LakeLayoutError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)



if __name__ == "__main__":
    main()
