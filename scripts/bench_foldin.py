"""Cost of folding in 1% new events vs a full embed, on the table of scripts/bench.py, in one run.

    python scripts/bench_foldin.py --events 1000000 --repeats 3
    python scripts/bench_foldin.py --events 10000000 --repeats 2 --conf spark.driver.memory=6g --profile

The bench generator's table (power-law users and items, ``scripts/bench.py``'s ``generate``) is split by
user: the users holding the first ~``--new-share`` of the events (seeded) are the new events, a tenth of
their events renamed to items no run has seen; the rest is the known part. Each step runs as a whole
process, alternating, ``--repeats`` times:

- ``embed``: ``spark-cleora embed`` of the known part (dim, iterations as the bench: 256, 4);
- ``fold-in``: ``spark-cleora fold-in`` of the new events into that embedding (``--fold-iterations``).

Reported per size: medians of the process wall time, of the time inside the job (embed: ``seconds_total``
of its ``_run.json``, output written; fold-in: ``seconds`` of its report, before the write), the
fold-in/embed ratios, the peak RSS of each process tree (JVM + Python workers) and the fold-in's own
stage times. ``--profile``: one more fold-in with the Spark event log (not timed): seconds, tasks and
bytes read per Spark job, by the job descriptions the fold-in sets.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from scripts.bench import generate, run_process  # noqa: E402  (the bench's own generator and process timer)


def split(path: str, work: str, n: int, new_share: float, seed: int = 0) -> dict:
    """Write ``old_N.parquet`` (known part) and ``new_N.parquet`` (new events) beside ``path``."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    old_path, new_path = os.path.join(work, f"old_{n}.parquet"), os.path.join(work, f"new_{n}.parquet")
    meta_path = os.path.join(work, f"split_{n}_{new_share}.json")
    if os.path.exists(meta_path) and os.path.exists(old_path) and os.path.exists(new_path):
        with open(meta_path) as fh:
            return json.load(fh)
    t = pq.read_table(path)
    user = t.column("user").to_numpy(zero_copy_only=False)
    users, counts = np.unique(user, return_counts=True)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(users))
    cum = np.cumsum(counts[order])
    new_users = users[order[: int(np.searchsorted(cum, n * new_share)) + 1]]
    is_new = pc.is_in(t.column("user"), value_set=pa.array(new_users))
    old_t, new_t = t.filter(pc.invert(is_new)), t.filter(is_new)
    items = new_t.column("item").to_numpy(zero_copy_only=False).astype(object)
    renamed = rng.random(len(items)) < 0.1
    items[renamed] = np.array(["new_" + i for i in items[renamed]], dtype=object)
    new_t = new_t.set_column(new_t.schema.get_field_index("item"), "item", pa.array(items.tolist(), pa.string()))
    pq.write_table(old_t, old_path, row_group_size=1 << 20)
    pq.write_table(new_t, new_path)
    meta = {"events": t.num_rows, "known_events": old_t.num_rows, "new_events": new_t.num_rows,
            "new_users": len(new_users), "new_item_events": int(renamed.sum()),
            "new_item_names": len(set(items[renamed].tolist()))}
    with open(meta_path, "w") as fh:
        json.dump(meta, fh)
    return meta


def _spark_args(args, event_dir: str | None = None) -> list[str]:
    out = ["--master", f"local[{args.cores}]", "--conf", "spark.ui.enabled=false"]
    for c in args.conf:
        out += ["--conf", c]
    if event_dir:
        out += ["--conf", "spark.eventLog.enabled=true", "--conf", f"spark.eventLog.dir=file://{event_dir}",
                "--conf", "spark.eventLog.compress=false", "--conf", "spark.eventLog.rolling.enabled=false"]
    return out


def run_embed(args, old_path: str, emb: str) -> dict:
    cmd = [sys.executable, "-m", "spark_cleora.cli", "embed", old_path, "--hyperedge", "user", "--entity", "item",
           "--dim", str(args.dim), "--iterations", str(args.iterations), "--output", emb, *_spark_args(args)]
    elapsed, peak, _, _ = run_process(cmd, dict(os.environ, PYSPARK_PYTHON=sys.executable))
    with open(os.path.join(emb, "_run.json")) as fh:
        rep = json.load(fh)
    return {"seconds": round(elapsed, 1), "seconds_in_job": rep["seconds_total"], "peak_rss_mb": round(peak / 2**20),
            "engine": rep.get("engine"), "entities": rep.get("entities")}


def run_fold_in(args, emb: str, new_path: str, out: str, event_dir: str | None = None) -> dict:
    cmd = [sys.executable, "-m", "spark_cleora.cli", "fold-in", "--embeddings", emb, "--events", new_path,
           "--iterations", str(args.fold_iterations), "--output", out, *_spark_args(args, event_dir)]
    elapsed, peak, _, _ = run_process(cmd, dict(os.environ, PYSPARK_PYTHON=sys.executable))
    with open(os.path.join(out, "_run.json")) as fh:
        rep = json.load(fh)["fold_in"]
    return {"seconds": round(elapsed, 1), "seconds_in_job": rep["seconds"], "peak_rss_mb": round(peak / 2**20),
            "report": rep}


def _log_events(event_dir: str):
    """The job start/end and task end events of a Spark event log directory, parsed."""
    kinds = ('"SparkListenerJobStart"', '"SparkListenerJobEnd"', '"SparkListenerTaskEnd"')
    files = [f for f in glob.glob(os.path.join(event_dir, "**", "*"), recursive=True) if os.path.isfile(f)]
    for f in files:
        with open(f, encoding="utf-8", errors="replace") as fh:
            yield from (json.loads(line) for line in fh if any(k in line[:40] for k in kinds))


def job_times(event_dir: str) -> list[dict]:
    """Per Spark job of the event log: description, seconds, tasks, bytes read from files and shuffles."""
    jobs: dict[int, dict] = {}
    stage_job: dict[int, int] = {}
    for ev in _log_events(event_dir):
        kind = ev["Event"]
        if kind == "SparkListenerJobStart":
            props = ev.get("Properties") or {}
            jobs[ev["Job ID"]] = {"job": ev["Job ID"], "start": ev["Submission Time"],
                                  "description": (props.get("spark.job.description") or "")[:70],
                                  "tasks": 0, "input_mb": 0.0, "shuffle_read_mb": 0.0}
            stage_job.update((s, ev["Job ID"]) for s in ev.get("Stage IDs", []))
        elif kind == "SparkListenerJobEnd" and ev["Job ID"] in jobs:
            j = jobs[ev["Job ID"]]
            j["seconds"] = round((ev["Completion Time"] - j["start"]) / 1e3, 2)
        elif kind == "SparkListenerTaskEnd" and stage_job.get(ev["Stage ID"]) in jobs:
            j = jobs[stage_job[ev["Stage ID"]]]
            m = ev.get("Task Metrics") or {}
            sr = m.get("Shuffle Read Metrics") or {}
            j["tasks"] += 1
            j["input_mb"] += int((m.get("Input Metrics") or {}).get("Bytes Read", 0)) / 2**20
            j["shuffle_read_mb"] += (int(sr.get("Remote Bytes Read", 0)) + int(sr.get("Local Bytes Read", 0))) / 2**20
    out = sorted(jobs.values(), key=lambda j: j["job"])
    for j in out:
        j["input_mb"], j["shuffle_read_mb"] = round(j["input_mb"], 1), round(j["shuffle_read_mb"], 1)
        j.pop("start")
    return out


def _median(runs: list[dict], key: str) -> float:
    return round(statistics.median(r[key] for r in runs), 1)


def bench_size(args, n: int) -> dict:
    work = args.workdir
    data = os.path.join(work, f"events_{n}.parquet")
    if not os.path.exists(data):
        print(f"  generating {data}", file=sys.stderr)
        generate(data, n)
    meta = split(data, work, n, args.new_share)
    print(f"  {n:,} events: {meta}", file=sys.stderr)
    old_path, new_path = os.path.join(work, f"old_{n}.parquet"), os.path.join(work, f"new_{n}.parquet")
    emb, folded = os.path.join(work, f"emb_{n}"), os.path.join(work, f"folded_{n}")
    runs: dict[str, list[dict]] = {"embed": [], "fold-in": []}
    for r in range(args.repeats):
        # the first fold-in needs an embedding: embed first, then alternate
        order = ["embed", "fold-in"] if r % 2 == 0 or not os.path.exists(os.path.join(emb, "_run.json")) \
            else ["fold-in", "embed"]
        for step in order:
            res = run_embed(args, old_path, emb) if step == "embed" else run_fold_in(args, emb, new_path, folded)
            runs[step].append(res)
            print(f"  {n:>10,} events  {step:8s} run {r + 1}: {res['seconds']:7.1f}s (in the job "
                  f"{res['seconds_in_job']:.1f}s), peak {res['peak_rss_mb']} MB", file=sys.stderr)
    row = {**meta, "runs": runs}
    for step, rs in runs.items():
        row[step] = {"median_seconds": _median(rs, "seconds"), "median_seconds_in_job": _median(rs, "seconds_in_job"),
                     "median_peak_rss_mb": _median(rs, "peak_rss_mb")}
    row["ratio"] = round(row["fold-in"]["median_seconds"] / row["embed"]["median_seconds"], 3)
    row["ratio_in_job"] = round(row["fold-in"]["median_seconds_in_job"] / row["embed"]["median_seconds_in_job"], 3)
    rep = runs["fold-in"][-1]["report"]
    row["fold_in_stages"] = {k: rep.get(k) for k in (
        "engine", "seconds_graph", "seconds_to_start", "prepare_seconds", "iteration_seconds", "known_neighbours",
        "folded_in", "unreached", "memberships")}
    if args.profile:
        events = os.path.join(work, f"eventlog_{n}")
        shutil.rmtree(events, ignore_errors=True)
        os.makedirs(events)
        run_fold_in(args, emb, new_path, folded, event_dir=events)
        row["fold_in_jobs"] = job_times(events)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", default="1000000", help="comma-separated table sizes")
    ap.add_argument("--new-share", type=float, default=0.01, help="share of the events that are new (default 0.01)")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--iterations", type=int, default=4, help="embed iterations (the bench's 4)")
    ap.add_argument("--fold-iterations", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE", help="Spark configuration (both steps)")
    ap.add_argument("--profile", action="store_true", help="one more fold-in with the Spark event log (not timed)")
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "spark_cleora_bench_foldin"))
    ap.add_argument("--json")
    args = ap.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    results = []
    for n in [int(x) for x in args.events.split(",")]:
        results.append(bench_size(args, n))
        if args.json:
            with open(args.json, "w") as fh:
                json.dump({"machine": {"cores": os.cpu_count(), "python": platform.python_version()},
                           "args": vars(args), "results": results}, fh, indent=2)
    print(f"\n{os.cpu_count()} cores; dim {args.dim}, embed {args.iterations} iterations, fold-in "
          f"{args.fold_iterations}; Spark local[{args.cores}] {' '.join(args.conf)}")
    print(f"{'events':>12} {'new events':>10} {'embed s':>8} {'fold-in s':>9} {'ratio':>6} "
          f"{'in job: embed':>13} {'fold-in':>8} {'ratio':>6} {'peak MB embed':>13} {'fold-in':>8}")
    for r in results:
        e, f = r["embed"], r["fold-in"]
        print(f"{r['events']:>12,} {r['new_events']:>10,} {e['median_seconds']:>8.1f} {f['median_seconds']:>9.1f} "
              f"{r['ratio']:>6.2f} {e['median_seconds_in_job']:>13.1f} {f['median_seconds_in_job']:>8.1f} "
              f"{r['ratio_in_job']:>6.2f} {e['median_peak_rss_mb']:>13.0f} {f['median_peak_rss_mb']:>8.0f}")
    for r in results:
        print(f"{r['events']:>12,} fold-in stages (last run): {r['fold_in_stages']}")
        for j in r.get("fold_in_jobs", []):
            print(f"    job {j['job']:>3} {j.get('seconds', float('nan')):6.2f}s {j['tasks']:>4} tasks "
                  f"input {j['input_mb']:8.1f} MB shuffle {j['shuffle_read_mb']:7.1f} MB  {j['description']}")


if __name__ == "__main__":
    main()
