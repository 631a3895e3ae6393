"""Feast sources: the parquet tables `encore features` writes under <home>/lake/features/.

Which workspace and which offline store come from the Encore config: ``ENCORE_CONFIG`` /
``ENCORE_HOME`` when set (``encore feast apply`` sets them), otherwise the embedded default at
``../.encore``. The embedded DuckDB store reads the period partitions through a glob; the Spark
store (cluster profile) reads the partitioned folder itself. Both read through the table's link,
so each query sees the snapshot that is live when it runs (``encore.core.lake``).
The nightly lists (``user_recommendations``) keep one ``date=`` folder per night.
"""

import os
from pathlib import Path

from feast import FileSource, PushSource
from feast.data_format import ParquetFormat
from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import SparkSource

from encore.core.config import load_config
from encore.core.workspace import Workspace

_DEFAULT_HOME = Path(__file__).resolve().parent.parent / ".encore"
_cfg = (load_config() if os.environ.get("ENCORE_CONFIG") or os.environ.get("ENCORE_HOME")
        else load_config(home=_DEFAULT_HOME))
_ws = Workspace.at(_cfg.home)


def _source(table: str, description: str, layout: str = "period",
            written_by: str = "jobs/features.py") -> FileSource | SparkSource:
    path = _ws.feature_table(table)
    common = dict(
        name=f"{table}_source",
        timestamp_field="event_timestamp",
        created_timestamp_column="created",
        description=description,
        tags={"team": "encore", "written_by": written_by},
    )
    if _cfg.feast.offline_store.type == "spark":
        return SparkSource(path=str(path), file_format="parquet", **common)
    glob = {"period": "period=*/*.parquet", "date": "date=*/*.parquet", "flat": "*.parquet"}[layout]
    return FileSource(path=f"{path}/{glob}", file_format=ParquetFormat(), **common)


user_daily_source = _source("user_daily", "User features as of the end of each day (change-point rows).")
track_daily_source = _source("track_daily", "Track features as of the end of each day (change-point rows).")
sessions_source = _source("sessions", "One row per session, stamped when the session is known to be over.")
track_content_source = _source("track_content", "Content embeddings per track (current encoder versions).",
                               layout="flat", written_by="jobs/embed.py")

# Nightly scoring's lists, one row per user and date. Scoring pushes each night's lists to the
# online store through the push source and keeps them under lake/features/ for the offline side.
user_recommendations_source = _source("user_recommendations", "Each night's top-K list per user.",
                                      layout="date", written_by="scoring/batch.py")
user_recommendations_push = PushSource(name="user_recommendations_push", batch_source=user_recommendations_source,
                                       description="Where `encore score` pushes tonight's lists (online).")
