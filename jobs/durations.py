"""Track durations from the listening itself (PySpark): real Last.fm logs carry none.

A Last.fm timestamp is the start of a play, so the gap from one listen's start to the same user's
next start, inside a session, is how long the play ran plus any pause. Most plays run to the end,
so a high quantile of a track's gaps sits near its length: cut-short plays fall below it, a
pause or an unscrobbled skip above it. Definitions (the contract ``tests/fixtures/features_reference.py``
restates):

* A gap: next start - start, for consecutive listens of one user (ordered by
  ``LISTEN_ORDER``, as sessions are) with 0 < gap <= the session gap. Same-second gaps (minute-precision
  exports) say nothing about a length and are left out.
* A track's gaps are ordered by (start, user); only its earliest ``duration_max_gaps`` count, so
  nights that append listens cannot move an estimate once it has them.
* With at least ``duration_min_gaps`` such gaps: duration = ``percentile(gaps, duration_quantile)``
  (exact, linear between ranks: deterministic for any partitioning).
* Otherwise: the artist's typical length, the median over that artist's tracks with a catalog or
  gap-based duration (catalog tracks never played count too). A track's artist is the catalog's,
  else the smallest artist id it was played under.
* Otherwise unknown. A catalog duration always wins over both estimates.

Everything is a function of the whole bronze lake (listens and tracks), never of a run's range, so
an incremental run and a full run see the same durations.
"""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.window import Window

from encore.core.config import FeaturesConfig
from encore.core.schemas import TRACK_DURATION_COLUMNS

# The order of one user's listens, unique per user; jobs.features sessionizes in the same order.
LISTEN_ORDER = ("ts", "track_id", "artist_id", "artist_name", "track_name")


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


def estimate_durations(bronze: DataFrame, catalog: DataFrame | None, fcfg: FeaturesConfig) -> DataFrame:
    """One row per track in ``bronze``: the columns of ``schemas.TRACK_DURATION_COLUMNS``.

    ``bronze``: the lake's listens (user_id, ts, track_id, artist_id, artist_name, track_name, date).
    ``catalog``: bronze tracks (track_id, artist_id, duration_s null or > 0), or None without one.
    """
    gaps = in_session_gaps(bronze, fcfg)
    first = (gaps.withColumn("_k", F.row_number().over(Window.partitionBy("track_id").orderBy("ts", "user_id")))
             .filter(F.col("_k") <= fcfg.duration_max_gaps))
    own = first.groupBy("track_id").agg(
        F.count(F.lit(1)).cast("int").alias("n_gaps"),
        F.percentile(F.col("gap").cast("double"), F.lit(fcfg.duration_quantile)).alias("_q"))
    played = bronze.groupBy("track_id").agg(F.min("artist_id").alias("_played_artist"),
                                            F.min("date").alias("first_played"))
    if catalog is None:
        cat = bronze.sparkSession.createDataFrame([], "track_id string, _cat_artist string, _cat double")
    else:
        cat = catalog.select("track_id", F.col("artist_id").alias("_cat_artist"), F.col("duration_s").alias("_cat"))
    tracks = (played.join(cat, "track_id", "full").join(own, "track_id", "left")
              .withColumn("_artist", F.coalesce("_cat_artist", "_played_artist"))
              .withColumn("_own", F.when(F.col("n_gaps") >= fcfg.duration_min_gaps, F.col("_q")))
              .withColumn("_known", F.coalesce("_cat", "_own")))
    typical = (tracks.filter(F.col("_known").isNotNull()).groupBy("_artist")
               .agg(F.percentile("_known", F.lit(0.5)).alias("_typical")))
    out = tracks.filter(F.col("first_played").isNotNull()).join(typical, "_artist", "left")
    cat_known, own_known, art_known = (F.col(c).isNotNull() for c in ("_cat", "_own", "_typical"))
    source = F.when(cat_known, "catalog").when(own_known | art_known, "estimated").otherwise("unknown")
    method = F.when(cat_known, "catalog").when(own_known, "gaps").when(art_known, "artist").otherwise("none")
    return out.select(
        "track_id", F.coalesce("_cat", "_own", "_typical").alias("duration_s"), source.alias("duration_source"),
        method.alias("duration_method"), F.coalesce("n_gaps", F.lit(0)).cast("int").alias("n_gaps"),
        "first_played",
    ).select(*TRACK_DURATION_COLUMNS)


def stale_since(old: DataFrame, new: DataFrame,
                compare: tuple[str, ...] = ("duration_s", "duration_source", "duration_method")) -> DataFrame:
    """One row, one column ``since``: the earliest first play of a track whose ``compare`` columns
    differ between ``old`` and ``new`` (both TRACK_DURATION_COLUMNS), null when none does.

    Listens of such a track, from its first play on, hold completions from the old duration. A
    track only one side has counts too (a new track's first play lies in the new listens anyway).
    The method is compared by default although completion reads only the duration and its source:
    then a stored table that agrees is exactly what the lake gives now.
    """
    o = old.select("track_id", F.col("first_played").alias("_old_first"),
                   *[F.col(c).alias(f"_old_{c}") for c in compare])
    same = F.lit(True)
    for c in compare:
        same = same & F.col(c).eqNullSafe(F.col(f"_old_{c}"))
    return (new.join(o, "track_id", "full").filter(~same)
            .agg(F.min(F.coalesce("first_played", "_old_first")).alias("since")))


__all__ = ["LISTEN_ORDER", "estimate_durations", "in_session_gaps", "stale_since"]
