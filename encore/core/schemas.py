"""Names every stage agrees on: raw formats, bronze columns, quarantine reasons, the MGPHot genes."""

from __future__ import annotations

from datetime import UTC, datetime

# LastFM-1K raw listens: no header, tab-separated, one listen per line, rows per user newest first.
LISTEN_RAW_FIELDS = ("userid", "timestamp", "artid", "artname", "traid", "traname")
LISTEN_TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%SZ"  # 2009-05-04T23:08:57Z, always UTC
# LastFM-1K profiles: a header line, then one user per line.
PROFILE_HEADER = ("#id", "gender", "age", "country", "registered")
PROFILE_REGISTERED_FORMAT = "%b %d, %Y"  # Aug 13, 2006

# Bronze tables (parquet). Listens are partitioned by `date` (UTC day of `ts`).
LISTEN_COLUMNS = (
    "user_id",  # string, non-empty
    "ts",  # timestamp[us, UTC]: the listen's start, as Last.fm records it
    "artist_id",  # artist MBID, or "art-" + derived hash when the MBID is empty
    "artist_mbid",  # string or null
    "artist_name",  # string
    "track_id",  # track MBID, or "trk-" + derived hash (see encore.core.ids)
    "track_mbid",  # string or null
    "track_name",  # string
)
# The identity of a listen for de-duplication: an exact repeat of all of these is one listen.
LISTEN_KEY = ("user_id", "ts", "artist_id", "artist_name", "track_id", "track_name")

TRACK_COLUMNS = (
    "track_id", "track_mbid", "artist_id", "artist_mbid", "artist_name", "track_name",
    "duration_s",  # double or null (unknown); never <= 0
    "lyrics",  # string or null (instrumental / unknown)
    "audio_path",  # absolute path of an audio clip, or null
    "genes",  # list<float32>[58] in GENES order, each in [0, 1], or null
)
CATALOG_REQUIRED = ("artist", "title", "duration_s")
CATALOG_OPTIONAL = ("track_id", "traid", "artid", "lyrics", "audio_path", "genes")

USER_COLUMNS = ("user_id", "gender", "age", "country", "registered")

# Feature tables under lake/features/ (see jobs/features.py for the exact definitions).
FEATURE_TABLES = ("listens", "sessions", "user_daily", "track_daily")
# lake/features/listens/ (period=P/ folders, a date column): one row per listen.
LISTEN_FEATURE_COLUMNS = (
    "user_id", "ts", "track_id", "artist_id",
    "session_id",  # string: "s-" + sha1(user, session start)[:20]
    "position",  # int32, 1-based inside the session
    "duration_s",  # double or null: the catalog's length, else the estimate (TRACK_DURATIONS_TABLE)
    "duration_source",  # string, one of DURATION_SOURCES
    "next_ts",  # timestamp or null: the next listen of the same session
    "completion",  # double in [0, 1] or null (last of session, same-second next, unknown duration)
    "event_timestamp", "created", "date",
)
# lake/features/track_durations/: one unpartitioned file; per track ever listened to, one row per
# interval of days with one value (jobs/durations.py: estimates as of each day).
TRACK_DURATIONS_TABLE = "track_durations"
TRACK_DURATION_COLUMNS = (
    "track_id",
    "valid_from",  # date: the first day of this value
    "valid_to",  # date or null: the first day of the next value (null: the current row)
    "duration_s",  # double or null
    "duration_source",  # DURATION_SOURCES
    "duration_method",  # DURATION_METHODS: how the value was found
    "n_gaps",  # int32: the gaps behind the track's own estimate (a rung of features.duration_*_gaps), else 0
    "first_played",  # date: the track's first bronze day
)
DURATION_SOURCES = (
    "catalog",  # the bronze tracks table (an ingested catalog) gives it: always wins
    "estimated",  # from the listening: the track's own gaps, else its artist's typical length
    "unknown",  # neither: completion stays null
)
DURATION_METHODS = ("catalog", "gaps", "artist", "none")
# Content embeddings (jobs/embed.py): one encoder per modality, each with a version key.
ENCODERS = ("lyrics", "audio", "metadata")
TRACK_CONTENT_TABLE = "track_content"  # under lake/features/, one row per track
# Content describes the recording, not a moment: its rows are stamped at this fixed epoch, so a
# point-in-time join at any date finds them (``created`` orders rewrites).
CONTENT_VALID_FROM = datetime(1970, 1, 1, tzinfo=UTC)
# Why a track has no embedding for a modality. Never a zero vector: a null and one of these.
CONTENT_REASONS = {
    "lyrics": ("no_lyrics",),  # null or blank lyrics (instrumentals, unknown)
    "audio": (
        "no_audio",  # the catalog names no audio file
        "missing_file",  # the named file does not exist
        "unreadable",  # not a decodable audio file
        "truncated",  # the file ends before the length its header declares
        "bad_sample_rate",  # outside audio.min_sample_rate .. 192 kHz
        "too_short",  # shorter than audio.min_seconds
        "silent",  # no signal (RMS below -60 dBFS)
    ),
    "metadata": ("no_metadata",),  # no genes in the catalog and no valid LLM annotation
}
ENCODER_ERROR = "encoder_error"  # the encoder raised on this track (message in the job log)
# Why an LLM annotation was rejected (jobs/annotate.py); the raw answer is kept in quarantine.
ANNOTATION_REASONS = (
    "too_long",  # longer than jobs/annotate.py MAX_ANSWER_CHARS: not parsed
    "no_json",  # no JSON object in the answer
    "missing_genes",  # some of the 58 genes absent
    "unknown_genes",  # keys that are not genes
    "bad_value",  # a value that is not an integer 0..5
    "timeout",  # the backend did not answer in time
    "backend_error",  # HTTP error status, connection refused, generation failure
)
SHORT_WINDOW_DAYS = 7
LONG_WINDOW_DAYS = 30

# Why a raw row went to quarantine. Every rejected row gets exactly one, checked in this order.
LISTEN_REASONS = (
    "invalid_utf8",  # bytes that are not UTF-8 (raw bytes kept in `raw_bytes`)
    "field_count",  # not exactly 6 tab-separated fields (blank lines too)
    "field_too_long",  # a field longer than ingest.max_field_chars
    "empty_user",  # empty or blank user id
    "bad_timestamp",  # not yyyy-MM-ddTHH:mm:ssZ
    "timestamp_out_of_range",  # before ingest.min_timestamp or too far in the future
    "no_track",  # neither a track MBID nor a track name
)
TRACK_REASONS = ("malformed", "missing_field", "bad_duration", "bad_genes", "duplicate_track")
USER_REASONS = ("invalid_utf8", "field_count", "empty_user", "bad_age", "duplicate_user")

# MGPHot (Oramas et al., TISMIR 2025): 58 "genes" scored 0-5 by experts, normalised to [0, 1].
GENE_GROUPS: dict[str, tuple[str, ...]] = {
    "vocals": (
        "vocal_register", "vocal_timbre_thin_to_full", "vocal_breathiness", "vocal_smoothness",
        "vocal_grittiness", "vocal_nasality", "vocal_accompaniment",
    ),
    "harmony": ("major_key_tonality", "harmonic_sophistication"),
    "rhythm": (
        "tempo", "cut_time_feel", "triple_meter", "compound_meter", "odd_meter", "swing", "shuffle",
        "syncopation", "backbeat", "danceability",
    ),
    "instrumentation": (
        "drum_set", "drum_aggressiveness", "synthetic_drums", "percussion", "electric_guitar",
        "guitar_distortion", "acoustic_guitar", "string_ensemble", "horn_ensemble", "piano", "organ",
        "rhodes", "synthesizer", "synth_timbre", "bass_guitar", "reed",
    ),
    "lyrics": (
        "lyrics_angry", "lyrics_sad", "lyrics_happy", "lyrics_humorous", "lyrics_love",
        "lyrics_social_political", "lyrics_abstract", "lyrics_explicit",
    ),
    "sonority": (
        "live_recording", "audio_production", "aural_intensity", "acoustic_sonority",
        "electric_sonority", "synthetic_sonority",
    ),
    "composition": (
        "focus_lead_vocal", "focus_lyrics", "focus_melody", "focus_vocal_accompaniment",
        "focus_rhythmic_groove", "focus_arrangements", "focus_form", "focus_riffs", "focus_performance",
    ),
}
GENES: tuple[str, ...] = tuple(g for group in GENE_GROUPS.values() for g in group)
GENE_SCALE = 5  # genes are scored on 0..5; stored divided by this
assert len(GENES) == 58, len(GENES)

# What nightly scoring feeds a registered model, one row per user (promotion checks a challenger's
# signature against it): the Feast `scoring` service's recent_track_ids / recent_completions.
SCORING_INPUT = {"user_id": "string", "track_ids": "Array(string)", "completions": "Array(double)"}

# recommendations/date=YYYY-MM-DD/: one row per (user, rank), with the lineage of the list.
RECOMMENDATION_COLUMNS = (
    "user_id",  # string
    "rank",  # int32, 1 = best
    "track_id",  # string
    "score",  # float64: the model's logit, or the track's plays in the fallback window
    "fallback",  # bool: popular-in-last-N-days list, the user had no history the model knows
    "model_name",  # string: registered model
    "model_version",  # string
    "model_run_id",  # string: the MLflow run that trained it
    "feature_snapshot",  # timestamp[us, UTC]: the features' as-of time (online: materialized until)
    "scoring_run_id",  # string: this scoring run
)
# Feast view of the same lists, one row per user (lake/features/user_recommendations/date=D/).
USER_RECOMMENDATIONS_TABLE = "user_recommendations"
