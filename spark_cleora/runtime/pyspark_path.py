"""Which PySpark a Python process imports: the installed package's compiled modules rather than the zip of
its sources that Spark puts first on its workers' path (see :mod:`spark_cleora.runtime.worker_daemon`).

Imports nothing but ``os`` and ``sys``: ``spark_cleora/__init__`` calls it before anything imports PySpark.
"""

from __future__ import annotations

import os
import sys


def prefer_installed_pyspark() -> None:
    """Take the zips of an installed PySpark package (``<site>/pyspark/python/lib/*.zip``) off
    ``sys.path`` when ``<site>`` itself is on the path with ``pyspark`` and ``py4j`` in it. Any other
    zip (a Spark distribution's ``$SPARK_HOME/python/lib``) stays: its release may differ."""
    drop = []
    for entry in sys.path:
        if not entry.endswith(".zip"):
            continue
        lib = os.path.dirname(entry)
        package = os.path.dirname(os.path.dirname(lib))  # <site>/pyspark
        site = os.path.dirname(package)
        if (os.path.basename(lib) == "lib" and os.path.basename(package) == "pyspark"
                and os.path.isfile(os.path.join(package, "__init__.py"))
                and os.path.isdir(os.path.join(site, "py4j")) and site in sys.path):
            drop.append(entry)
    for entry in drop:
        sys.path.remove(entry)
        sys.path_importer_cache.pop(entry, None)
