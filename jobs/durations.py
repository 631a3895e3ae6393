"""Track durations from the listening (PySpark), as of each day: real Last.fm logs carry none.

A Last.fm timestamp is the start of a play, so the gap from one listen's start to the same user's
next start, inside a session, is how long the play ran plus any pause. Most plays run to the end,
so a high quantile of a track's gaps sits near its length: cut-short plays fall below it, a
pause or an unscrobbled skip above it. Definitions (the contract ``tests/fixtures/features_reference.py``
restates):

* A gap: next start - start, for consecutive listens of one user (ordered by
  ``LISTEN_ORDER``, as sessions are) with 0 < gap <= the session gap. Same-second gaps (minute-precision
  exports) say nothing about a length and are left out. A gap belongs to the day of its start.
* A track's gaps are ordered by (start, user). Its own estimate on rung m is
  ``percentile(first m gaps, duration_quantile)`` (exact, linear between ranks), known from the day
  of its m-th gap. The rungs are ``duration_min_gaps``, twice that, four times... up to
  ``duration_max_gaps`` (``ladder``): the estimate sharpens as evidence doubles, and a track has at
  most a handful of values over its life (one with the default 5/5).
* An artist's typical length: the median over its first m *known* tracks, m on the rungs
  1, 2, 4 ... ``ARTIST_MAX_TRACKS``. A track is known from the start when the catalog gives its length
  (catalog tracks never played count too), else from the day of its first own estimate (with that
  value); known tracks are ordered by that day (catalog first), then id. A track's artist is the
  catalog's, else that of its first play.
* A listen of day D uses, in order: the catalog's length; the track's own estimate as of D; its
  artist's typical length as of D; else unknown.

Every value of day D is a function of the bronze listens up to D and the catalog, so a new night
never changes an earlier day's durations (no reach-back), and an incremental run equals a full run.
The cost of that is that a track's first plays, before it has enough gaps of its own, use its
artist's length or none.

The result (``schemas.TRACK_DURATION_COLUMNS``) is one row per track and interval
[valid_from, valid_to): the value between two changes; valid_to is null on the open (current) row.
"""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.window import Window

from encore.core.config import FeaturesConfig
from encore.core.schemas import TRACK_DURATION_COLUMNS

# The order of one user's listens, unique per user; jobs.features sessionizes in the same order.
LISTEN_ORDER = ("ts", "track_id", "artist_id", "artist_name", "track_name")
# An artist's typical length is the median of at most this many of its tracks: a sample median of 64
# lengths sits within a few percent of the whole artist's, and the cap bounds the rows per artist
# (each rung m aggregates m lengths: at most 127 rows per artist over 7 rungs).
ARTIST_MAX_TRACKS = 64


def ladder(lo: int, hi: int) -> list[int]:
    """The counts at which an estimate is (re)made: lo, 2lo, 4lo ... below hi, then hi."""
    rungs, m = [], lo
    while m < hi:
        rungs.append(m)
        m *= 2
    return [*rungs, hi]


def in_session_gaps(bronze: DataFrame, fcfg: FeaturesConfig) -> DataFrame:
    """Every in-session gap of ``bronze``: track_id, ts (the listen's start), user_id, gap (seconds, long).

    (user_id, ts) is unique among them: of several listens at one second, only the last in order
    has a later next start.
    """
    gap_s = fcfg.session_gap_minutes * 60
    w = Window.partitionBy("user_id").orderBy(*LISTEN_ORDER)
    sec = F.unix_seconds("ts")
    return (bronze.select("user_id", *LISTEN_ORDER)
            .withColumn("gap", F.lead(sec).over(w) - sec)
            .filter((F.col("gap") > 0) & (F.col("gap") <= gap_s))
            .select("track_id", "ts", "user_id", "gap"))


def _on_rungs(values: DataFrame, key: str, order: list, rungs: list[int], quantile: float) -> DataFrame:
    """For each ``key`` and rung m it reaches: the ``quantile`` of its first m ``_v`` (in ``order``) and
    the latest ``_from`` among them (when the m-th arrived; null: always known).

    values: key, _v (double), _from (date or null), + the order columns. -> key, m, _q, _from.
    Each value feeds every rung at or above its rank: at most sum(rungs) rows per key.
    """
    k = F.row_number().over(Window.partitionBy(key).orderBy(*order))
    ranked = values.withColumn("_k", k).filter(F.col("_k") <= rungs[-1])
    rung = values.sparkSession.createDataFrame([(m,) for m in rungs], "m int")
    return (ranked.join(F.broadcast(rung), F.col("_k") <= F.col("m"))
            .groupBy(key, "m").agg(F.count(F.lit(1)).alias("_n"), F.percentile("_v", F.lit(quantile)).alias("_q"),
                                   F.max("_from").alias("_from"))
            .filter(F.col("_n") == F.col("m")).drop("_n"))


def estimate_durations(bronze: DataFrame, catalog: DataFrame | None, fcfg: FeaturesConfig) -> DataFrame:
    """Every listened track's duration over time: the columns of ``schemas.TRACK_DURATION_COLUMNS``.

    ``bronze``: the lake's listens (user_id, ts, track_id, artist_id, artist_name, track_name, date).
    ``catalog``: bronze tracks (track_id, artist_id, duration_s null or > 0), or None without one.
    """
    spark = bronze.sparkSession
    gaps = (in_session_gaps(bronze, fcfg)
            .select("track_id", "ts", "user_id", F.col("gap").cast("double").alias("_v"),
                    F.to_date("ts").alias("_from")))
    own = _on_rungs(gaps, "track_id", ["ts", "user_id"], ladder(fcfg.duration_min_gaps, fcfg.duration_max_gaps),
                    fcfg.duration_quantile)  # track_id, m, _q, _from
    # First play: its day, and its artist (the smallest in LISTEN_ORDER among the first second's plays).
    first = (bronze.groupBy("track_id")
             .agg(F.min(F.struct("ts", "user_id", "artist_id")).alias("_f"))
             .select("track_id", F.to_date("_f.ts").alias("first_played"),
                     F.col("_f.artist_id").alias("_played_artist")))
    if catalog is None:
        cat = spark.createDataFrame([], "track_id string, _cat_artist string, _cat double")
    else:
        cat = catalog.select("track_id", F.col("artist_id").alias("_cat_artist"), F.col("duration_s").alias("_cat"))
    first_own = own.filter(F.col("m") == fcfg.duration_min_gaps).select(
        "track_id", F.col("_q").alias("_own1"), F.col("_from").alias("_own1_from"))
    tracks = (first.join(cat, "track_id", "full").join(first_own, "track_id", "left")
              .withColumn("_artist", F.coalesce("_cat_artist", "_played_artist")))
    # The artist pool: catalog lengths known from the start (null), own estimates from their day.
    pool = (tracks.filter(F.col("_cat").isNotNull() | F.col("_own1").isNotNull())
            .select("_artist", "track_id", F.coalesce("_cat", "_own1").alias("_v"),
                    F.when(F.col("_cat").isNull(), F.col("_own1_from")).alias("_from")))
    typical = _on_rungs(pool, "_artist", [F.col("_from").asc_nulls_first(), "track_id"],
                        ladder(1, ARTIST_MAX_TRACKS), 0.5)  # _artist, m, _q, _from
    played = tracks.filter(F.col("first_played").isNotNull())

    # The timeline of each track without a catalog length: its first play, each own rung, and each
    # artist rung from the first play on; then the value as of each of those days.
    nocat = played.filter(F.col("_cat").isNull()).select("track_id", "first_played", "_artist")
    base = nocat.select("track_id", F.col("first_played").alias("day"))
    own_ev = own.join(nocat.select("track_id"), "track_id").select(
        "track_id", F.col("_from").alias("day"), F.col("_q").alias("_own"), F.col("m").alias("_own_m"))
    art_ev = typical.join(nocat, "_artist").select(
        "track_id", F.greatest(F.coalesce("_from", "first_played"), F.col("first_played")).alias("day"),
        F.col("_q").alias("_art"), F.col("m").alias("_art_m"))
    ev = base.unionByName(own_ev, allowMissingColumns=True).unionByName(art_ev, allowMissingColumns=True)
    # Within a day the larger rung wins: rows sort rung-ascending, and the running last value is taken.
    order = [F.col("day").asc(), F.col("_own_m").asc_nulls_first(), F.col("_art_m").asc_nulls_first()]
    reverse = [F.col("day").desc(), F.col("_own_m").desc_nulls_last(), F.col("_art_m").desc_nulls_last()]
    upto = Window.partitionBy("track_id").orderBy(*order).rowsBetween(Window.unboundedPreceding, 0)
    asof = ev.select(
        "track_id", "day",
        F.last("_own", ignorenulls=True).over(upto).alias("_own"),
        F.last("_own_m", ignorenulls=True).over(upto).alias("_own_m"),
        F.last("_art", ignorenulls=True).over(upto).alias("_art"),
        F.row_number().over(Window.partitionBy("track_id", "day").orderBy(*reverse))
        .alias("_last_of_day"))
    asof = asof.filter(F.col("_last_of_day") == 1)
    own_known, art_known = F.col("_own").isNotNull(), F.col("_art").isNotNull()
    est = asof.select(
        "track_id", F.col("day").alias("valid_from"), F.coalesce("_own", "_art").alias("duration_s"),
        F.when(own_known | art_known, "estimated").otherwise("unknown").alias("duration_source"),
        F.when(own_known, "gaps").when(art_known, "artist").otherwise("none").alias("duration_method"),
        F.when(own_known, F.col("_own_m")).otherwise(0).cast("int").alias("n_gaps"))
    # Keep a row only where the value changes; it lasts until the next such row.
    by_track = Window.partitionBy("track_id").orderBy("valid_from")
    value = ["duration_s", "duration_source", "duration_method", "n_gaps"]
    same = F.lag("valid_from").over(by_track).isNotNull()  # the first row always stays
    for c in value:
        same = same & F.lag(c).over(by_track).eqNullSafe(F.col(c))
    est = est.withColumn("_same", same).filter(~F.col("_same")).drop("_same")
    est = (est.withColumn("valid_to", F.lead("valid_from").over(by_track))
           .join(nocat.select("track_id", "first_played"), "track_id"))
    catalogued = played.filter(F.col("_cat").isNotNull()).select(
        "track_id", F.col("first_played").alias("valid_from"), F.lit(None).cast("date").alias("valid_to"),
        F.col("_cat").alias("duration_s"), F.lit("catalog").alias("duration_source"),
        F.lit("catalog").alias("duration_method"), F.lit(0).cast("int").alias("n_gaps"), "first_played")
    return est.unionByName(catalogued).select(*TRACK_DURATION_COLUMNS)


def current(durations: DataFrame) -> DataFrame:
    """The open row of each track: its duration as of the lake's last day (one row per track)."""
    return durations.filter(F.col("valid_to").isNull())


def join_as_of(listens: DataFrame, durations: DataFrame, day: str = "date") -> DataFrame:
    """``listens`` with the columns of ``durations`` (other than the interval and track) valid on each
    row's ``day`` (null where none is: a track the table lacks). One output row per input row."""
    extra = [c for c in durations.columns if c not in ("track_id", "valid_from", "valid_to")]
    d = durations.select(F.col("track_id").alias("_d_track"), F.col("valid_from").alias("_d_from"),
                         F.col("valid_to").alias("_d_to"), *extra)
    on = ((F.col("track_id") == F.col("_d_track")) & (F.col("_d_from") <= F.col(day))
          & (F.col("_d_to").isNull() | (F.col(day) < F.col("_d_to"))))
    return listens.join(F.broadcast(d), on, "left").drop("_d_track", "_d_from", "_d_to")


def stale_since(old: DataFrame, new: DataFrame,
                compare: tuple[str, ...] = ("duration_s", "duration_source", "duration_method")) -> DataFrame:
    """One row, one column ``since``: the first day on which ``old`` and ``new`` (both
    TRACK_DURATION_COLUMNS) give some track different ``compare`` values, null when none does.

    Rows are matched on (track_id, valid_from). A row one side lacks, or whose values differ, is
    stale from its valid_from; a row whose values agree but whose interval ends elsewhere is stale
    from the earlier end. Listens of those days hold completions from the old duration. The method
    is compared by default although completion reads only the duration and its source: then a
    stored table that agrees is exactly what the lake gives now.
    """
    o = old.select("track_id", "valid_from", F.col("valid_to").alias("_old_to"),
                   *[F.col(c).alias(f"_old_{c}") for c in compare], F.lit(True).alias("_in_old"))
    n = new.select("track_id", "valid_from", "valid_to", *compare, F.lit(True).alias("_in_new"))
    same = F.col("_in_old").isNotNull() & F.col("_in_new").isNotNull()
    for c in compare:
        same = same & F.col(c).eqNullSafe(F.col(f"_old_{c}"))
    day = F.when(~same, F.col("valid_from")).when(~F.col("valid_to").eqNullSafe(F.col("_old_to")),
                                                 F.least("valid_to", "_old_to"))
    return n.join(o, ["track_id", "valid_from"], "full").agg(F.min(day).alias("since"))


__all__ = ["ARTIST_MAX_TRACKS", "LISTEN_ORDER", "current", "estimate_durations", "in_session_gaps", "join_as_of",
           "ladder", "stale_since"]
