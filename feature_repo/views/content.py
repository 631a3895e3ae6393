"""Track content view: the lyrics, audio and metadata embeddings `encore embed` computes."""

from datetime import timedelta

from entities import track
from feast import FeatureView, Field
from feast.types import Array, Float32, String
from sources import track_content_source

# Content describes the recording, not a moment: rows are stamped at a fixed epoch and never
# expire (ttl 0), so a point-in-time join at any date finds them. A track whose audio or lyrics
# could not be encoded has a null there (the *_reason field says why), never a zero vector.
track_content_fv = FeatureView(
    name="track_content",
    entities=[track],
    ttl=timedelta(0),
    schema=[
        Field(name="lyrics_embedding", dtype=Array(Float32), description="text encoder on the lyrics (384-d MiniLM)"),
        Field(name="audio_embedding", dtype=Array(Float32), description="audio encoder on the track's clip"),
        Field(name="metadata_embedding", dtype=Array(Float32),
              description="MGPHot genes and/or their text rendering through the text encoder"),
        Field(name="genes", dtype=Array(Float32), description="the 58 MGPHot genes in [0, 1], schemas.GENES order"),
        Field(name="genes_source", dtype=String, description="catalog | llm | none"),
        Field(name="lyrics_reason", dtype=String, description="why lyrics_embedding is null"),
        Field(name="audio_reason", dtype=String, description="why audio_embedding is null"),
        Field(name="metadata_reason", dtype=String, description="why metadata_embedding is null"),
        Field(name="lyrics_version", dtype=String, description="encoder version of lyrics_embedding"),
        Field(name="audio_version", dtype=String, description="encoder version of audio_embedding"),
        Field(name="metadata_version", dtype=String, description="encoder version of metadata_embedding"),
    ],
    source=track_content_source,
    online=True,
    tags={"team": "encore", "written_by": "jobs/embed.py"},
)
