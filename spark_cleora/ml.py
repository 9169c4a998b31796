"""Spark ML face: a ``Cleora`` Estimator whose ``fit`` returns a ``CleoraModel`` (the embeddings table).

Both are ``pyspark.ml`` stages (usable in a ``Pipeline``) over the same :func:`spark_cleora.embed`.
``write().save(path)`` / ``load(path)`` go through the session's DataFrame reader and writer only (and
follow the output rules of :mod:`spark_cleora.storage.outputs`: ``overwrite()`` replaces only a previous
output of the tool, atomically where the filesystem can rename): the metadata is one JSON line in
``path/metadata`` (the layout of ``pyspark.ml``'s ``DefaultParamsWriter``, so
a saved ``Pipeline``/``PipelineModel`` reads its stages back) and the model's embeddings are Parquet in
``path/embeddings``. No JVM and no RDD: the same files work on classic Spark and on Spark Connect.

pycleora names: ``feature_dim`` is ``dim``, ``num_iterations`` is ``iterations`` (see
docs/spark-ml.md for the whole mapping and the defaults).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any

from pyspark.ml import Estimator, Model
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.util import MLReadable, MLWritable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from .config import EmbedConfig
from .engine.embed import embed
from .errors import BadInputError, ConfigError

#: Param name -> (EmbedConfig field, type converter, description). The defaults are EmbedConfig's.
_EMBED_PARAMS: dict[str, tuple[str, Any, str]] = {
    "hyperedgeCol": ("hyperedge", TypeConverters.toString, "column whose values group events into hyperedges"),
    "entityCol": ("entity", TypeConverters.toString, "column of the entities to embed"),
    "timestampCol": ("timestamp", TypeConverters.toString, "event time column (with sessionGap: sessions)"),
    "sessionGap": ("session_gap", TypeConverters.toFloat, "seconds of inactivity that end a session"),
    "columns": ("columns", TypeConverters.toString,
                "Cleora column spec over text lines in a 'value' column (instead of hyperedgeCol/entityCol)"),
    "dim": ("dim", TypeConverters.toInt, "embedding dimension (pycleora: feature_dim)"),
    "iterations": ("iterations", TypeConverters.toInt, "propagation steps (pycleora: num_iterations)"),
    "markov": ("markov", TypeConverters.toString, "Markov matrix: 'left' or 'symmetric'"),
    "init": ("init", TypeConverters.toString, "start vectors: 'siphash' (pycleora 2), 'fx' (pycleora 3), ..."),
    "seed": ("seed", TypeConverters.toInt, "seed of the start vectors"),
    "whiten": ("whiten", TypeConverters.toString, "whitening: 'none', 'every', 'final'"),
    "residual": ("residual", TypeConverters.toFloat, "residual weight alpha of the previous iteration"),
    "engine": ("engine", TypeConverters.toString, "'auto', 'one-task' or 'shuffle'"),
    "workDir": ("work_dir", TypeConverters.toString, "directory for the iterations (else localCheckpoint)"),
}
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(EmbedConfig)}


class _CleoraParams(Params):
    """The embedding options as typed Params (defaults: :class:`~spark_cleora.config.EmbedConfig`)."""

    def __init__(self) -> None:
        super().__init__()
        for name, (field, conv, doc) in _EMBED_PARAMS.items():
            setattr(self, name, Param(self, name, doc, typeConverter=conv))
            default = _DEFAULTS[field]
            if default is not None:
                self._setDefault(**{name: default})

    def embed_options(self) -> dict[str, Any]:
        """The set or default Params as :func:`spark_cleora.embed` options (unset optional ones left out)."""
        out = {}
        for name, (field, _, _) in _EMBED_PARAMS.items():
            p = self.getParam(name)
            if self.isDefined(p):
                out[field] = self.getOrDefault(p)
        return out


class _Persist(MLWritable):
    """``write().save(path)`` / ``load(path)`` through DataFrame reads and writes only."""

    def write(self) -> _Writer:
        return _Writer(self)

    @classmethod
    def read(cls) -> _Reader:
        return _Reader(cls)

    @classmethod
    def load(cls, path: str) -> Any:
        return cls.read().load(path)

    def _save_data(self, spark: SparkSession, path: str) -> None:
        """Data beside the metadata (the model's embeddings) in the new directory ``path``; nothing for
        the Estimator."""

    def _load_data(self, spark: SparkSession, path: str) -> None:
        pass


class _Writer:
    """The stage's metadata as ``pyspark.ml``'s ``DefaultParamsWriter`` lays it out, written by Spark."""

    def __init__(self, instance: Params) -> None:
        self.instance, self._overwrite, self._spark = instance, False, None

    def overwrite(self) -> _Writer:
        self._overwrite = True
        return self

    def session(self, spark: SparkSession) -> _Writer:
        self._spark = spark
        return self

    def save(self, path: str) -> None:
        """Write the stage into ``path`` as an output of the tool (docs/data-safety.md): refused when
        ``path`` exists, unless ``overwrite()`` was asked for and ``path`` holds a previous save (or any
        output of spark_cleora) or is empty; written atomically where the filesystem can rename."""
        from .storage.filesystem import path_state, qualify
        from .storage.outputs import write_atomically
        from .storage.outputs import RefusedError, guarded_dir, mark_output
        from .storage.paths import local_path

        spark = self._spark or SparkSession.active()
        target = qualify(spark, path) or path
        lp = local_path(target)
        taken = path_state(spark, target) != "missing" if lp is None else os.path.lexists(lp)
        if taken and not self._overwrite:
            raise RefusedError(f"{path!r} already exists; write().overwrite().save(path) replaces a previous save")
        inst = self.instance
        meta = {
            "class": f"{type(inst).__module__}.{type(inst).__name__}", "timestamp": int(time.time() * 1000),
            "sparkVersion": spark.version, "uid": inst.uid,
            "paramMap": {p.name: v for p, v in inst._paramMap.items()},
            "defaultParamMap": {p.name: v for p, v in inst._defaultParamMap.items()},
        }

        def write(staging: str) -> None:
            spark.createDataFrame([(json.dumps(meta),)], "value string").coalesce(1).write.text(
                _join(staging, "metadata"))
            inst._save_data(spark, staging)
            mark_output(staging, "spark-ml-stage")

        with guarded_dir(target, what="save path"):  # someone's directory is refused, even with overwrite()
            write_atomically(target, write)


class _Reader:
    def __init__(self, cls: type) -> None:
        self.cls, self._spark = cls, None

    def session(self, spark: SparkSession) -> _Reader:
        self._spark = spark
        return self

    def load(self, path: str) -> Any:
        spark = self._spark or SparkSession.active()
        meta = json.loads(spark.read.text(_join(path, "metadata")).first()[0])
        expected = f"{self.cls.__module__}.{self.cls.__name__}"
        if meta.get("class") != expected:
            raise BadInputError(f"{path} holds a {meta.get('class')}, not a {expected}")
        inst = self.cls()
        inst._resetUid(meta["uid"])
        inst._set(**meta.get("paramMap", {}))
        inst._load_data(spark, path)
        return inst


def _fitted(model: Any, attr: str, what: str) -> Any:
    """A model's data, or the reason it has none."""
    value = getattr(model, attr)
    if value is None:
        raise ConfigError(f"this {type(model).__name__} has no {what} (construct it by fit or load)")
    return value


def _join(path: str, name: str) -> str:
    return path.rstrip("/") + "/" + name


class _Settable:
    """An Estimator's constructor and ``setParams``: keyword Params, typed by their converters."""

    def __init__(self, **params: Any) -> None:
        super().__init__()
        self._set(**params)  # type: ignore[attr-defined]

    def setParams(self, **params: Any) -> Any:
        return self._set(**params)  # type: ignore[attr-defined]


class Cleora(_Settable, Estimator, _CleoraParams, _Persist, MLReadable):
    """Cleora embeddings as a Spark ML Estimator.

    ``fit(events)`` embeds the entities of an event table (``hyperedgeCol``, ``entityCol``) and returns a
    :class:`CleoraModel`. Parameters are :func:`spark_cleora.embed`'s options in Spark ML's camelCase.

    Examples
    --------
    >>> model = Cleora(hyperedgeCol="user_id", entityCol="item_id", dim=128, iterations=3).fit(events)  # doctest: +SKIP
    >>> model.transform(events).select("item_id", "embedding")  # doctest: +SKIP
    """

    def _fit(self, dataset: DataFrame) -> CleoraModel:
        model = self._copyValues(CleoraModel(embeddings=embed(dataset, **self.embed_options())))
        if self.isDefined(self.entityCol):
            model._set(inputCol=self.getOrDefault(self.entityCol))
        return model


class CleoraModel(Model, _CleoraParams, _Persist, MLReadable):
    """The embeddings table (``entity``, ``column``, ``degree``, ``occurrences``, ``embedding``) of a fit.

    ``transform(df)`` adds ``outputCol`` (default ``embedding``, ``array<float>``) to ``df`` by its
    ``inputCol`` (default: the Estimator's ``entityCol``); entities the model has not seen get NULL.
    """

    def __init__(self, embeddings: DataFrame | None = None, **params: Any) -> None:
        super().__init__()
        self.inputCol = Param(self, "inputCol", "column of df holding entity names", TypeConverters.toString)
        self.outputCol = Param(self, "outputCol", "name of the vector column added", TypeConverters.toString)
        self._setDefault(outputCol="embedding")
        self._set(**params)
        self._embeddings = embeddings

    @property
    def embeddings(self) -> DataFrame:
        """The embeddings table."""
        return _fitted(self, "_embeddings", "embeddings")

    def _transform(self, dataset: DataFrame) -> DataFrame:
        key = self.getOrDefault(self.inputCol) if self.isDefined(self.inputCol) else "entity"
        out = self.getOrDefault(self.outputCol)
        if out in dataset.columns:
            raise ConfigError(f"transform: the input already has a column {out!r}; set outputCol")
        # one vector per entity name: a name may appear under several spec columns; the first column wins
        vec = (self.embeddings.groupBy("entity")
               .agg(F.min_by("embedding", F.coalesce(F.col("column"), F.lit(""))).alias(out))
               .withColumnRenamed("entity", "_cleora_key"))
        return dataset.join(vec, F.col(key).cast("string") == F.col("_cleora_key"), "left").drop("_cleora_key")

    def _save_data(self, spark: SparkSession, path: str) -> None:
        self.embeddings.write.parquet(_join(path, "embeddings"))

    def _load_data(self, spark: SparkSession, path: str) -> None:
        self._embeddings = spark.read.parquet(_join(path, "embeddings"))
