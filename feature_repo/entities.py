"""Feast entities: who and what features describe."""

from feast import Entity, ValueType

user = Entity(
    name="user",
    join_keys=["user_id"],
    value_type=ValueType.STRING,
    description="A listener (LastFM user id).",
    tags={"team": "encore"},
)

track = Entity(
    name="track",
    join_keys=["track_id"],
    value_type=ValueType.STRING,
    description="A track: its MusicBrainz id, or 'trk-' + a hash of artist and title when it has none.",
    tags={"team": "encore"},
)
