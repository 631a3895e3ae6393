"""Recommendation view: tonight's ranked list per user, for serving to read by user id."""

from datetime import timedelta

from entities import user
from feast import FeatureView, Field
from feast.types import Array, Bool, Float64, String
from sources import user_recommendations_push

# Pushed online by `encore score` (no materialization). A list older than a week is stale: serving
# should fall back rather than show it, so the TTL ends it.
user_recommendations_fv = FeatureView(
    name="user_recommendations",
    entities=[user],
    ttl=timedelta(days=7),
    schema=[
        Field(name="track_ids", dtype=Array(String), description="top-K track ids, best first"),
        Field(name="scores", dtype=Array(Float64), description="their scores (logits, or fallback plays)"),
        Field(name="fallback", dtype=Bool, description="popular-tracks list: no history the model knows"),
        Field(name="model_version", dtype=String, description="registry version that ranked the list"),
        Field(name="rec_date", dtype=String, description="the scoring date, YYYY-MM-DD"),
        Field(name="scoring_run_id", dtype=String, description="the scoring run that wrote it"),
    ],
    source=user_recommendations_push,
    online=True,
    tags={"team": "encore", "written_by": "scoring/batch.py"},
)
