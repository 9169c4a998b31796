"""Recommendation quality report: runs the session and leave-last-out evaluations, writes the Markdown page.

    python scripts/recsys_report.py --data-dir DIR --out docs/quality-recommendation.md

DIR (default ``$SPARK_CLEORA_SHARED_DATA``) holds ``yoochoose-rsc15-100k/`` (session-rec's prepared
RSC15 sample), ``diginetica-sample/`` (SR-GNN's DIGINETICA sample) and ``ml-100k/``. Every number
comes from a ``spark-cleora evaluate ...`` command, run as a subprocess and printed in the page with
its JSON report's parameters:

* ``rsc15``: ``evaluate session`` train_full -> test (the reported numbers); ``rsc15-valid``:
  train_tr -> train_valid, where EMDE's half-life is chosen (``--emde-half-lives``); the test is
  never used for that choice.
* ``diginetica``: the sample split as SR-GNN's preprocessing does (``split_diginetica``), then
  ``evaluate session``.
* ``ml-100k``: ``evaluate recommend`` (leave-last-out) with ALS, coverage@k and seen@k.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
MACHINE = "2 cores, 24 GiB, Python 3.11, OpenJDK 17"
RSC15 = "yoochoose-rsc15-100k/yoochoose-clicks-100k_{}.txt"
DIGINETICA = "diginetica-sample/sample_train-item-views.csv"
SESSION_COLS = ["--session", "SessionId", "--item", "ItemId", "--timestamp", "Time"]


METHODS_TEXT = [
    "Session methods (`spark-cleora evaluate session`; all on the same prefixes, lists ranked by score, ties "
    "by item id; no method removes the prefix's own items):", "",
    "- **POP**: the k items with the most training events.",
    "- **AR** (association rules): every ordered pair of distinct positions of one training session adds 1 "
    "to the rule x_p -> x_q; a prefix is scored by the rules of its last item. No pruning.",
    "- **SR** (sequential rules): pairs with x_q at most 10 steps after x_p add 1/(q - p); scored from the "
    "last item. No pruning.",
    "- **V-SKNN** (session kNN, session-rec's defaults): linear position weights pos/t on the prefix's "
    "items; from the training sessions sharing an item, the 500 most recent; cosine between the weighted "
    "prefix and the neighbour's item set; the 100 most similar; an item's score is the sum of the "
    "similarities of the neighbours holding it.",
    "- **CLEORA-KNN**: the items nearest the prefix's last item by cosine of Cleora embeddings of the "
    "training sessions (hyperedge = session; dim 256, 3 iterations).",
    "- **EMDE**: a coder (10 partitionings x 7 bits, seed 0) fitted on those embeddings; each prefix "
    "sketched with exponential decay to its last click; the popularity decoder (sketch weight 0.5) "
    "against the training popularity.",
    "",
    "HR@k: share of predictions whose next item is in the list; MRR@k: mean 1/rank (0 beyond k); "
    "coverage@k: distinct recommended items / distinct training items; seconds: the method's own Spark "
    "jobs (the shared embedding is timed once, apart). More methods plug in by name: a function from the "
    "training events and the prefixes to scored items, registered with "
    "`spark_cleora.evaluate.session_methods.register_method` (its module docstring has the interface).",
]


def split_diginetica(path: Path, out_dir: Path, *, test_days: int = 7, min_support: int = 5) -> dict[str, object]:
    """SR-GNN's DIGINETICA preprocessing: train/test TSV files (``SessionId``, ``ItemId``, ``Time``).

    Events ordered by ``timeframe`` within a session; a session's date is its latest ``eventdate``;
    sessions of length 1 dropped, then items seen fewer than ``min_support`` times, then sessions left
    shorter than 2; test = sessions dated after ``max date - test_days`` days, train = sessions dated
    before it (sessions on the split date itself are in neither, as in SR-GNN). ``Time`` = the date
    in epoch seconds + timeframe / 1000, so a session's events keep their order.
    """
    df = pd.read_csv(path, sep=";", dtype={"session_id": str, "item_id": str})
    df["Time"] = pd.to_datetime(df["eventdate"]).astype("int64") // 10**9 + df["timeframe"] / 1000.0
    df = df[df.groupby("session_id")["item_id"].transform("size") > 1]
    support = df["item_id"].map(df["item_id"].value_counts())
    df = df[support >= min_support]
    df = df[df.groupby("session_id")["item_id"].transform("size") >= 2]
    date = pd.to_datetime(df["eventdate"]).groupby(df["session_id"]).transform("max")
    split = date.max() - pd.Timedelta(days=test_days)
    out = df.rename(columns={"session_id": "SessionId", "item_id": "ItemId"})[["SessionId", "ItemId", "Time"]]
    out_dir.mkdir(parents=True, exist_ok=True)
    train, test = out[date < split], out[date > split]
    train.to_csv(out_dir / "train.tsv", sep="\t", index=False)
    test.to_csv(out_dir / "test.tsv", sep="\t", index=False)
    return {"split_date": str(split.date()), "test_days": test_days, "min_item_support": min_support,
            "train_events": len(train), "train_sessions": int(train["SessionId"].nunique()),
            "test_events": len(test), "test_sessions": int(test["SessionId"].nunique())}


def run(args: list[str], report: Path, master: str, reuse: bool = False,
        conf: tuple[str, ...] = ()) -> tuple[dict, str, float | None]:
    """Run one ``spark-cleora`` command; returns its JSON report, the command line and the wall seconds
    (``None`` when ``reuse`` took an existing report of the same command)."""
    cmd = ["spark-cleora", *args, "--report", str(report), "--master", master,
           *(x for c in conf for x in ("--conf", c))]
    if reuse and report.exists():
        return json.loads(report.read_text()), shlex.join(cmd), None
    t0 = time.perf_counter()
    exe = [str(Path(sys.executable).parent / "spark-cleora"), *cmd[1:]]
    print("$ " + shlex.join(cmd), file=sys.stderr, flush=True)
    subprocess.run(exe, check=True, cwd=ROOT)
    secs = time.perf_counter() - t0
    return json.loads(report.read_text()), shlex.join(cmd), secs


def session_table(rep: dict) -> list[str]:
    k = rep["protocol"]["k"]
    lines = [f"| method | HR@{k} | MRR@{k} | coverage@{k} | seconds |", "|---|---|---|---|---|"]
    order = ["POP", "AR", "SR", "V-SKNN", "CLEORA-KNN", "EMDE"]
    for name, m in sorted(rep["methods"].items(), key=lambda kv: (order + [kv[0]]).index(kv[0])):
        lines.append(f"| {name} | {m[f'HR@{k}']:.4f} | {m[f'MRR@{k}']:.4f} | {m[f'coverage@{k}']:.4f} | "
                     f"{m['seconds']:.0f} |")
    return lines


def _wall(wall: float | None) -> str:
    return f"{wall:.0f} s wall clock with Spark's start" if wall is not None else "wall clock not measured"


def session_facts(rep: dict, wall: float | None) -> list[str]:
    d = rep["data"]
    lines = [f"{rep['predictions']} predictions from {d['test_sessions_kept']} test sessions "
             f"({d['test_events_kept']} of {d['test_events']} test events kept); training: {d['train_events']} "
             f"events, {d['train_sessions']} sessions, {d['train_items']} items. Shared Cleora embedding "
             f"{rep['seconds'].get('embedding', 0):.0f} s, prefixes {rep['seconds']['prefixes']:.0f} s; "
             f"evaluation {rep['seconds_total']:.0f} s, {_wall(wall)}.", ""]
    lines.append("Parameters: " + "; ".join(
        f"**{name}** " + (", ".join(f"{p} {v}" for p, v in params.items()) or "none")
        for name, params in rep["parameters"].items()) + ".")
    if rep.get("options"):
        lines.append(f"Options given: {', '.join(f'{k}={v}' for k, v in rep['options'].items())}.")
    if rep.get("embedding"):
        lines.append(f"Cleora embedding of the training sessions: {rep['embedding']}.")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=os.environ.get("SPARK_CLEORA_SHARED_DATA"),
                    help="directory holding the datasets (default: $SPARK_CLEORA_SHARED_DATA)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "quality-recommendation.md"))
    ap.add_argument("--reports", default=None, help="keep the JSON reports here (default: a temporary directory)")
    ap.add_argument("--master", default="local[2]")
    ap.add_argument("--conf", nargs="*", default=[], metavar="KEY=VALUE",
                    help="Spark settings for every run, e.g. spark.driver.memory=2g")
    ap.add_argument("--reuse", action="store_true", help="take a report already in --reports instead of rerunning it")
    ap.add_argument("--sections", nargs="+", default=["rsc15", "diginetica", "ml-100k"],
                    choices=["rsc15", "diginetica", "ml-100k"])
    ap.add_argument("--emde-half-lives", type=float, nargs="+", default=[60.0, 600.0, 3600.0],
                    help="EMDE half-lives (s) tried on RSC15 train_tr -> train_valid (default 60 600 3600)")
    args = ap.parse_args(argv)
    if not args.data_dir:
        ap.error("give --data-dir DIR (or set SPARK_CLEORA_SHARED_DATA)")
    data = Path(args.data_dir)
    spark = (args.master, args.reuse, tuple(args.conf))
    reports = Path(args.reports or tempfile.mkdtemp(prefix="recsys_report_"))
    reports.mkdir(parents=True, exist_ok=True)
    today = dt.date.today().isoformat()
    md = ["# Recommendation quality", "",
          f"Measured {today} on {MACHINE} (Spark `local[2]`), with `python scripts/recsys_report.py "
          f"--data-dir DATA` (DATA: the folder holding the public datasets below). Each table comes from "
          f"the command printed above it (REPORTS: the script's --reports folder); the JSON report of each run "
          f"has every number and parameter. The seconds were measured while the 2 cores were shared with other "
          f"jobs (load average above 20), so they are upper bounds.", "",
          *METHODS_TEXT, ""]
    half_life = None
    if "rsc15" in args.sections:
        # EMDE's half-life: chosen on the validation split (train_tr -> train_valid), never on the test
        val_rows = []
        for h in args.emde_half_lives:
            rep, cmd, wall = run(["evaluate", "session", "--train", str(data / RSC15.format("train_tr")),
                                  "--test", str(data / RSC15.format("train_valid")), *SESSION_COLS,
                                  "--methods", "EMDE", "--option", f"emde_half_life={h:g}"],
                                 reports / f"rsc15_valid_hl{h:g}.json", *spark)
            val_rows.append((h, rep["methods"]["EMDE"], cmd))
        half_life = max(val_rows, key=lambda r: (r[1]["MRR@20"], r[1]["HR@20"]))[0]
        rep, cmd, wall = run(["evaluate", "session", "--train", str(data / RSC15.format("train_full")),
                              "--test", str(data / RSC15.format("test")), *SESSION_COLS,
                              "--option", f"emde_half_life={half_life:g}"], reports / "rsc15.json", *spark)
        md += ["## Session-based next item: RSC15 (YOOCHOOSE 100k sample)", "",
               "session-rec's prepared 100k-click sample of the RecSys Challenge 2015 clicks "
               "(`yoochoose-rsc15-100k/`): train_full (70,278 clicks) -> test (13,568 clicks, the next day). "
               "Protocol of `spark-cleora evaluate session` (session-rec's): test items unseen in training "
               "removed, sessions shorter than 2 dropped, every prefix predicts the next click; k = 20.", "",
               "```", cmd.replace(str(data), "DATA").replace(str(reports), "REPORTS"), "```", "", *session_table(rep), "", *session_facts(rep, wall), "",
               "EMDE's half-life, chosen on train_tr -> train_valid (MRR@20, then HR@20):", "",
               "| half-life (s) | HR@20 | MRR@20 |", "|---|---|---|",
               *[f"| {h:g} | {m['HR@20']:.4f} | {m['MRR@20']:.4f} |" for h, m, _ in val_rows], "",
               f"Chosen: {half_life:g} s. Validation command: `{val_rows[0][2].replace(str(data), 'DATA').replace(str(reports), 'REPORTS')}` "
               "(one per half-life).", ""]
    if "diginetica" in args.sections:
        split_dir = reports / "diginetica"
        facts = split_diginetica(data / DIGINETICA, split_dir)
        opts = ["--option", f"emde_half_life={half_life:g}"] if half_life else []
        rep, cmd, wall = run(["evaluate", "session", "--train", str(split_dir / "train.tsv"),
                              "--test", str(split_dir / "test.tsv"), *SESSION_COLS, *opts],
                             reports / "diginetica.json", *spark)
        md += ["## Session-based next item: DIGINETICA sample", "",
               "SR-GNN's 12,391-view sample of the CIKM Cup 2016 DIGINETICA item views "
               "(`diginetica-sample/`), split as SR-GNN's preprocessing does: sessions of length 1 dropped, "
               f"items seen fewer than {facts['min_item_support']} times dropped, then sessions shorter than 2; "
               f"test = the sessions of the last {facts['test_days']} days (dated after {facts['split_date']}), "
               f"training = the sessions before that date. {facts['train_events']} training events in "
               f"{facts['train_sessions']} sessions, {facts['test_events']} test events in "
               f"{facts['test_sessions']} sessions. Time = date + timeframe. The sample is small: with "
               f"{rep['predictions']} predictions, one standard error of HR@20 is about "
               f"{(0.25 / max(rep['predictions'], 1)) ** 0.5:.2f}; not comparable to published numbers on "
               "the full data.", "",
               "```", "python scripts/recsys_report.py --sections diginetica  # writes REPORTS/diginetica/{train,test}.tsv",
               cmd.replace(str(reports), "REPORTS"), "```", "",
               *session_table(rep), "", *session_facts(rep, wall), ""]
    if "ml-100k" in args.sections:
        rep, cmd, wall = run(["evaluate", "recommend", "--dataset", "ml-100k", "--data-dir", str(data), "--k", "10"],
                             reports / "ml100k.json", *spark)
        k = rep["protocol"]["k"]
        cols = [f"recall@{k}", f"ndcg@{k}", f"mrr@{k}", f"coverage@{k}", f"seen@{k}"]
        md += ["## Leave-last-out: MovieLens-100k", "",
               "`spark-cleora evaluate recommend`: each user's newest rating is the test item, the rest "
               f"trains; k = {k}; items the user rated are never recommended (so seen@{k} is 0).", "",
               "```", cmd.replace(str(data), "DATA").replace(str(reports), "REPORTS"), "```", "",
               "| method | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols),
               *[f"| {name} | " + " | ".join(f"{m[c]:.4f}" for c in cols) + " |" for name, m in rep["results"].items()],
               "", f"{rep['data']['test_customers']} test users; {rep['data']['train_events']} training events. "
               f"Seconds per step: {', '.join(f'{s} {v:g}' for s, v in rep['seconds'].items())}; "
               f"{_wall(wall)}.", "",
               f"Parameters: embedding {rep['embedding']}; EMDE {rep['emde']}; ALS {rep['als']}.", ""]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text("\n".join(md).rstrip() + "\n")
    os.replace(tmp, out)
    print(f"wrote {out} (reports in {reports})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
