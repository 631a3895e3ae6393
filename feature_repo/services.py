"""Feature services: the contract one model version reads. Bump the version tag when it changes."""

from feast import FeatureService
from views.content import track_content_fv
from views.recommendations import user_recommendations_fv
from views.tracks import track_daily_fv
from views.users import user_daily_fv, user_session_fv

# Point-in-time user context for (user, timestamp) training examples.
training = FeatureService(
    name="training",
    features=[user_daily_fv, user_session_fv],
    description="User context for training examples, joined as of each example's timestamp.",
    tags={"team": "encore", "version": "1"},
)

# What nightly scoring reads online for every user: the sequence to rank from, plus activity.
scoring = FeatureService(
    name="scoring",
    features=[
        user_daily_fv[["recent_track_ids", "recent_completions", "plays_7d", "plays_30d"]],
        user_session_fv[["mean_completion", "skip_share"]],
    ],
    description="Online features for nightly batch scoring.",
    tags={"team": "encore", "version": "1"},
)

# Item-side popularity, for candidate filtering and analysis.
track_popularity = FeatureService(
    name="track_popularity",
    features=[track_daily_fv],
    description="Track popularity and completion as of a timestamp.",
    tags={"team": "encore", "version": "1"},
)

# Item side of the model: the content signals fused into each item embedding.
track_content = FeatureService(
    name="track_content",
    features=[track_content_fv[["lyrics_embedding", "audio_embedding", "metadata_embedding", "genes"]]],
    description="Content embeddings per track, for building the model's item table.",
    tags={"team": "encore", "version": "1"},
)

# What serving reads: tonight's list for a user id.
recommendations = FeatureService(
    name="recommendations",
    features=[user_recommendations_fv],
    description="Tonight's ranked recommendations per user (pushed by nightly scoring).",
    tags={"team": "encore", "version": "1"},
)
