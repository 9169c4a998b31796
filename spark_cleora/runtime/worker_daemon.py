"""The Python daemon of an embedded local Spark: PySpark's own daemon, with PySpark imported from the
installed package instead of the zip of its sources.

Spark puts ``$SPARK_HOME/python/lib/pyspark.zip`` and ``py4j-*-src.zip`` first on its Python workers'
path. A pip-installed PySpark ships both zips inside the package, so every worker compiles the PySpark
modules it imports from the zip's sources (zipimport keeps no bytecode; ``import pyspark.worker`` and the
Arrow serialisers: 0.9 s from the zip, 0.2 s from the package, measured here), and re-reads the 3.9 MB
zip's index when a task adds its files' directory to the path. When the zips are the installed package's
own (:func:`~spark_cleora.runtime.pyspark_path.prefer_installed_pyspark`), the same release is on the path beside them: taking them off the
path before anything imports PySpark makes the daemon, and the workers it forks, use the package's
compiled modules. The daemon itself is PySpark's, unchanged.

The session sets ``spark.python.daemon.module`` to this module for an embedded ``local`` master only
(:func:`spark_cleora.runtime.session.get_spark`); it imports nothing that starts threads before the daemon
forks its workers (PySpark's own rule), and ``spark_cleora/__init__`` takes the zips off the
path before it imports PySpark.
"""

from __future__ import annotations

if __name__ == "__main__":
    from pyspark import daemon  # (the package's PySpark: spark_cleora/__init__ ran first)

    daemon.manager()
