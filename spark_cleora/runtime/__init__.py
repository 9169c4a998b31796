"""How the code runs: the environment check, the Spark session, the machine's budget, Spark's errors.

Imports nothing above it (no engine, no storage): ``spark_cleora/__init__`` checks the environment with
:mod:`.compat` before anything imports PySpark."""
