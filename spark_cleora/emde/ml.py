"""Spark ML stages of EMDE, on top of the same code as ``spark-cleora emde``.

* :class:`EmdeCoder` (Estimator) fits the DLSH coder (:func:`spark_cleora.emde.coder.fit_coder`) on an
  ``entity``/``embedding`` table -- or on the output of a :class:`spark_cleora.ml.CleoraModel` in a
  ``Pipeline`` -- and returns an :class:`EmdeCoderModel` whose ``transform`` attaches every item's codes.
* :class:`EmdeTrainer` (Estimator) trains the EMDE model (:func:`spark_cleora.emde.train.train_model`,
  PyTorch: ``pip install 'spark-cleora[model]'``) on an event table, and returns an
  :class:`EmdeTrainedModel` whose ``transform(events)`` gives the top-k items per customer
  (:func:`spark_cleora.emde.model_recommend.recommend_with_model`).

Saving and loading go through :class:`spark_cleora.ml` 's writer (metadata as ``pyspark.ml`` lays it
out, DataFrame reads and writes only, the output rules of :mod:`spark_cleora.storage.outputs`). A saved coder
model holds a coder directory at ``PATH/coder`` that ``spark-cleora emde sketch --coder PATH/coder``
reads as it is; a saved trained model holds the ``emde train`` model directory at ``PATH/model``.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from typing import Any

from pyspark.ml import Estimator, Model
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.util import MLReadable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from ..errors import ConfigError
from ..ml import _fitted, _join, _Persist, _Settable
from .config import FitConfig, RecommendConfig, TrainConfig

#: Param name -> (config field, type converter, description); defaults are the configs' own
_CODER_PARAMS: dict[str, tuple[str, Any, str]] = {
    "depth": ("depth", TypeConverters.toInt, "N: partitionings (default 10)"),
    "bits": ("bits", TypeConverters.toInt, "K: hyperplanes per partitioning, 2**K buckets (default 7)"),
    "seed": ("seed", TypeConverters.toInt, "seed of the random directions"),
    "bias": ("bias", TypeConverters.toString, "'median' or 'random-quantile' (the paper's variant)"),
    "standardize": ("standardize", TypeConverters.toBoolean, "standardise each dimension before projecting"),
    "fitSample": ("fit_sample", TypeConverters.toInt, "fit on a seeded sample of about this many items"),
    "quantileAccuracy": ("quantile_accuracy", TypeConverters.toInt, "percentile_approx accuracy"),
    "randomSource": ("random_source", TypeConverters.toBoolean, "add a source of seeded random vectors per item"),
}
_TRAIN_PARAMS: dict[str, tuple[str, Any, str]] = {
    "customerCol": ("customer", TypeConverters.toString, "customer (or session) column of the events"),
    "itemCol": ("item", TypeConverters.toString, "item column of the events"),
    "timestampCol": ("timestamp", TypeConverters.toString, "event time column"),
    "weightCol": ("weight", TypeConverters.toString, "non-negative event weight column (default 1)"),
    "halfLife": ("half_life", TypeConverters.toFloat, "decay of the input sketches in seconds"),
    "sessionGap": ("session_gap", TypeConverters.toFloat, "short-term input: the current session (gaps <= s)"),
    "recent": ("recent", TypeConverters.toInt, "short-term input: the newest N events"),
    "targetWindow": ("target_window", TypeConverters.toInt, "target: the next N items, decayed"),
    "decayAnchor": ("decay_anchor", TypeConverters.toString, "'last-event' or 'as-of'"),
    "maxExamples": ("max_examples", TypeConverters.toInt, "a seeded sample of about N target events"),
    "validationFraction": ("validation_fraction", TypeConverters.toFloat, "newest fraction of time for validation"),
    "seed": ("seed", TypeConverters.toInt, "seed of sampling, initialisation and order"),
    "hidden": ("hidden", TypeConverters.toInt, "hidden width"),
    "layers": ("layers", TypeConverters.toInt, "hidden layers"),
    "embeddingDim": ("embedding_dim", TypeConverters.toInt, "embedding size per categorical feature"),
    "epochs": ("epochs", TypeConverters.toInt, "epochs"),
    "batchSize": ("batch_size", TypeConverters.toInt, "examples per step and process"),
    "lr": ("lr", TypeConverters.toFloat, "AdamW learning rate"),
    "weightDecay": ("weight_decay", TypeConverters.toFloat, "AdamW weight decay"),
    "patience": ("patience", TypeConverters.toInt, "early stopping: epochs without a lower validation loss"),
    "processes": ("processes", TypeConverters.toInt, "TorchDistributor processes"),
    "distributor": ("distributor", TypeConverters.toString, "'torch' (TorchDistributor) or 'none'"),
    "threads": ("threads", TypeConverters.toInt, "torch threads per process (default cores / processes)"),
    "coderPath": ("coder", TypeConverters.toString, "coder directory (emde fit, or EmdeCoderModel's PATH/coder)"),
    "modelPath": ("output", TypeConverters.toString, "local directory the trained model is written to"),
    "overwrite": ("overwrite", TypeConverters.toBoolean, "replace a previous model at modelPath"),
}


def _declare(params: Params, table: dict[str, tuple[str, Any, str]], defaults: dict[str, Any]) -> None:
    """Typed Params from ``table``, with the config's defaults (unset optional ones stay unset)."""
    for name, (field, conv, doc) in table.items():
        setattr(params, name, Param(params, name, doc, typeConverter=conv))
        if defaults.get(field) is not None:
            params._setDefault(**{name: defaults[field]})


def _defaults(cls: type) -> dict[str, Any]:
    return {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}


def _options(params: Params, table: dict[str, tuple[str, Any, str]]) -> dict[str, Any]:
    return {field: params.getOrDefault(params.getParam(name)) for name, (field, _, _) in table.items()
            if params.isDefined(params.getParam(name))}


def _io_params(params: Params, *, output: str) -> None:
    params.inputCol = Param(params, "inputCol", "column of df holding item names", TypeConverters.toString)
    params.outputCol = Param(params, "outputCol", "name of the column added", TypeConverters.toString)
    params._setDefault(outputCol=output)


# --------------------------------------------------------------------------------------------
# the coder
# --------------------------------------------------------------------------------------------

class _CoderParams(Params):
    def __init__(self) -> None:
        super().__init__()
        _declare(self, _CODER_PARAMS, _defaults(FitConfig))
        self.entityCol = Param(self, "entityCol", "column of the item names", TypeConverters.toString)
        self.embeddingCol = Param(self, "embeddingCol", "column of the item vectors (array<float>)",
                                  TypeConverters.toString)
        self._setDefault(entityCol="entity", embeddingCol="embedding")


class EmdeCoder(_Settable, Estimator, _CoderParams, _Persist, MLReadable):
    """The EMDE coder (density-dependent LSH) as a Spark ML Estimator.

    ``fit(df)`` reads one vector per item from ``entityCol`` / ``embeddingCol`` (rows with a NULL
    vector are skipped; an item on several rows must have the same vector there, as after
    ``CleoraModel.transform``) and returns an :class:`EmdeCoderModel`. Params are ``emde fit``'s.

    Examples
    --------
    >>> stages = [Cleora(hyperedgeCol="user", entityCol="item", dim=64), EmdeCoder(entityCol="item", depth=10, bits=7)]  # doctest: +SKIP
    >>> Pipeline(stages=stages).fit(events).transform(events)  # adds "embedding" and "codes"  # doctest: +SKIP
    """

    def _fit(self, dataset: DataFrame) -> EmdeCoderModel:
        from .coder import fit_coder, item_codes

        name = self.getOrDefault(self.embeddingCol)
        source = item_vectors(dataset, self.getOrDefault(self.entityCol), name)
        coder = fit_coder([source], names=[name], config=FitConfig(**_options(self, _CODER_PARAMS)))
        model = self._copyValues(EmdeCoderModel(coder=coder, codes=item_codes(coder, [source])))
        return model._set(inputCol=self.getOrDefault(self.entityCol))


def item_vectors(df: DataFrame, entity: str, embedding: str) -> DataFrame:
    """``entity`` (string), ``embedding``: one row per item with a vector."""
    return (df.select(F.col(entity).cast("string").alias("entity"), F.col(embedding).alias("embedding"))
            .dropna().dropDuplicates(["entity"]))


class EmdeCoderModel(Model, _CoderParams, _Persist, MLReadable):
    """A fitted coder and its item codes (``item``, ``codes`` array<int>, absolute bucket ids).

    ``transform(df)`` adds ``outputCol`` (default ``codes``) by ``inputCol`` (default: the Estimator's
    ``entityCol``); items the coder has not coded get NULL. ``coder`` is the fitted
    :class:`spark_cleora.emde.coder.Coder` (``coder_id``, ``length``, ``encode``).
    """

    def __init__(self, coder: Any = None, codes: DataFrame | None = None, **params: Any) -> None:
        super().__init__()
        _io_params(self, output="codes")
        self._set(**params)
        self._coder, self._codes = coder, codes

    @property
    def coder(self) -> Any:
        return _fitted(self, "_coder", "coder")

    @property
    def codes(self) -> DataFrame:
        """The ``item``/``codes`` table."""
        return _fitted(self, "_codes", "codes")

    def _transform(self, dataset: DataFrame) -> DataFrame:
        return _attach(dataset, self.codes.select(F.col("item").alias("_emde_key"), "codes"), self, "codes")

    def _save_data(self, spark: SparkSession, path: str) -> None:
        from .coder import save_coder

        save_coder(spark, self.coder, self.codes, _join(path, "coder"))  # a coder directory, as emde fit's

    def _load_data(self, spark: SparkSession, path: str) -> None:
        from .coder import load_coder, read_codes

        self._coder = load_coder(spark, _join(path, "coder"))
        self._codes = read_codes(spark, _join(path, "coder"))


def _attach(dataset: DataFrame, table: DataFrame, model: Params, column: str) -> DataFrame:
    """``dataset`` left-joined with ``table`` (``_emde_key`` + ``column``) on ``inputCol``, as ``outputCol``."""
    key = model.getOrDefault(model.inputCol) if model.isDefined(model.inputCol) else "entity"
    out = model.getOrDefault(model.outputCol)
    if out in dataset.columns:
        raise ConfigError(f"transform: the input already has a column {out!r}; set outputCol")
    return dataset.join(table.withColumnRenamed(column, out), F.col(key).cast("string") == F.col("_emde_key"),
                        "left").drop("_emde_key")


# --------------------------------------------------------------------------------------------
# the trained model (PyTorch)
# --------------------------------------------------------------------------------------------

class _TrainParams(Params):
    def __init__(self) -> None:
        super().__init__()
        _declare(self, _TRAIN_PARAMS, _defaults(TrainConfig))


class EmdeTrainer(_Settable, Estimator, _TrainParams, _Persist, MLReadable):
    """The EMDE model (a residual feed-forward network over sketches) as a Spark ML Estimator.

    ``fit(events)`` builds the training examples from the event table (``customerCol``, ``itemCol``,
    ``timestampCol``) with the coder at ``coderPath``, trains with ``emde train``'s code and writes the
    model directory to ``modelPath`` (a local path: the trainer processes write the weights); it returns
    an :class:`EmdeTrainedModel`. Needs ``pip install 'spark-cleora[model]'`` (PyTorch).
    """

    def _fit(self, dataset: DataFrame) -> EmdeTrainedModel:
        from .model import require_torch
        from .train import train_model

        require_torch()
        options = _options(self, _TRAIN_PARAMS)
        missing = [n for n, f in (("coderPath", "coder"), ("modelPath", "output"), ("customerCol", "customer"),
                                  ("itemCol", "item"), ("timestampCol", "timestamp")) if not options.get(f)]
        if missing:
            raise ConfigError(f"EmdeTrainer needs {', '.join(missing)}")
        train_model(dataset.sparkSession, events=dataset, **options)
        model = self._copyValues(EmdeTrainedModel())
        model._load_model(dataset.sparkSession, options["output"])
        return model


class EmdeTrainedModel(Model, _TrainParams, _Persist, MLReadable):
    """A trained EMDE model. ``transform(events)`` gives ``customer``, ``items`` (best first), ``scores``:
    the top-``k`` items per customer of ``events`` predicted from their history (``emde recommend
    --model``), with the coder it was trained with."""

    def __init__(self, **params: Any) -> None:
        super().__init__()
        self.k = Param(self, "k", "items per customer", TypeConverters.toInt)
        self.scoring = Param(self, "scoring", "'popularity' (the item's popularity corrected by the predicted "
                             "sketch) or 'log-prob'", TypeConverters.toString)
        self.sketchWeight = Param(self, "sketchWeight", "popularity scoring: weight w of the predicted sketch",
                                  TypeConverters.toFloat)
        self.excludeSeen = Param(self, "excludeSeen", "never recommend items of the customer's events",
                                 TypeConverters.toBoolean)
        # the defaults of `emde recommend --model` and recommend_with_model (docs/emde-model.md)
        self._setDefault(k=10, scoring=RecommendConfig.model_scoring, sketchWeight=RecommendConfig.model_sketch_weight,
                         excludeSeen=False)
        self._set(**params)
        self._model: Any = None

    def setParams(self, **params: Any) -> EmdeTrainedModel:
        """Set ``k``, ``scoring``, ``sketchWeight``, ``excludeSeen`` (or the training Params it carries)."""
        return self._set(**params)

    @property
    def model(self) -> Any:
        """The :class:`spark_cleora.emde.model.EmdeModel` (manifest, network)."""
        return _fitted(self, "_model", "model")

    def _load_model(self, spark: SparkSession, directory: str) -> None:
        from .model import load_model

        self._model = load_model(directory)

    def _transform(self, dataset: DataFrame) -> DataFrame:
        from .coder import read_codes
        from .model_recommend import recommend_with_model

        g = self.getOrDefault
        customer, item = g(self.customerCol), g(self.itemCol)
        seen = dataset.select(F.col(customer).alias("customer"), F.col(item).alias("item")) if g(self.excludeSeen) \
            else None
        coder = self.model.manifest["coder"]
        recs, _ = recommend_with_model(
            self.model, dataset, read_codes(dataset.sparkSession, coder), customer=customer, item=item,
            timestamp=g(self.timestampCol), weight=g(self.weightCol) if self.isDefined(self.weightCol) else None,
            k=g(self.k), scoring=g(self.scoring), sketch_weight=g(self.sketchWeight), seen=seen)
        return recs

    def _save_data(self, spark: SparkSession, path: str) -> None:
        from ..storage.paths import local_path

        lp = local_path(path)
        if lp is None:
            raise ConfigError(f"a trained EMDE model is saved to a local path (its weights are files); got {path!r}")
        shutil.copytree(self.model.path, os.path.join(lp, "model"))

    def _load_data(self, spark: SparkSession, path: str) -> None:
        self._load_model(spark, _join(path, "model"))
