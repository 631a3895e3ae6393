"""`track_content` through Feast: the embeddings `encore embed` wrote come back offline and online."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from encore.core.config import EncoreConfig
from feature_repo import store
from jobs.embed import read_content

pytestmark = pytest.mark.integration


def test_materialize_loads_track_content_once_per_embed_run(content_store: EncoreConfig) -> None:
    n = read_content(content_store).num_rows
    first = store.materialize(content_store, views=["track_content"])
    assert first.views["track_content"]["source_rows"] == n
    again = store.materialize(content_store, views=["track_content"])
    assert again.views["track_content"]["source_rows"] == 0 and "unchanged_since" in again.views["track_content"]


def test_online_lookup_returns_the_embeddings_and_nulls_where_content_is_missing(content_store: EncoreConfig) -> None:
    store.materialize(content_store, views=["track_content"])
    table = read_content(content_store).to_pandas().set_index("track_id")
    with_audio = list(table.index[table.audio_embedding.notna()][:3])
    without_audio = list(table.index[table.audio_embedding.isna()][:2])
    ids = [*with_audio, *without_audio, "no-such-track"]
    got = store.online_features(content_store, ids, service="track_content", key="track_id")
    assert list(got.track_id) == ids
    for i, t in enumerate(with_audio):
        np.testing.assert_allclose(got.track_content__audio_embedding[i], table.loc[t, "audio_embedding"])
        np.testing.assert_allclose(got.track_content__lyrics_embedding[i], table.loc[t, "lyrics_embedding"]
                                   if table.loc[t, "lyrics_embedding"] is not None else [])
    assert all(got.track_content__audio_embedding[len(with_audio) + k] is None for k in range(len(without_audio)))
    assert got.track_content__genes.iloc[-1] is None  # unknown track: null, not zeros


def test_point_in_time_join_finds_content_at_any_date(content_store: EncoreConfig) -> None:
    table = read_content(content_store).to_pandas()
    tracks = list(table.track_id[:4])
    entity = pd.DataFrame({"track_id": tracks * 2, "event_timestamp": [datetime(2005, 1, 1, tzinfo=UTC)] * 4
                           + [datetime(2009, 5, 1, tzinfo=UTC)] * 4})
    s = store.open_store(content_store)
    got = s.get_historical_features(entity_df=entity, features=["track_content:genes", "track_content:genes_source"]
                                    ).to_df()
    assert len(got) == 8 and got.genes.notna().all()
    want = table.set_index("track_id").genes
    for _, row in got.iterrows():
        np.testing.assert_allclose(row.genes, want[row.track_id])


def test_each_modality_groups_tracks_of_the_same_planted_style(content_store: EncoreConfig, small_world) -> None:
    """The sample world draws lyrics, genes and clips from a track's style: real encoders must see it.

    1-nearest-neighbour style agreement (cosine) per modality, against the share expected by chance.
    """
    import pyarrow.parquet as pq

    world, _ = small_world
    style = dict(zip(*pq.read_table(world / "truth" / "tracks.parquet", columns=["track_id", "style"])
                     .to_pydict().values(), strict=True))
    table = read_content(content_store).to_pandas()
    for modality in ("lyrics", "audio", "metadata"):
        rows = table[table[f"{modality}_embedding"].notna()]
        x = np.stack(rows[f"{modality}_embedding"].to_list()).astype(np.float64)
        x = (x - x.mean(0)) / (x.std(0) + 1e-9)  # per-dimension scale, as a model's input layer would learn
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        sim = x @ x.T
        np.fill_diagonal(sim, -np.inf)
        labels = np.array([style[t] for t in rows.track_id])
        agree = float(np.mean(labels[sim.argmax(1)] == labels))
        chance = float(np.sum((np.bincount(labels) / len(labels)) ** 2))
        assert len(rows) >= 40, modality
        assert agree > 2 * chance, (modality, agree, chance)
