"""User feature views: daily activity and the recent item sequence, and the last session."""

from datetime import timedelta

from entities import user
from feast import FeatureView, Field
from feast.types import Array, Float32, Float64, Int32, Int64, String
from sources import sessions_source, user_daily_source

# A row is written whenever a value changes, the last one 30 days after the final listen (all
# windows zero, sequence kept). A year of TTL serves that sequence to a returning user; beyond
# it the user is treated as new.
user_daily_fv = FeatureView(
    name="user_daily",
    entities=[user],
    ttl=timedelta(days=365),
    schema=[
        Field(name="plays_7d", dtype=Int32, description="listens in days D-6..D"),
        Field(name="plays_30d", dtype=Int32, description="listens in days D-29..D"),
        Field(name="days_active_30d", dtype=Int32, description="days with a listen in D-29..D"),
        Field(name="mean_completion_30d", dtype=Float64, description="mean known completion, D-29..D"),
        Field(name="top_artist_share", dtype=Float64, description="share of the top artist in the recent sequence"),
        Field(name="recent_track_ids", dtype=Array(String), description="last N track ids, oldest first"),
        Field(name="recent_completions", dtype=Array(Float32), description="their completions; NaN = unknown"),
    ],
    source=user_daily_source,
    online=True,
    tags={"team": "encore"},
)

# The last finished session describes the listener's current mood; after a month it says little.
user_session_fv = FeatureView(
    name="user_session",
    entities=[user],
    ttl=timedelta(days=30),
    schema=[
        Field(name="length", dtype=Int32, description="listens in the last finished session"),
        Field(name="duration_s", dtype=Int64, description="first to last start, seconds"),
        Field(name="mean_completion", dtype=Float64, description="mean known completion"),
        Field(name="skip_share", dtype=Float64, description="share of known completions under skip_below"),
        Field(name="distinct_artists", dtype=Int32, description="artists in the session"),
    ],
    source=sessions_source,
    online=True,
    tags={"team": "encore"},
)
