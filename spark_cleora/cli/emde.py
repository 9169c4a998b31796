"""``spark-cleora emde fit|sketch|recommend|similar-customers|examples|train``.

Options come from defaults <- the ``[emde.<step>]`` table of ``--config FILE`` <- command-line flags.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from ..errors import ConfigError
from ..emde.config import (
    BIAS_MODES,
    DECAY_ANCHORS,
    DISTRIBUTORS,
    SCHEDULES,
    SCORINGS,
    TABLE_FORMATS,
    CodeConfig,
    FitConfig,
    RecommendConfig,
    SimilarCustomersConfig,
    SketchConfig,
    TrainConfig,
    load_emde_toml,
)
from ..emde.store import guarded_output

EXAMPLES = """\
examples:
  spark-cleora embed events/ --hyperedge user_id --entity item_id --dim 256 --iterations 3 --output out/emb
  spark-cleora emde fit --embeddings out/emb --depth 10 --bits 7 --seed 0 --output out/coder
  # new items (e.g. spark-cleora fold-in output) coded with the same coder, no refit
  spark-cleora emde code --coder out/coder --embeddings out/emb-new --output out/coder-2
  spark-cleora emde sketch --coder out/coder --events events/ --customer user_id --item item_id \\
      --timestamp ts --half-life 86400 --output out/sketches
  # next day: decay yesterday's sketches and add only the new events
  spark-cleora emde sketch --coder out/coder --events events/ --customer user_id --item item_id \\
      --timestamp ts --half-life 86400 --previous out/sketches --output out/sketches-2
  spark-cleora emde recommend --coder out/coder --sketches out/sketches --k 10 \\
      --exclude-seen --events events/ --customer user_id --item item_id --output out/recs
  spark-cleora emde similar-customers --sketches out/sketches --k 10 --output out/lookalikes
  # the trained model (pip install 'spark-cleora[model]')
  spark-cleora emde train --coder out/coder --events events/ --customer user_id --item item_id \
      --timestamp ts --half-life 86400 --session-gap 1800 --epochs 5 --output out/model
  spark-cleora emde recommend --model out/model --events events/ --customer user_id --item item_id \
      --timestamp ts --k 10 --exclude-seen --output out/model-recs
"""

_NOT_CONFIG = {"master", "remote", "conf", "log_level", "config", "command", "handler", "emde_step", "json"}


def _config(ns: argparse.Namespace, step: str, cls: type) -> Any:
    values: dict[str, Any] = {}
    if getattr(ns, "config", None):
        values.update(load_emde_toml(ns.config, step, cls))
    values.update({k: v for k, v in vars(ns).items() if k not in _NOT_CONFIG})
    for key in ("embeddings", "events", "customers", "event_features", "source_depths"):
        if key in values and values[key] is not None:
            values[key] = tuple(values[key])
    return cls(**values)


def _common(p: argparse.ArgumentParser) -> None:
    from ..options import add_spark_options

    p.add_argument("--config", help="TOML file; its [emde.<step>] table supplies options (flags override)")
    p.add_argument("--json", action="store_true", default=False, help="print the manifest as JSON")
    add_spark_options(p)


def _events_options(p: argparse.ArgumentParser, *, required_text: str) -> None:
    g = p.add_argument_group("events")
    g.add_argument("--events", nargs="+", metavar="PATH", help=f"event table(s) {required_text}")
    g.add_argument("--events-format", choices=list(TABLE_FORMATS), help="parquet (default), csv/tsv with a header, table")
    g.add_argument("--customer", help="customer (or session) column")
    g.add_argument("--item", help="item column")


def _scoring_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--k", type=int, help="results per customer (default 10)")
    p.add_argument("--batch-size", type=int, help="customers scored together in one task (default 1024)")
    p.add_argument("--chunk-size", type=int, help="candidates per chunk (default 20000)")


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``emde`` and its steps to the ``spark-cleora`` subcommands."""
    S = argparse.SUPPRESS
    p = sub.add_parser("emde", help="EMDE: coder, customer sketches, recommendations, look-alikes",
                       description="EMDE (Efficient Manifold Density Estimator) on Spark.",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    esub = p.add_subparsers(dest="emde_step", metavar="STEP")
    esub.required = True

    f = esub.add_parser("fit", argument_default=S, help="fit the DLSH coder on item embeddings and code every item",
                        description="Fit density-dependent LSH (N partitionings x K bits per source); writes "
                                    "CODER/params, CODER/codes (item, codes) and CODER/manifest.json.")
    f.add_argument("--embeddings", nargs="+", metavar="DIR", help="embedding sources (entity, embedding Parquet)")
    f.add_argument("--output", "-o", metavar="CODER", help="coder directory (written atomically)")
    f.add_argument("--depth", type=int, help="N: partitionings per source (default 10)")
    f.add_argument("--bits", type=int, help="K: hyperplanes per partitioning, 2**K buckets (default 7)")
    f.add_argument("--seed", type=int, help="seed of the random directions (default 0)")
    f.add_argument("--bias", choices=list(BIAS_MODES), help="median (default) or random-quantile (the paper's variant)")
    f.add_argument("--no-standardize", dest="standardize", action="store_false", help="project raw embeddings")
    f.add_argument("--fit-sample", type=int, metavar="N", help="fit on a seeded sample of about N items per source")
    f.add_argument("--column", help="only embedding rows of this input column")
    f.add_argument("--quantile-accuracy", type=int, help="percentile_approx accuracy (default 10000; exact up to it)")
    f.add_argument("--source-depth", dest="source_depths", type=int, nargs="+", metavar="N",
                   help="N per embedding source (default --depth for each)")
    f.add_argument("--random-source", action="store_true",
                   help="add a source of seeded random vectors, one per item (item-identity codes)")
    f.add_argument("--overwrite", action="store_true", help="replace an existing coder")
    _common(f)
    f.set_defaults(handler=_run_fit)

    c = esub.add_parser("code", argument_default=S, help="code new items with a fitted coder (no refit)",
                        description="Code the items of new embeddings (e.g. spark-cleora fold-in output) with a "
                                    "fitted coder as it is; writes a coder with the same parameters and coder_id "
                                    "whose codes add the items it lacked (coded items keep their codes).")
    c.add_argument("--coder", help="coder directory (emde fit or emde code)")
    c.add_argument("--embeddings", nargs="+", metavar="DIR", help="one embeddings table per coder source")
    c.add_argument("--output", "-o", metavar="CODER", help="the extended coder directory (written atomically)")
    c.add_argument("--column", help="only embedding rows of this input column")
    c.add_argument("--overwrite", action="store_true", help="replace an existing directory at --output")
    _common(c)
    c.set_defaults(handler=_run_code)

    s = esub.add_parser("sketch", argument_default=S, help="decayed customer sketches from events",
                        description="Sum each customer's events' one-hot item codes, weighted and decayed; "
                                    "writes customer, idx, val, as_of, n_events (sparse) as Parquet.")
    s.add_argument("--coder", help="coder directory (emde fit)")
    s.add_argument("--output", "-o", help="sketch directory (written atomically)")
    _events_options(s, required_text="(required)")
    s.add_argument("--timestamp", help="event time column: epoch seconds or a timestamp")
    s.add_argument("--weight", help="non-negative event weight column (default 1)")
    s.add_argument("--half-life", type=float, metavar="SECONDS", help="decay 0.5 ** (age / half-life); none without it")
    s.add_argument("--as-of", metavar="TIME", help="epoch seconds or timestamp; later events are excluded "
                                                   "(default: the newest event)")
    s.add_argument("--decay-anchor", choices=list(DECAY_ANCHORS),
                   help="decay to --as-of (default) or to each customer's newest event (last-event)")
    s.add_argument("--previous", metavar="DIR", help="earlier sketches to decay and extend with newer events")
    _common(s)
    s.set_defaults(handler=_run_sketch)

    r = esub.add_parser("recommend", argument_default=S, help="top-k items per customer from its sketch",
                        description="Score every candidate item from each customer's sketch; writes "
                                    "customer, items, scores as Parquet.")
    r.add_argument("--coder", help="coder directory (the one the sketches were built with)")
    r.add_argument("--sketches", help="sketch directory (emde sketch)")
    r.add_argument("--output", "-o", help="output directory (written atomically)")
    _scoring_options(r)
    r.add_argument("--scoring", choices=list(SCORINGS), help="popularity (default) or geometric decoder")
    r.add_argument("--sketch-weight", type=float, help="popularity decoder: weight of the sketch evidence (0.5)")
    r.add_argument("--eps", type=float, help="added to normalised bucket mass before the log (1e-6)")
    r.add_argument("--popularity-smoothing", type=float, help="pseudo-count added to every item's popularity (0)")
    r.add_argument("--exclude-seen", action="store_true", help="never recommend items in the customer's --events")
    _events_options(r, required_text="(for --exclude-seen)")
    r.add_argument("--candidates", metavar="PATH", help="Parquet/CSV with an item column: score only these")
    g = r.add_argument_group("trained model (instead of --sketches)")
    g.add_argument("--model", metavar="MODEL", help="model directory (emde train); inputs are built from --events")
    g.add_argument("--timestamp", help="event time column")
    g.add_argument("--weight", help="non-negative event weight column (as in training)")
    g.add_argument("--as-of", metavar="TIME", help="prediction time: later events are ignored (default: newest event)")
    g.add_argument("--decay-anchor", choices=list(DECAY_ANCHORS), help="must be the model's (checked)")
    g.add_argument("--customer-features", metavar="TABLE", help="the model's customer feature table")
    g.add_argument("--model-scoring", choices=["log-prob", "popularity"],
                   help="popularity-corrected (default) or the sum of bucket log-probabilities")
    g.add_argument("--model-sketch-weight", type=float,
                   help="popularity scoring: weight of the predicted sketch against item popularity (2.0)")
    _common(r)
    r.set_defaults(handler=_run_recommend)

    c = esub.add_parser("similar-customers", argument_default=S, help="'people like you': top-k similar customers",
                        description="The k customers with the most similar sketches (per-partitioning cosine).")
    c.add_argument("--sketches", help="sketch directory (emde sketch)")
    c.add_argument("--output", "-o", help="output directory (written atomically)")
    c.add_argument("--coder", help="optional: check the sketches were built with this coder")
    _scoring_options(c)
    c.add_argument("--customer", dest="customers", action="append", help="only for this customer (repeatable)")
    c.add_argument("--queries", metavar="PATH", help="Parquet with a customer column: only for these")
    _common(c)
    c.set_defaults(handler=_run_similar)

    x = esub.add_parser("examples", argument_default=S, help="training examples of the EMDE model",
                        description="Per customer and target event: input sketches from strictly earlier events, "
                                    "the target sketch, context; Parquet partitioned by split (train/val).")
    _example_options(x)
    x.add_argument("--output", "-o", metavar="DIR", help="examples directory (written atomically)")
    _common(x)
    x.set_defaults(handler=_run_examples)

    t = esub.add_parser("train", argument_default=S, help="train the EMDE model (PyTorch, TorchDistributor)",
                        description="Build examples on Spark, train the residual feed-forward network with "
                                    "pyspark.ml.torch.distributor.TorchDistributor, write MODEL atomically. "
                                    "Needs pip install 'spark-cleora[model]'.")
    _example_options(t)
    t.add_argument("--examples", metavar="DIR", help="examples written by emde examples (instead of --events)")
    t.add_argument("--output", "-o", metavar="MODEL", help="model directory (written atomically)")
    m = t.add_argument_group("model and training")
    m.add_argument("--hidden", type=int, help="hidden width (default 1024; the paper used ~3000)")
    m.add_argument("--layers", type=int, help="hidden layers (default 3)")
    m.add_argument("--embedding-dim", type=int, help="embedding size per categorical feature (default 8)")
    m.add_argument("--epochs", type=int, help="epochs (default 5)")
    m.add_argument("--batch-size", type=int, help="examples per step and process (default 256)")
    m.add_argument("--lr", type=float, help="AdamW learning rate (default 0.004)")
    m.add_argument("--weight-decay", type=float, help="AdamW weight decay (default 0.01)")
    m.add_argument("--schedule", choices=list(SCHEDULES), help="step (x gamma per epoch, default), cosine, constant")
    m.add_argument("--gamma", type=float, help="step schedule factor (default 0.5)")
    m.add_argument("--patience", type=int, help="early stopping: epochs without a lower validation loss (2)")
    m.add_argument("--recall-k", type=int, help="validation Recall@k logged per epoch (default 20)")
    m.add_argument("--no-context", dest="context", action="store_false", help="no hour/day-of-week features")
    m.add_argument("--max-vocabulary", type=int, help="values kept per categorical feature (default 1000)")
    m.add_argument("--processes", type=int, help="TorchDistributor processes (default 1)")
    m.add_argument("--distributor", choices=list(DISTRIBUTORS), help="torch (TorchDistributor, default) or none")
    m.add_argument("--threads", type=int, help="torch threads per process (default cores / processes)")
    m.add_argument("--work-dir", metavar="DIR", help="examples and checkpoints (default MODEL.work; resumable)")
    m.add_argument("--keep-work", action="store_true", help="keep the work directory after success")
    m.add_argument("--overwrite", action="store_true", help="replace an existing model")
    _common(t)
    t.set_defaults(handler=_run_train)


def _example_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--coder", help="coder directory (emde fit)")
    _events_options(p, required_text="(required)")
    g = p.add_argument_group("examples")
    g.add_argument("--timestamp", help="event time column (required)")
    g.add_argument("--weight", help="non-negative event weight column (default 1)")
    g.add_argument("--half-life", type=float, metavar="SECONDS", help="decay of the input sketches (none without it)")
    g.add_argument("--session-gap", type=float, metavar="SECONDS",
                   help="short-term input: the current session (gaps <= SECONDS)")
    g.add_argument("--recent", type=int, metavar="N", help="short-term input: the newest N events (default 1)")
    g.add_argument("--target-window", type=int, metavar="N", help="target: the next N items, decayed (default 1)")
    g.add_argument("--decay-anchor", choices=list(DECAY_ANCHORS), help="last-event (default) or as-of (target time)")
    g.add_argument("--max-examples", type=int, metavar="N", help="seeded sample of about N target events")
    g.add_argument("--examples-per-customer", type=int, metavar="N", help="at most N targets per customer")
    g.add_argument("--validation-fraction", type=float, help="newest fraction of time for validation (0.1)")
    g.add_argument("--seed", type=int, help="seed of sampling, initialisation and order (default 0)")
    g.add_argument("--event-features", nargs="+", metavar="COL", help="columns of the newest input event")
    g.add_argument("--customer-features", metavar="TABLE", help="Parquet/CSV keyed by the --customer column")


def _finish(ns: argparse.Namespace, manifest: dict[str, Any], summary: str) -> int:
    if ns.json:
        print(json.dumps(manifest, sort_keys=True, default=str))
    else:
        print(summary)
    return 0


def _run_guarded(ns: argparse.Namespace, cfg: Any, step: Callable[[Any, Any], dict[str, Any]]) -> dict[str, Any]:
    """``step(spark, cfg)`` with the step's ``--output`` checked (local paths: before Spark starts) and
    locked while it runs; on a non-local default filesystem its paths are qualified first."""
    from ..options import session_for_paths, spark_from_args
    from ..emde.store import OUTPUT_FIELDS, input_paths, qualified_config

    spark = session_for_paths(ns, [*input_paths(cfg), *(getattr(cfg, f, None) for f in OUTPUT_FIELDS)])
    if spark is not None:
        cfg = qualified_config(spark, cfg)
    with guarded_output(cfg):
        return step(spark or spark_from_args(ns), cfg)


def _run_fit(ns: argparse.Namespace) -> int:
    from ..emde.coder import run_fit

    cfg = _config(ns, "fit", FitConfig)
    if not -(2**63) <= cfg.seed < 2**63:  # Spark's sample seed is a long: refuse before any work
        raise ConfigError(f"--seed must fit a 64-bit signed integer; got {cfg.seed}")
    m = _run_guarded(ns, cfg, run_fit)
    randoms = m.get("items_random_per_source") or []
    extra = f", coded from random vectors per source: {randoms}" if any(randoms) else ""
    return _finish(ns, m, f"coder {m['coder_id']}: {cfg.output} ({m['items_coded']} items x {m['n_codes']} codes, "
                          f"ids < {m['length']}{extra}; {m['seconds_total']:.1f}s)")


def _run_code(ns: argparse.Namespace) -> int:
    from ..emde.coder import run_code

    cfg = _config(ns, "code", CodeConfig)
    m = _run_guarded(ns, cfg, run_code)
    return _finish(ns, m, f"coder {m['coder_id']}: {cfg.output} ({m['items_added']} new items coded, "
                          f"{m['items_coded']} in all; {m['seconds_total']:.1f}s)")


def _run_sketch(ns: argparse.Namespace) -> int:
    from ..emde.sketch import run_sketch

    cfg = _config(ns, "sketch", SketchConfig)
    m = _run_guarded(ns, cfg, run_sketch)
    rej = ", ".join(f"{k} {v}" for k, v in m["rejected"].items()) or "none"
    return _finish(ns, m, f"sketches: {cfg.output} ({m['customers']} customers from {m['accepted']} of "
                          f"{m['input_rows']} events; rejected: {rej}; as-of {m['cutoff']}; {m['seconds_total']:.1f}s)")


def _run_recommend(ns: argparse.Namespace) -> int:
    from ..emde.recommend import run_recommend

    cfg = _config(ns, "recommend", RecommendConfig)
    if cfg.model:
        from ..emde.model import require_torch

        require_torch()
    m = _run_guarded(ns, cfg, run_recommend)
    return _finish(ns, m, f"recommendations: {cfg.output} ({m['customers']} customers x top {cfg.k} of "
                          f"{m['candidates']} candidates, {'model ' + cfg.model_scoring if cfg.model else cfg.scoring} decoder; {m['seconds_total']:.1f}s)")


def _run_examples(ns: argparse.Namespace) -> int:
    from ..emde.train import run_examples

    cfg = _config(ns, "examples", TrainConfig)
    m = _run_guarded(ns, cfg, run_examples)
    return _finish(ns, m, f"examples: {cfg.output} ({m['train_examples']} train, {m['val_examples']} validation; "
                          f"events rejected for their weight: {m.get('events_rejected_weight', 0)}; "
                          f"{m['seconds_total']:.1f}s)")


def _run_train(ns: argparse.Namespace) -> int:
    from ..emde.model import require_torch
    from ..emde.train import train_model

    require_torch()
    cfg = _config(ns, "train", TrainConfig)
    m = _run_guarded(ns, cfg, train_model)
    best = m["metrics"][m["best_epoch"] - 1]
    k = cfg.recall_k
    val = "" if best.get("val_loss") is None else f", val loss {best['val_loss']:.4f}, Recall@{k} {best[f'val_recall@{k}']:.4f}"
    return _finish(ns, m, f"model: {cfg.output} (best epoch {m['best_epoch']} of {len(m['metrics'])}{val}; "
                          f"{m['seconds_total']:.1f}s)")


def _run_similar(ns: argparse.Namespace) -> int:
    from ..emde.similar import run_similar_customers

    cfg = _config(ns, "similar-customers", SimilarCustomersConfig)
    m = _run_guarded(ns, cfg, run_similar_customers)
    return _finish(ns, m, f"similar customers: {cfg.output} ({m['customers']} customers x top {cfg.k}; "
                          f"{m['seconds_total']:.1f}s)")
