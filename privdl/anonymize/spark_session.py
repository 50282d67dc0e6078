"""The Spark session privdl starts, and how it recognises a Spark DataFrame.

A local session (``local[*]``) pins the Python of its workers to the driver's own
interpreter (``spark.pyspark.python`` and ``spark.pyspark.driver.python`` =
``sys.executable``): without it Spark starts whatever ``python3`` is first on the
``PATH``, which may lack privdl or pyarrow, and every pandas UDF fails inside the
worker. A session the caller passes (``spark=``, or one already active, as under
``spark-submit``) is used as it is.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from privdl._optional import require

__all__ = ["active_or_local", "is_spark_frame", "local_session"]


def is_spark_frame(obj: Any) -> bool:
    """Whether ``obj`` is a PySpark DataFrame (classic or Spark Connect), without importing pyspark."""
    module = type(obj).__module__
    return module.startswith("pyspark.sql") and type(obj).__name__ == "DataFrame"


def local_session(*, cores: str = "*", shuffle_partitions: int | None = None) -> Any:
    """Get or start a local SparkSession whose workers run ``sys.executable``.

    Args:
        cores: ``local[N]`` thread count (``"*"``: every core).
        shuffle_partitions: ``spark.sql.shuffle.partitions`` (default: Spark's).

    Raises:
        MissingDependencyError: pyspark is not installed.
    """
    sql = require("pyspark.sql", "spark")
    # the workers are started by the JVM from these settings and variables
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    builder = (
        sql.SparkSession.builder.master(f"local[{cores}]")
        .appName("privdl")
        .config("spark.pyspark.python", sys.executable)
        .config("spark.pyspark.driver.python", sys.executable)
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.log.level", "ERROR")  # keep the CLI's stderr to privdl's own lines
    )
    if shuffle_partitions is not None:
        builder = builder.config("spark.sql.shuffle.partitions", str(shuffle_partitions))
    return builder.getOrCreate()


def active_or_local(spark: Any = None) -> Any:
    """``spark`` if given, else the active session, else the session of ``spark-submit``
    (its master and settings as given), else :func:`local_session`."""
    if spark is not None:
        return spark
    sql = require("pyspark.sql", "spark")
    active = sql.SparkSession.getActiveSession()
    if active is not None:
        return active
    if os.environ.get("PYSPARK_GATEWAY_PORT"):
        # launched by spark-submit: its JVM is up and its --master / --conf decide
        return sql.SparkSession.builder.appName("privdl").getOrCreate()
    return local_session()
