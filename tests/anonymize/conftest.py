"""One local Spark session for every Spark test of this folder (a JVM start is slow)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def spark():
    pytest.importorskip("pyspark")
    from privdl.anonymize.spark_session import local_session

    session = local_session(cores="2", shuffle_partitions=4)
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()
