"""Training the EMDE model (``emde examples``, ``emde train``).

1. Examples are built on Spark (:mod:`spark_cleora.emde.examples`) and written as Parquet shards,
   partitioned by ``split`` (``train``/``val``), with a manifest (the input specification).
2. The feature specification (moments, vocabularies) is fitted on the training split (Spark
   aggregates).
3. :func:`train_worker` runs in every process started by
   ``pyspark.ml.torch.distributor.TorchDistributor`` (local processes when Spark runs locally,
   barrier tasks on executors otherwise; ``distributor="none"`` runs it in this process). Each
   process reads its own shard of the Parquet files (whole files round-robin by rank; rows
   round-robin when there are fewer files than processes), gradients are averaged with
   ``DistributedDataParallel`` (gloo). Rank 0 logs one line per epoch and writes a checkpoint
   after every epoch; a rerun with the same options resumes after the last checkpointed epoch.
4. The best epoch's weights (lowest validation loss) go into the model directory, written atomically.

Determinism: weights are initialised from ``seed``, every epoch's order is drawn from
``(seed, epoch, rank)`` and ``torch.use_deterministic_algorithms`` is on, so two runs with one seed,
process count and thread count give identical weights (and a resumed run equals an uninterrupted one).
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import platform
import shutil
import sys
import time
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from scipy import sparse

from ..errors import EXIT_INPUT, EXIT_USAGE, BadInputError, ConfigError, ForeignWorkError, RunFailedError, is_expected
from ..storage.outputs import check_work_dir, claim_work_dir, clear_work_dir
from ..runtime.session import job_description
from ..storage.paths import local_path
from .._version import __version__
from .coder import RANDOM_SOURCE, read_codes
from .config import TrainConfig
from .examples import InputSpec, build_examples
from .features import FeatureSpec, fit_feature_spec
from .model import MANIFEST, WEIGHTS, batch_arrays, require_torch
from .store import input_paths, join, read_meta, refuse_existing, write_output
from ..storage.readers import read_table

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_META = "checkpoint.json"
FINAL = "final.pt"


# --------------------------------------------------------------------------------------------
# Examples on Spark
# --------------------------------------------------------------------------------------------

def input_spec(cfg: TrainConfig, length: int) -> InputSpec:
    return InputSpec(length=length, half_life=cfg.half_life, session_gap=cfg.session_gap, recent=cfg.recent,
                     target_window=cfg.target_window, decay_anchor=cfg.decay_anchor)


def _examples_key(cfg: TrainConfig, coder_id: str) -> str:
    keys = ("events", "events_format", "customer", "item", "timestamp", "weight", "half_life", "session_gap",
            "recent", "target_window", "decay_anchor", "max_examples", "examples_per_customer",
            "validation_fraction", "seed", "event_features", "customer_features")
    d = cfg.to_dict()
    text = json.dumps({"coder_id": coder_id, **{k: d[k] for k in keys}}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def read_customer_features(spark: SparkSession, path: str, customer: str) -> DataFrame:
    """A customer feature table (Parquet, or csv/tsv by extension) keyed by the ``customer`` column."""
    ext = os.path.splitext(path.rstrip("/"))[1].lower()
    df = read_table(spark, [path], {".csv": "csv", ".tsv": "tsv"}.get(ext, "parquet"))
    if customer not in df.columns:
        raise ConfigError(f"--customer-features {path!r} needs a {customer!r} column; it has {df.columns}")
    if len(df.columns) < 2:
        raise ConfigError(f"--customer-features {path!r} has no feature column besides {customer!r}")
    return df


def write_examples(spark: SparkSession, cfg: TrainConfig, output: str, *, events: DataFrame | None = None,
                   n_files: int = 4) -> dict[str, Any]:
    """Build the examples of ``cfg`` and write them (partitioned by split) with their manifest."""
    coder_meta = read_meta(spark, cfg.coder or "", "coder")
    if events is None:
        events = read_table(spark, cfg.events, cfg.events_format)
    spec = input_spec(cfg, coder_meta["length"])
    ex, report = build_examples(
        events, read_codes(spark, cfg.coder or ""), spec, customer=cfg.customer or "", item=cfg.item or "",
        timestamp=cfg.timestamp or "", weight=cfg.weight, event_features=cfg.event_features,
        validation_fraction=cfg.validation_fraction, max_examples=cfg.max_examples,
        examples_per_customer=cfg.examples_per_customer, seed=cfg.seed)
    features = list(cfg.event_features)
    if cfg.customer_features:
        cf = read_customer_features(spark, cfg.customer_features, cfg.customer or "")
        cols = [c for c in cf.columns if c != cfg.customer and c not in ex.columns]
        features += cols
        ex = ex.join(cf.select(F.col(cfg.customer).cast("string").alias("customer"), *cols)
                     .dropDuplicates(["customer"]), "customer", "left")

    def write(staging: str) -> dict[str, Any]:
        with job_description(spark, "spark_cleora emde examples: build and write"):
            ex.repartition(n_files, "customer").write.partitionBy("split").parquet(staging)
            # no example at all leaves a directory without data files, which Spark cannot read back
            has_data = bool(glob.glob(os.path.join(local_path(staging) or staging, "split=*")))
            counts = {r["split"]: int(r["n"]) for r in spark.read.parquet(staging).groupBy("split")
                      .agg(F.count(F.lit(1)).alias("n")).collect()} if has_data or local_path(staging) is None else {}
        if not counts.get("train"):
            raise BadInputError("no training example (every customer needs an event after its first one, "
                                "before the validation cut)")
        return {"kind": "examples", "coder_id": coder_meta["coder_id"], "coder": cfg.coder,
                "width": coder_meta["width"], "n_codes": coder_meta["n_codes"], "inputs": spec.to_dict(),
                "feature_columns": features, "key": _examples_key(cfg, coder_meta["coder_id"]),
                "train_examples": counts.get("train", 0), "val_examples": counts.get("val", 0),
                "columns": {"customer": cfg.customer, "item": cfg.item, "timestamp": cfg.timestamp,
                            "weight": cfg.weight}, **report}

    return write_output(spark, output, write)


# --------------------------------------------------------------------------------------------
# The training loop (one process of TorchDistributor, or in-process)
# --------------------------------------------------------------------------------------------

def _files(directory: str, split: str) -> list[str]:
    return sorted(glob.glob(os.path.join(directory, f"split={split}", "*.parquet")))


def _shard(directory: str, split: str, rank: int, world: int) -> pa.Table | None:
    files = _files(directory, split)
    if not files:
        return None
    if len(files) >= world:
        return pa.concat_tables([pq.read_table(f) for f in files[rank::world]])
    tbl = pa.concat_tables([pq.read_table(f) for f in files])
    return tbl.take(pa.array(np.arange(rank, tbl.num_rows, world)))


def _catalogue(codes_dir: str, length: int) -> tuple[dict[str, int], sparse.csr_matrix]:
    """Item index and the ``(L, items)`` incidence of their codes (score = log p @ incidence)."""
    tbl = pa.concat_tables([pq.read_table(f) for f in sorted(glob.glob(os.path.join(codes_dir, "*.parquet")))])
    items = tbl.column("item").to_pylist()
    codes = tbl.column("codes").combine_chunks()
    flat = codes.flatten().to_numpy(zero_copy_only=False).astype(np.int64)
    d = len(flat) // max(1, len(items))
    cols = np.repeat(np.arange(len(items)), d)
    inc = sparse.csr_matrix((np.ones(len(flat), np.float32), (flat, cols)), shape=(length, len(items)))
    return {it: k for k, it in enumerate(items)}, inc


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def train_worker(job: dict[str, Any]) -> dict[str, Any] | None:
    """Train in one process; rank 0 checkpoints, logs and returns the history (others return None)."""
    import torch
    import torch.distributed as dist

    from .network import block_cross_entropy, build_network

    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        dist.init_process_group("gloo")
    torch.set_num_threads(int(job["threads"]))
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(job["seed"])
    inputs, features = InputSpec(**job["inputs"]), FeatureSpec.from_dict(job["features"])
    width, bs = int(job["architecture"]["width"]), int(job["batch_size"])
    train = _shard(job["examples"], "train", rank, world)
    val = _shard(job["examples"], "val", rank, world)
    n_train = 0 if train is None else train.num_rows
    n_batches = n_train // bs if n_train >= bs else (1 if n_train >= 2 else 0)
    if world > 1:
        t = torch.tensor([n_batches])
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        n_batches = int(t.item())
    if n_batches == 0:
        raise BadInputError(f"process {rank}: fewer than 2 training examples in its shard")
    index, incidence = _catalogue(job["codes"], inputs.length)
    n_val = 0 if val is None else val.num_rows
    if n_val:
        v_item = np.array([index.get(x, -1) for x in val.column("target").to_pylist()])

    net = build_network(job["architecture"])
    model = torch.nn.parallel.DistributedDataParallel(net) if world > 1 else net
    opt = torch.optim.AdamW(model.parameters(), lr=job["lr"], weight_decay=job["weight_decay"])
    epochs = int(job["epochs"])
    if job["schedule"] == "step":
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=job["gamma"])
    elif job["schedule"] == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    state = {"epoch": 0, "history": [], "best_loss": float("inf"), "best_epoch": 0, "bad_epochs": 0, "best": None}
    ckpt = os.path.join(job["work"], CHECKPOINT)
    if os.path.exists(ckpt):
        saved = torch.load(ckpt, map_location="cpu", weights_only=False)
        net.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        state = saved["state"]
        if rank == 0:
            _say(f"emde train: resuming after epoch {state['epoch']} from {ckpt}")

    # The shards stay sparse (Arrow lists); a batch is made dense only when it is used, so a
    # process holds its examples' nonzeros, not 3 x L floats per example.
    def tensors(tbl: pa.Table, rows: np.ndarray) -> list[Any]:
        arr = batch_arrays(tbl.take(pa.array(rows)), inputs, features, width, with_target=True)
        return [torch.from_numpy(np.ascontiguousarray(a)) for a in arr]

    k = int(job["recall_k"])
    stop_after = job.get("stop_after_epoch")
    while state["epoch"] < epochs and state["bad_epochs"] < job["patience"]:
        epoch = state["epoch"]
        t0 = time.perf_counter()
        model.train()
        order = np.random.default_rng([int(job["seed"]), epoch, rank]).permutation(n_train)
        total, seen = 0.0, 0
        for b in range(n_batches):
            rows = order[b * bs: (b + 1) * bs] if n_train >= bs else order
            x, num, cat, tgt = tensors(train, rows)
            loss = block_cross_entropy(model(x, num, cat), tgt.view(len(rows), -1, width))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.item()) * len(rows)
            seen += len(rows)
        sched.step()
        secs = time.perf_counter() - t0
        sums = torch.tensor([total, float(seen), 0.0, 0.0, 0.0], dtype=torch.float64)
        if n_val:
            net.eval()
            with torch.no_grad():
                for lo in range(0, n_val, 1024):
                    rows = np.arange(lo, min(lo + 1024, n_val))
                    x, num, cat, tgt = tensors(val, rows)
                    logits = net(x, num, cat)
                    sums[2] += float(block_cross_entropy(logits, tgt.view(len(rows), -1, width))) * len(rows)
                    logp = torch.log_softmax(logits, -1).reshape(len(rows), -1).numpy().astype(np.float64)
                    scores = np.asarray((incidence.T @ logp.T).T)
                    its = v_item[rows]
                    ok = its >= 0
                    own = scores[np.arange(len(rows)), np.where(ok, its, 0)]
                    better = (scores > own[:, None]).sum(1)
                    sums[3] += float(((better < k) & ok).sum())
                    sums[4] += len(rows)
        if world > 1:
            dist.all_reduce(sums)
        tr_loss = float(sums[0] / max(sums[1], 1))
        val_loss = float(sums[2] / sums[4]) if sums[4] else None
        recall = float(sums[3] / sums[4]) if sums[4] else None
        state["epoch"] = epoch + 1
        rec = {"epoch": epoch + 1, "train_loss": round(tr_loss, 6), "val_loss": None if val_loss is None else round(val_loss, 6),
               f"val_recall@{k}": None if recall is None else round(recall, 6),
               "examples_per_s": round(float(sums[1]) / secs, 1), "seconds": round(secs, 3),
               "lr": float(opt.param_groups[0]["lr"])}
        state["history"].append(rec)
        score = val_loss if val_loss is not None else tr_loss
        if score < state["best_loss"] - 1e-7:
            state.update(best_loss=score, best_epoch=epoch + 1, bad_epochs=0,
                         best={n: v.detach().clone() for n, v in net.state_dict().items()})
        else:
            state["bad_epochs"] += 1
        if rank == 0:
            vtxt = "" if val_loss is None else f", val loss {val_loss:.4f}, val Recall@{k} {recall:.4f}"
            _say(f"emde train: epoch {epoch + 1}/{epochs}: train loss {tr_loss:.4f}{vtxt}, "
                 f"{rec['examples_per_s']:.0f} examples/s ({secs:.1f}s)")
            tmp = ckpt + ".tmp"
            torch.save({"model": net.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                        "state": state}, tmp)
            os.replace(tmp, ckpt)
            with open(os.path.join(job["work"], CHECKPOINT_META), "w", encoding="utf-8") as fh:
                json.dump({"key": job["key"], "epoch": epoch + 1}, fh)
        if stop_after is not None and epoch + 1 >= stop_after and state["epoch"] < epochs:
            raise KeyboardInterrupt(f"stopped after epoch {epoch + 1} (stop_after_epoch)")
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    if rank != 0:
        return None
    torch.save(state["best"], os.path.join(job["work"], FINAL))
    return {"history": state["history"], "best_epoch": state["best_epoch"],
            "stopped_early": state["epoch"] < epochs}


def run_training(job: dict[str, Any], *, processes: int, distributor: str, spark: SparkSession) -> dict[str, Any]:
    """``train_worker`` in TorchDistributor's processes (or in this process)."""
    if distributor == "none":
        if processes != 1:
            raise ConfigError("--distributor none trains in one process; use --processes 1")
        out = train_worker(job)
    else:
        from pyspark.ml.torch.distributor import TorchDistributor

        master = spark.conf.get("spark.master", "")
        local = master == "local" or master.startswith("local[")
        out = TorchDistributor(num_processes=processes, local_mode=local, use_gpu=False).run(train_worker, job)
    if not out:
        raise RunFailedError("training returned no result from rank 0")
    return out


# --------------------------------------------------------------------------------------------
# The whole job
# --------------------------------------------------------------------------------------------

def _cores(spark: SparkSession) -> int:
    from ..runtime.machine import local_cores

    return local_cores(spark.conf.get("spark.master", "")) or os.cpu_count() or 1


def train_model(spark: SparkSession, config: TrainConfig | None = None, *,
                events: DataFrame | str | tuple[str, ...] | None = None, **options: Any) -> dict[str, Any]:
    """Build examples, train the network, write the model directory; returns its manifest.

    Parameters
    ----------
    config, options
        A :class:`spark_cleora.emde.config.TrainConfig` and/or its fields (``coder``, ``customer``,
        ``item``, ``timestamp``, ``half_life``, ``hidden``, ``epochs``, ``output``, ...).
    events
        Event table path(s), or a DataFrame (then ``events`` in the config only names it).
    """
    torch = require_torch()
    stop_after = options.pop("_stop_after_epoch", None)  # tests: a training killed after that epoch
    if isinstance(events, DataFrame):
        options["events"] = ("<DataFrame>",)
    elif events is not None:
        options["events"] = events
        events = None
    cfg = config.replace(**options) if config is not None else TrainConfig(**options)
    t0 = time.perf_counter()
    if not cfg.output:
        raise ConfigError("--output MODEL is required")
    out_local = local_path(cfg.output)
    if out_local is None:
        raise ConfigError("--output MODEL must be a local path (the trainer processes write the weights)")
    refuse_existing(cfg.output, overwrite=cfg.overwrite, what="model")
    work = cfg.work_dir or cfg.output.rstrip("/") + ".work"
    work_local = local_path(work)
    if work_local is None:
        raise ConfigError("--work-dir must be a local path")
    check_work_dir(work, outputs=[cfg.output], inputs=input_paths(cfg))
    claim_work_dir(work)  # created (or adopted empty) and marked: only what the tool put there is deleted
    try:

        if cfg.examples:
            ex_dir = cfg.examples
            ex_meta = read_meta(spark, ex_dir, "examples")
        else:
            if not cfg.coder:
                raise ConfigError("--coder CODER is required")
            coder_meta = read_meta(spark, cfg.coder, "coder")
            ex_dir = os.path.join(work_local, "examples")
            key = _examples_key(cfg, coder_meta["coder_id"])
            try:
                ex_meta = read_meta(spark, ex_dir, "examples")
            except ConfigError:
                ex_meta = {}
            if ex_meta.get("key") != key:
                if os.path.exists(os.path.join(work_local, CHECKPOINT)):
                    raise ForeignWorkError(f"work directory {work!r} holds a checkpoint of a training with other "
                                           "example options; remove it or pass another --work-dir")
                ex_meta = write_examples(spark, cfg, ex_dir, events=events, n_files=max(4, 2 * cfg.processes))
                log.info("examples: %d train, %d validation", ex_meta["train_examples"], ex_meta["val_examples"])
        coder = cfg.coder or ex_meta["coder"]
        coder_meta = read_meta(spark, coder, "coder")
        if coder_meta["coder_id"] != ex_meta["coder_id"]:
            raise ConfigError(f"examples {ex_dir!r} were built with coder {ex_meta['coder_id']}, not "
                              f"{coder_meta['coder_id']} ({coder!r})")
        if not any(src.get("name") == RANDOM_SOURCE for src in coder_meta.get("sources", [])):
            # chosen on validation for both datasets of docs/emde-model.md
            log.warning("coder %s has no random source: a trained model usually ranks better with one "
                        "(emde fit --random-source)", coder_meta["coder_id"])
        inputs = InputSpec(**ex_meta["inputs"])
        train_rows = spark.read.parquet(ex_dir).filter(F.col("split") == "train")
        with job_description(spark, "spark_cleora emde train: feature specification"):
            features = fit_feature_spec(train_rows, list(ex_meta.get("feature_columns", [])), context=cfg.context,
                                        max_vocabulary=cfg.max_vocabulary)
        width, n_blocks = int(coder_meta["width"]), int(coder_meta["n_codes"])
        architecture = {"sketch_in": 2 * inputs.length, "n_numeric": features.n_numeric,
                        "cardinalities": features.cardinalities, "embedding_dim": cfg.embedding_dim,
                        "hidden": cfg.hidden, "layers": cfg.layers, "n_blocks": n_blocks, "width": width}
        training = {k: getattr(cfg, k) for k in ("epochs", "batch_size", "lr", "weight_decay", "schedule", "gamma",
                                                 "patience", "recall_k", "seed", "processes", "distributor")}
        threads = cfg.threads or max(1, _cores(spark) // cfg.processes)
        key_text = json.dumps({"examples": ex_meta.get("key", ex_dir), "architecture": architecture,
                               "features": features.to_dict(), "training": training, "threads": threads},
                              sort_keys=True, default=str)
        key = hashlib.sha256(key_text.encode()).hexdigest()[:16]
        meta_path = os.path.join(work_local, CHECKPOINT_META)
        if os.path.exists(meta_path):
            with open(meta_path, encoding="utf-8") as fh:
                old = json.load(fh)
            if old.get("key") != key:
                raise ForeignWorkError(f"work directory {work!r} holds a checkpoint of a training with other "
                                       f"options (epoch {old.get('epoch')}); remove it or pass another --work-dir")
        codes_dir = join(coder, "codes")
        job = {"examples": local_path(ex_dir) or ex_dir, "codes": local_path(codes_dir) or codes_dir,
               "inputs": inputs.to_dict(), "features": features.to_dict(), "architecture": architecture,
               "work": work_local, "key": key, "threads": threads, **training}
        if stop_after is not None:
            job["stop_after_epoch"] = stop_after
        result = run_training(job, processes=cfg.processes, distributor=cfg.distributor, spark=spark)

        def write(staging: str) -> dict[str, Any]:
            target = local_path(staging) or staging
            os.makedirs(target, exist_ok=True)
            shutil.copyfile(os.path.join(work_local, FINAL), os.path.join(target, WEIGHTS))
            return {"kind": "model", "coder_id": coder_meta["coder_id"], "coder": coder, "inputs": inputs.to_dict(),
                    "features": features.to_dict(), "architecture": architecture, "training": training,
                    "threads": threads, "examples": {k: ex_meta.get(k) for k in (
                        "train_examples", "val_examples", "validation_cutoff", "sample_fraction", "columns",
                        "events_rejected_weight")},
                    "metrics": result["history"], "best_epoch": result["best_epoch"],
                    "stopped_early": result["stopped_early"],
                    "versions": {"spark_cleora": __version__, "torch": torch.__version__,
                                 "python": platform.python_version(), "numpy": np.__version__,
                                 "pyspark": spark.version}}

        manifest = write_output(spark, cfg.output, write, json_name=MANIFEST)
    except Exception as exc:
        # an expected failure (exit 2/3/5): nothing to resume, so nothing of the run is left behind
        # (unless the work dir holds another training's checkpoint: that one is the user's to remove)
        if is_expected(exc, EXIT_USAGE, EXIT_INPUT) and not cfg.keep_work and not isinstance(exc, ForeignWorkError):
            clear_work_dir(work)
        raise
    if not cfg.keep_work:
        clear_work_dir(work)
    manifest["seconds_total"] = round(time.perf_counter() - t0, 3)
    return manifest


def run_examples(spark: SparkSession, cfg: TrainConfig) -> dict[str, Any]:
    """The ``emde examples`` job."""
    if not cfg.coder or not cfg.output:
        raise ConfigError("--coder CODER and --output DIR are required")
    t0 = time.perf_counter()
    refuse_existing(cfg.output, overwrite=False, what="examples")
    m = write_examples(spark, cfg, cfg.output)
    m["seconds_total"] = round(time.perf_counter() - t0, 3)
    return m
