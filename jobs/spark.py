"""One way to get a SparkSession, from the typed config (``local[*]`` or a cluster master URL)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from pyspark.sql import SparkSession

from encore.core.config import SparkConfig

LOG4J = Path(__file__).with_name("log4j2.properties")


def get_spark(cfg: SparkConfig) -> SparkSession:
    """Return the process's SparkSession, creating it from ``cfg`` on first use."""
    # Without this Spark resolves the hostname and warns about a loopback address on every start.
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    # Workers must run the driver's interpreter, or a venv's packages are missing on them.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = (
        SparkSession.builder.master(cfg.master)
        .appName(cfg.app_name)
        .config("spark.driver.memory", cfg.driver_memory)
        .config("spark.sql.shuffle.partitions", str(cfg.shuffle_partitions))
        .config("spark.sql.files.maxPartitionBytes", f"{cfg.max_partition_mb}m")
        # Everything in the lake is UTC; the machine's zone must not shift days.
        .config("spark.sql.session.timeZone", "UTC")
        # INT96 is Spark-only legacy; microsecond timestamps read in pyarrow, DuckDB and Feast.
        .config("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
        .config("spark.driver.extraJavaOptions", f"-Dlog4j2.configurationFile={LOG4J.as_uri()}")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.ui.enabled", "false")
        # No _SUCCESS markers: publication is our atomic rename, not the committer's marker.
        .config("spark.hadoop.mapreduce.fileoutputcommitter.marksuccessfuljobs", "false")
        .config("spark.hadoop.parquet.enable.summary-metadata", "false")
    )
    for key, value in cfg.conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark

