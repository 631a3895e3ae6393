"""One way to get a SparkSession, from the typed config (``local[*]`` or a cluster master URL)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from encore.core.config import SparkConfig

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

LOG4J = Path(__file__).with_name("log4j2.properties")


def session_conf(cfg: SparkConfig) -> dict[str, str]:
    """Every ``spark.*`` setting of an Encore session, ``cfg.conf`` last (it wins).

    Also what Feast's Spark offline store starts its own session with (feature_repo/store.py), so
    the cluster profile's feature jobs and Feast's reads run with the same settings.
    """
    conf = {
        "spark.master": cfg.master,
        "spark.app.name": cfg.app_name,
        "spark.driver.memory": cfg.driver_memory,
        "spark.sql.shuffle.partitions": str(cfg.shuffle_partitions),
        "spark.sql.files.maxPartitionBytes": f"{cfg.max_partition_mb}m",
        # Everything in the lake is UTC; the machine's zone must not shift days.
        "spark.sql.session.timeZone": "UTC",
        # INT96 is Spark-only legacy; microsecond timestamps read in pyarrow, DuckDB and Feast.
        "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
        "spark.driver.extraJavaOptions": f"-Dlog4j2.configurationFile={LOG4J.as_uri()}",
        "spark.ui.showConsoleProgress": "false",
        "spark.ui.enabled": "false",
        # No _SUCCESS markers: publication is our atomic rename, not the committer's marker.
        "spark.hadoop.mapreduce.fileoutputcommitter.marksuccessfuljobs": "false",
        "spark.hadoop.parquet.enable.summary-metadata": "false",
    }
    conf.update(cfg.conf)
    return conf


def get_spark(cfg: SparkConfig) -> SparkSession:
    """Return the process's SparkSession, creating it from ``cfg`` on first use."""
    from pyspark.sql import SparkSession

    # Without this Spark resolves the hostname and warns about a loopback address on every start.
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    # Workers must run the driver's interpreter, or a venv's packages are missing on them.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder
    for key, value in session_conf(cfg).items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark
