"""Track feature views: popularity and completion as of each day."""

from datetime import timedelta

from entities import track
from feast import FeatureView, Field
from feast.types import Float64, Int32, UnixTimestamp
from sources import track_daily_source

# Rows stop 30 days after a track's last play (all windows zero then); a year keeps that zero
# row served rather than "unknown" for tracks that went quiet.
track_daily_fv = FeatureView(
    name="track_daily",
    entities=[track],
    ttl=timedelta(days=365),
    schema=[
        Field(name="plays_7d", dtype=Int32, description="listens in days D-6..D"),
        Field(name="plays_30d", dtype=Int32, description="listens in days D-29..D"),
        Field(name="listeners_7d", dtype=Int32, description="distinct users in D-6..D"),
        Field(name="listeners_30d", dtype=Int32, description="distinct users in D-29..D"),
        Field(name="mean_completion_30d", dtype=Float64, description="mean known completion, D-29..D"),
        Field(name="first_seen", dtype=UnixTimestamp, description="midnight UTC of the first day anyone played it"),
    ],
    source=track_daily_source,
    online=True,
    tags={"team": "encore"},
)
