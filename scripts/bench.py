"""Benchmark spark_cleora against pycleora on the same synthetic event table, in one run.

    python scripts/bench.py --events 1000000 --repeats 3            # generate + time both, alternating
    python scripts/bench.py --events 100000,1000000 --only spark     # growth curve of spark_cleora only
    python scripts/bench.py --hub-share 0.3 --events 1000000 --only spark   # a hub item in 30% of users
    python scripts/bench.py --events 10000000 --items-per-event 0.5 --item-zipf 0.8 --memory-cap-gb 5
        # 2.9M items: an embedding matrix (items x dim x 4 bytes x 2) larger than a 5 GiB machine
    python scripts/bench.py --events 1000000 --peer word2vec --peer-epochs 1,5 --peer-conf spark.driver.memory=4g
        # and the Spark peer: Spark ML Word2Vec (item2vec) with 1 and with 5 epochs, in the same rotation

Each tool runs as a whole process (Spark: `spark-cleora embed` with an embedded `local[N]`; pycleora:
a Python process that reads the same Parquet, builds the hypergraph, initialises and propagates), runs
alternate, and the table reports medians over repeats, the spark/pycleora ratio, the peak RSS of each
process tree (JVM + Python workers) and, for Spark, the engine, per-iteration times and, from one
extra run with the Spark event log (not timed: the log costs a second or two), shuffle bytes and task
skew. JSON goes to --json.

Generator: users with log-normal activity, items with Zipf(1.1) popularity (``--item-zipf``,
``--items-per-event``), optional hub item present in a given share of users, timestamps. Seeded,
written as Parquet (user, item, ts).

``--peer word2vec`` adds the Spark peer a user would pick instead: Spark ML's ``Word2Vec`` trained on
each hyperedge's items ordered by time (item2vec: one sentence per user), as a whole process of its
own (``local[N]``, read the Parquet, build the sentences, fit, write the item vectors as Parquet). Its
defaults (window 5, ``minCount`` 5, step 0.025) except ``vectorSize`` = ``--dim`` and ``numPartitions``
= ``--cores``; one run per ``--peer-epochs`` value (``maxIter``). The peers join the alternating
rotation, and the table gives each one's median and its ratio to spark_cleora's.

``--memory-cap-gb`` runs every process in a fresh cgroup with that memory limit (Linux, as root): a
smaller machine. spark_cleora's local defaults read the limit; a process the kernel kills for memory
is reported as out of memory, not timed.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

from spark_cleora.runtime.machine import memory_cgroups

PYCLEORA_SCRIPT = r"""
import sys, time, json
import numpy as np, pyarrow.parquet as pq
t0 = time.perf_counter()
path, dim, iters = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
trim = int(sys.argv[4])
tab = pq.read_table(path, columns=["user", "item"])
import pandas as pd
df = tab.to_pandas()
lines = df.groupby("user", sort=False)["item"].agg(" ".join).tolist()
t1 = time.perf_counter()
from pycleora import SparseMatrix
g = SparseMatrix.from_iterator(iter(lines), "complex::reflexive::item", hyperedge_trim_n=trim)
t2 = time.perf_counter()
e = g.initialize_deterministically(dim, 0)
for _ in range(iters):
    e = g.left_markov_propagate(e)
    e /= np.maximum(np.linalg.norm(e, ord=2, axis=-1, keepdims=True), 1e-10)
t3 = time.perf_counter()
np.save(sys.argv[5], e)
print(json.dumps({"read": t1 - t0, "graph": t2 - t1, "propagate": t3 - t2, "entities": len(g.entity_ids)}))
"""


WORD2VEC_SCRIPT = r"""
import sys, time, json
t0 = time.perf_counter()
path, dim, epochs, cores, min_count, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), \
    int(sys.argv[5]), sys.argv[6]
confs = [c.split("=", 1) for c in sys.argv[7:]]
from pyspark.sql import SparkSession, functions as F
from pyspark.ml.feature import Word2Vec
b = SparkSession.builder.master(f"local[{cores}]").config("spark.ui.enabled", "false")
for k, v in confs:
    b = b.config(k, v)
spark = b.getOrCreate()
t1 = time.perf_counter()
ev = spark.read.parquet(path)
# item2vec: one sentence per user, its items ordered by time
sentences = ev.groupBy("user").agg(F.sort_array(F.collect_list(F.struct("ts", "item"))).alias("s")) \
    .select(F.col("s.item").alias("items"))
w2v = Word2Vec(vectorSize=dim, maxIter=epochs, numPartitions=cores, minCount=min_count, seed=0,
               inputCol="items", outputCol="v")
model = w2v.fit(sentences)
t2 = time.perf_counter()
vectors = model.getVectors()
vectors.write.mode("overwrite").parquet(out)
n = spark.read.parquet(out).count()
t3 = time.perf_counter()
spark.stop()
print(json.dumps({"session": t1 - t0, "fit": t2 - t1, "write": t3 - t2, "entities": n}))
"""


def generate(path: str, n_events: int, *, seed: int = 0, hub_share: float = 0.0, users_per_event: float = 0.05,
             items_per_event: float = 0.05, item_zipf: float = 1.1) -> dict:
    """Seeded power-law event table as Parquet (user, item, ts)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    n_users = max(1, int(n_events * users_per_event))
    n_items = max(1, int(n_events * items_per_event))
    activity = rng.lognormal(0.0, 1.0, n_users)
    users = rng.choice(n_users, size=n_events, p=activity / activity.sum())
    ranks = np.arange(1, n_items + 1, dtype=np.float64)
    pop = 1.0 / ranks**item_zipf
    items = rng.choice(n_items, size=n_events, p=pop / pop.sum())
    if hub_share > 0:
        hub_users = np.flatnonzero(rng.random(n_users) < hub_share)
        users = np.concatenate([users, hub_users])
        items = np.concatenate([items, np.full(len(hub_users), -1)])
    ts = 1_700_000_000 + rng.integers(0, 86_400 * 90, size=len(users))
    table = pa.table({
        "user": pa.array([f"u{u}" for u in users]),
        "item": pa.array(["HUB" if i < 0 else f"i{i}" for i in items]),
        "ts": pa.array(ts, pa.int64()),
    })
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    pq.write_table(table, path, row_group_size=1 << 20)
    return {"events": len(users), "users": n_users, "items": n_items, "hub_share": hub_share,
            "items_seen": int(len(np.unique(items))), "item_zipf": item_zipf}


class RssSampler:
    """Peak resident memory of a process tree (sum over the process and its descendants), from /proc."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.pid, self.interval, self.peak = pid, interval, 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _tree(self) -> list[int]:
        children: dict[int, list[int]] = {}
        for stat in glob.glob("/proc/[0-9]*/stat"):
            try:
                with open(stat) as fh:
                    parts = fh.read().rsplit(")", 1)[1].split()
                children.setdefault(int(parts[1]), []).append(int(stat.split("/")[2]))
            except (OSError, IndexError, ValueError):
                continue
        out, todo = [], [self.pid]
        while todo:
            p = todo.pop()
            out.append(p)
            todo.extend(children.get(p, []))
        return out

    def _run(self) -> None:
        while not self._stop.is_set():
            total = 0
            for p in self._tree():
                try:
                    with open(f"/proc/{p}/status") as fh:
                        for line in fh:
                            if line.startswith("VmRSS:"):
                                total += int(line.split()[1]) * 1024
                except OSError:
                    pass
            self.peak = max(self.peak, total)
            self._stop.wait(self.interval)

    def stop(self) -> int:
        self._stop.set()
        self._t.join()
        return self.peak


class MemoryCap:
    """A fresh cgroup with a memory limit (v2 ``memory.max`` or v1 ``memory.limit_in_bytes``, no swap):
    a process run in it sees a machine with that much memory (spark_cleora's local defaults read the
    limit) and is killed by the kernel if it needs more. Linux, as root."""

    def __init__(self, gb: float) -> None:
        self.limit = int(gb * 2**30)
        v2 = os.path.exists("/sys/fs/cgroup/cgroup.controllers")
        mount = "/sys/fs/cgroup" if v2 else "/sys/fs/cgroup/memory"
        own = memory_cgroups().get("v2" if v2 else "v1", "/")
        parent = os.path.join(mount, own.strip("/"))  # under our own group: its limits still apply
        if not os.path.isdir(parent):
            parent = mount
        name = f"spark_cleora_bench_{os.getpid()}_{time.monotonic_ns()}"
        limits = {"memory.max": self.limit, "memory.swap.max": 0} if v2 else \
            {"memory.limit_in_bytes": self.limit, "memory.memsw.limit_in_bytes": self.limit}
        try:
            if v2:  # the memory controller must be enabled for the parent's children
                with open(os.path.join(parent, "cgroup.subtree_control"), "w") as fh:
                    fh.write("+memory")
            self.dir = os.path.join(parent, name)
            os.mkdir(self.dir)
            for key, value in limits.items():
                path = os.path.join(self.dir, key)
                if key.endswith("swap.max") or key.startswith("memory.memsw"):
                    if os.path.exists(path):  # no swap accounting on this kernel: nothing to limit
                        with open(path, "w") as fh:
                            fh.write(str(value))
                    continue
                with open(path, "w") as fh:
                    fh.write(str(value))
                with open(path) as fh:
                    if int(fh.read().strip()) > value:
                        raise OSError(f"{path} did not take the limit")
        except OSError as e:
            raise SystemExit(f"--memory-cap-gb needs a writable cgroup memory controller (Linux, root): {e}")
        self.events = os.path.join(self.dir, "memory.events" if v2 else "memory.oom_control")

    def wrap(self, cmd: list[str]) -> list[str]:
        """``cmd`` started inside the cgroup (the shell moves itself in, then execs)."""
        return ["sh", "-c", f'echo $$ > {self.dir}/cgroup.procs && exec "$@"', "sh", *cmd]

    def oom_kills(self) -> int:
        try:
            with open(self.events) as fh:
                for line in fh:
                    if line.startswith("oom_kill "):
                        return int(line.split()[1])
        except OSError:
            pass
        return 0

    def peak_bytes(self) -> int | None:
        """The cgroup's own high-water mark (RSS and page cache, shared pages counted once)."""
        for name in ("memory.peak", "memory.max_usage_in_bytes"):
            try:
                with open(os.path.join(self.dir, name)) as fh:
                    return int(fh.read().strip())
            except (OSError, ValueError):
                continue
        return None

    def close(self) -> None:
        for _ in range(50):  # the cgroup can be removed once its last process has exited
            try:
                os.rmdir(self.dir)
                return
            except OSError:
                time.sleep(0.1)
        print(f"warning: could not remove the cgroup {self.dir}", file=sys.stderr)


class OutOfMemory(RuntimeError):
    """A capped process was killed by the kernel's out-of-memory killer."""

    def __init__(self, elapsed: float, peak: int, detail: str) -> None:
        super().__init__(detail)
        self.elapsed, self.peak = elapsed, peak


def run_process(cmd: list[str], env: dict | None = None, cap_gb: float | None = None) -> tuple[float, int, str, str]:
    cap = MemoryCap(cap_gb) if cap_gb else None
    try:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cap.wrap(cmd) if cap else cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=env)
        sampler = RssSampler(proc.pid)
        out, err = proc.communicate()
        elapsed = time.perf_counter() - t0
        peak = sampler.stop()
        kills = cap.oom_kills() if cap else 0
        if cap:
            cap_peak = cap.peak_bytes()
            print(f"    cgroup high-water mark {(cap_peak or 0) / 2**20:.0f} MB of {cap.limit / 2**20:.0f} MB, "
                  f"{kills} out-of-memory kill(s)", file=sys.stderr)
    finally:
        if cap:
            cap.close()
    if proc.returncode != 0:
        if kills:
            what = "a Python process" if cmd[1:2] == ["-c"] else " ".join(cmd[:4])
            raise OutOfMemory(elapsed, peak, f"{what}: {kills} process(es) killed for memory under the "
                                             f"{cap_gb:g} GiB cap (exit {proc.returncode})")
        raise RuntimeError(f"{cmd[:3]} failed ({proc.returncode}):\n{err[-3000:]}")
    return elapsed, peak, out, err


def shuffle_bytes(event_dir: str) -> int:
    total = 0
    for f in glob.glob(os.path.join(event_dir, "**", "*"), recursive=True):
        if os.path.isdir(f):
            continue
        with open(f, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if '"SparkListenerTaskEnd"' not in line:
                    continue
                ev = json.loads(line)
                sw = (ev.get("Task Metrics") or {}).get("Shuffle Write Metrics") or {}
                total += int(sw.get("Shuffle Bytes Written", 0))
    return total


def task_skew(event_dir: str, min_tasks: int = 4) -> dict:
    """Straggler check from the event log: per stage with >= ``min_tasks`` tasks, max / median task time.

    Also per stage: the same ratio without the stage's first wave (tasks launched within 0.2 s of its
    first task: in the first Python stage they include the workers' start and imports, which is not
    skew) and max / median shuffle bytes read (data skew). Returns the worst stage by ``steady_ratio``
    and every stage.
    """
    tasks: dict[int, list[tuple[float, float, int]]] = {}
    names: dict[int, str] = {}
    for f in glob.glob(os.path.join(event_dir, "**", "*"), recursive=True):
        if os.path.isdir(f):
            continue
        with open(f, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if '"SparkListenerTaskEnd"' in line:
                    ev = json.loads(line)
                    info = ev["Task Info"]
                    if not info.get("Failed") and not info.get("Killed"):
                        sr = ((ev.get("Task Metrics") or {}).get("Shuffle Read Metrics") or {})
                        read = int(sr.get("Remote Bytes Read", 0)) + int(sr.get("Local Bytes Read", 0))
                        tasks.setdefault(ev["Stage ID"], []).append(
                            (info["Launch Time"] / 1e3, (info["Finish Time"] - info["Launch Time"]) / 1e3, read))
                elif '"SparkListenerStageCompleted"' in line:
                    si = json.loads(line)["Stage Info"]
                    names[si["Stage ID"]] = si["Stage Name"][:50]

    def ratio(values: list[float]) -> float | None:
        return round(max(values) / max(statistics.median(values), 1e-3), 2) if len(values) >= 3 else None

    stages = []
    for sid, ts in tasks.items():
        if len(ts) >= min_tasks:
            times = [t for _, t, _ in ts]
            start = min(launch for launch, _, _ in ts)
            steady = [t for launch, t, _ in ts if launch > start + 0.2]
            reads = [r for _, _, r in ts]
            stages.append({"stage": sid, "name": names.get(sid, ""), "tasks": len(ts),
                           "median_s": round(statistics.median(times), 3), "max_s": round(max(times), 3),
                           "ratio": ratio(times), "steady_ratio": ratio(steady),
                           "read_ratio": ratio([float(r) for r in reads]) if max(reads) else None})
    worst = max(stages, key=lambda s: s["steady_ratio"] or s["ratio"] or 0, default=None)
    return {"worst": worst, "stages": sorted(stages, key=lambda s: s["stage"])}


def run_spark(data: str, work: str, *, dim: int, iters: int, cores: int, extra: list[str],
              instrument: bool = False, cap_gb: float | None = None) -> dict:
    """One timed ``spark-cleora embed`` process. ``instrument``: with the Spark event log (shuffle bytes,
    task skew); it costs a second or two, so the timed repeats run without it."""
    out = os.path.join(work, "spark-out")
    events = os.path.join(work, "eventlog")
    cmd = [sys.executable, "-m", "spark_cleora.cli", "embed", data, "--hyperedge", "user", "--entity", "item",
           "--dim", str(dim), "--iterations", str(iters), "--output", out, "--master", f"local[{cores}]",
           "--conf", "spark.ui.enabled=false", *extra]
    if instrument:
        shutil.rmtree(events, ignore_errors=True)
        os.makedirs(events)
        cmd += ["--conf", "spark.eventLog.enabled=true", "--conf", f"spark.eventLog.dir=file://{events}",
                "--conf", "spark.eventLog.compress=false", "--conf", "spark.eventLog.rolling.enabled=false"]
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable)
    elapsed, peak, _, _ = run_process(cmd, env, cap_gb)
    with open(os.path.join(out, "_run.json")) as fh:
        report = json.load(fh)
    res = {"seconds": elapsed, "peak_rss_mb": peak / 2**20,
           "iteration_seconds": report["iteration_seconds"], "seconds_to_embed": report["seconds_to_embed"],
           "entities": report["entities"], "memberships": report["memberships"], "blocks": report["num_blocks"],
           "engine": report.get("engine"), "memory_gb": (report.get("one_task") or {}).get("memory_gb")}
    if instrument:
        res.update(shuffle_mb=shuffle_bytes(events) / 2**20, task_skew=task_skew(events))
    return res


def run_pycleora(data: str, work: str, *, dim: int, iters: int, trim: int, cap_gb: float | None = None) -> dict:
    elapsed, peak, out, _ = run_process([sys.executable, "-c", PYCLEORA_SCRIPT, data, str(dim), str(iters),
                                         str(trim), os.path.join(work, "pycleora.npy")], cap_gb=cap_gb)
    stages = json.loads(out.strip().splitlines()[-1])
    return {"seconds": elapsed, "peak_rss_mb": peak / 2**20, **stages}


def run_word2vec(data: str, work: str, *, dim: int, epochs: int, cores: int, min_count: int, confs: list[str],
                 cap_gb: float | None = None) -> dict:
    """One timed Spark ML ``Word2Vec`` process (item2vec on the users' time-ordered items)."""
    out = os.path.join(work, f"word2vec-out-{epochs}")
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable)
    elapsed, peak, out_text, _ = run_process([sys.executable, "-c", WORD2VEC_SCRIPT, data, str(dim), str(epochs),
                                              str(cores), str(min_count), out, *confs], env, cap_gb)
    stages = json.loads(out_text.strip().splitlines()[-1])
    return {"seconds": elapsed, "peak_rss_mb": peak / 2**20, **stages}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", default="1000000", help="comma-separated sizes")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--iterations", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--hub-share", type=float, default=0.0)
    ap.add_argument("--items-per-event", type=float, default=0.05, help="distinct item ids per event drawn from")
    ap.add_argument("--item-zipf", type=float, default=1.1, help="item popularity exponent (lower: longer tail)")
    ap.add_argument("--memory-cap-gb", type=float, default=None,
                    help="run every process in a cgroup with this memory limit (Linux, root): a smaller machine")
    ap.add_argument("--only", choices=["spark", "pycleora"], help="run one side only (and the peers, if any)")
    ap.add_argument("--peer", choices=["word2vec"], help="also run the Spark peer: Spark ML Word2Vec (item2vec)")
    ap.add_argument("--peer-epochs", default="1", help="comma-separated Word2Vec maxIter values, one peer each")
    ap.add_argument("--peer-min-count", type=int, default=5, help="Word2Vec minCount (5 = its default)")
    ap.add_argument("--peer-conf", action="append", default=[], metavar="KEY=VALUE",
                    help="a Spark conf of the peer's session, e.g. spark.driver.memory=4g (repeatable)")
    ap.add_argument("--trim", type=int, default=16, help="pycleora hyperedge_trim_n (16 = its default)")
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "spark_cleora_bench"))
    ap.add_argument("--json", default=None, help="write results here")
    ap.add_argument("--spark-arg", action="append", default=[], help="extra spark-cleora embed argument")
    ap.add_argument("--no-instrument", action="store_true",
                    help="skip the extra event-log run (shuffle bytes, task skew), e.g. for long runs")
    args = ap.parse_args()

    results = []
    for n in [int(x) for x in args.events.split(",")]:
        shape = "" if (args.items_per_event, args.item_zipf) == (0.05, 1.1) else \
            f"_items{args.items_per_event}_zipf{args.item_zipf}"
        data = os.path.join(args.workdir, f"events_{n}_hub{args.hub_share}{shape}.parquet")
        meta = {"events": n}
        if not os.path.exists(data):
            meta = generate(data, n, hub_share=args.hub_share, items_per_event=args.items_per_event,
                            item_zipf=args.item_zipf)
            print(f"  generated {data}: {meta}", file=sys.stderr)
        peers = [f"word2vec-e{e}" for e in args.peer_epochs.split(",")] if args.peer else []
        tools = [t for t in ("spark", "pycleora") if not args.only or t == args.only] + peers
        runs: dict[str, list[dict]] = {t: [] for t in ("spark", "pycleora", *peers)}
        failed: dict[str, list[dict]] = {t: [] for t in runs}
        errors: dict[str, list[str]] = {t: [] for t in runs}
        for r in range(args.repeats):
            order = tools[r % len(tools):] + tools[:r % len(tools)]  # each tool leads in turn
            for tool in order:
                try:
                    if tool.startswith("word2vec"):
                        res = run_word2vec(data, args.workdir, dim=args.dim, epochs=int(tool.rsplit("e", 1)[1]),
                                           cores=args.cores, min_count=args.peer_min_count, confs=args.peer_conf,
                                           cap_gb=args.memory_cap_gb)
                    elif tool == "spark":
                        res = run_spark(data, args.workdir, dim=args.dim, iters=args.iterations, cores=args.cores,
                                        extra=args.spark_arg, cap_gb=args.memory_cap_gb)
                    else:
                        res = run_pycleora(data, args.workdir, dim=args.dim, iters=args.iterations, trim=args.trim,
                                           cap_gb=args.memory_cap_gb)
                except OutOfMemory as e:  # under --memory-cap-gb: reported, not timed
                    failed[tool].append({"seconds": e.elapsed, "peak_rss_mb": e.peak / 2**20, "error": str(e)})
                    print(f"  {n:>10,} events  {tool:8s} run {r + 1}: OUT OF MEMORY after {e.elapsed:.1f}s "
                          f"(peak {e.peak / 2**20:.0f} MB): {e}", file=sys.stderr)
                    continue
                except RuntimeError as e:  # any other failure: recorded, the other runs go on
                    errors[tool].append(str(e)[-3000:])
                    print(f"  {n:>10,} events  {tool:8s} run {r + 1}: FAILED: {str(e)[-3000:]}", file=sys.stderr)
                    continue
                runs[tool].append(res)
                print(f"  {n:>10,} events  {tool:8s} run {r + 1}: {res['seconds']:7.1f}s  "
                      f"peak {res['peak_rss_mb']:7.0f} MB", file=sys.stderr)
                if args.json:  # every run as it ends: an interrupted benchmark keeps what it measured
                    _write_json(args, [*results, {"events": n, **meta, "partial": True, "runs": runs}])
        instrumented = None
        if runs["spark"] and not args.no_instrument:  # shuffle bytes and task skew: one more run with the event log
            print(f"  {n:>10,} events  spark    instrumented run (event log; not in the timings)", file=sys.stderr)
            try:
                instrumented = run_spark(data, args.workdir, dim=args.dim, iters=args.iterations, cores=args.cores,
                                         extra=args.spark_arg, instrument=True, cap_gb=args.memory_cap_gb)
            except RuntimeError as e:  # OutOfMemory included: the timed runs stand
                errors["spark"].append(f"instrumented run: {str(e)[-3000:]}")
                print(f"  {n:>10,} events  spark    instrumented run FAILED: {str(e)[-3000:]}", file=sys.stderr)
        row = {"events": n, **meta, "memory_cap_gb": args.memory_cap_gb,
               "out_of_memory": {tool: f for tool, f in failed.items() if f},
               "errors": {tool: e for tool, e in errors.items() if e}}
        for tool, rs in runs.items():
            if rs:
                row[tool] = {
                    "median_seconds": statistics.median(r["seconds"] for r in rs),
                    "best_seconds": min(r["seconds"] for r in rs),
                    "median_peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in rs),
                    "runs": rs,
                }
        if runs["spark"]:
            row["spark"]["instrumented"] = instrumented
        if runs["spark"] and runs["pycleora"]:
            row["ratio_median"] = row["spark"]["median_seconds"] / row["pycleora"]["median_seconds"]
            row["ratio_best"] = row["spark"]["best_seconds"] / row["pycleora"]["best_seconds"]
        for peer in peers:
            if runs["spark"] and runs[peer]:  # how many times faster spark_cleora is than the peer
                row[peer]["speedup_median"] = row[peer]["median_seconds"] / row["spark"]["median_seconds"]
        results.append(row)
        if args.json:  # after every size: a later failure keeps what was measured
            _write_json(args, results)

    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores; dim {args.dim}, {args.iterations} iterations, "
          f"Spark local[{args.cores}], pycleora hyperedge_trim_n={args.trim}")
    print(f"{'events':>12} {'spark s (med)':>14} {'pycleora s':>11} {'ratio':>6} {'best':>6} {'spark MB':>9} "
          f"{'pyc MB':>7} {'shuffle MB':>10}  iteration s (median run)")
    for row in results:
        s, p = row.get("spark"), row.get("pycleora")
        it = ""
        sh = ""
        if s:
            med = sorted(s["runs"], key=lambda r: r["seconds"])[len(s["runs"]) // 2]
            it = " ".join(f"{x:.1f}" for x in med["iteration_seconds"]) + f" ({med['engine']})"
            sh = f"{s['instrumented']['shuffle_mb']:.0f}" if s["instrumented"] else "-"
        print(f"{row['events']:>12,} {s['median_seconds'] if s else float('nan'):>14.1f} "
              f"{p['median_seconds'] if p else float('nan'):>11.1f} {row.get('ratio_median', float('nan')):>6.1f} "
              f"{row.get('ratio_best', float('nan')):>6.1f} "
              f"{s['median_peak_rss_mb'] if s else float('nan'):>9.0f} {p['median_peak_rss_mb'] if p else float('nan'):>7.0f} "
              f"{sh:>10}  {it}")
    for row in results:
        for peer in [k for k in row if k.startswith("word2vec")]:
            w = row[peer]
            print(f"{row['events']:>12,} events: {peer} (Spark ML Word2Vec) median {w['median_seconds']:.1f}s "
                  f"(best {w['best_seconds']:.1f}s, peak {w['median_peak_rss_mb']:.0f} MB, {w['runs'][0]['entities']} "
                  f"vectors): spark_cleora is {w.get('speedup_median', float('nan')):.1f}x faster")
    for row in results:
        for tool, f in row["out_of_memory"].items():
            print(f"{row['events']:>12,} events: {tool} ran out of memory under the {args.memory_cap_gb:g} GiB cap in "
                  f"{len(f)} run(s) (peak {max(x['peak_rss_mb'] for x in f):.0f} MB)")
    for row in results:
        s = row.get("spark")
        if s and s["instrumented"]:
            w = s["instrumented"]["task_skew"]["worst"]
            if w:
                print(f"{row['events']:>12,} events: stragglers, worst stage {w['stage']} ({w['tasks']} tasks): "
                      f"max/median task time {w['ratio']} (median {w['median_s']:.2f}s, max {w['max_s']:.2f}s), "
                      f"without the first wave {w['steady_ratio']}, shuffle bytes read max/median "
                      f"{w['read_ratio']}")
    for row in results:
        for tool, errs in row["errors"].items():
            print(f"{row['events']:>12,} events: {tool} failed {len(errs)} time(s); see the JSON")


def _write_json(args, results: list[dict]) -> None:
    with open(args.json, "w") as fh:
        json.dump({"machine": {"cores": os.cpu_count(), "python": platform.python_version()},
                   "args": vars(args), "results": results}, fh, indent=2)


if __name__ == "__main__":
    main()
