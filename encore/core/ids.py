"""Stable ids for tracks and artists whose MusicBrainz id (MBID) is empty.

LastFM-1K leaves the MBID empty for many rows. Such a track gets ``trk-`` + the first 24 hex
digits of SHA-1 over the UTF-8 bytes of ``artist_name + "\\x1f" + track_name`` - exact names, no
case folding or trimming, because Spark and Python fold Unicode case differently and the id must
be the same whichever engine computes it. A track with an MBID keeps it, so one recording listed
with and without an MBID gets two ids; resolving that would make ids depend on the order files
arrive in, which is worse for a lake that is appended to nightly. The Spark jobs compute the same
function in SQL (``jobs.ingest``); a test checks both agree.
"""

from __future__ import annotations

import hashlib

SEP = "\x1f"  # unit separator: cannot appear in a tab-separated field that passed validation
DERIVED_HEX = 24


def derived_track_id(artist_name: str, track_name: str) -> str:
    digest = hashlib.sha1(f"{artist_name}{SEP}{track_name}".encode()).hexdigest()
    return "trk-" + digest[:DERIVED_HEX]


def derived_artist_id(artist_name: str) -> str:
    return "art-" + hashlib.sha1(artist_name.encode()).hexdigest()[:DERIVED_HEX]


def track_id(track_mbid: str | None, artist_name: str, track_name: str) -> str:
    return track_mbid or derived_track_id(artist_name, track_name)


def artist_id(artist_mbid: str | None, artist_name: str) -> str:
    return artist_mbid or derived_artist_id(artist_name)
