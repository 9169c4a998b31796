"""The README's recommendation table: per dataset, choose EMDE's decay and decoder weight on the
validation split (second-to-last event), then report the test split (last event) with those settings.

    python scripts/emde_eval.py --data-dir DIR        # every dataset found in DIR (default $SPARK_CLEORA_SHARED_DATA)
    python scripts/emde_eval.py --datasets ml-100k --seeds 0 1 2 --out /tmp/emde_eval

Writes one JSON report per run into --out and prints a Markdown table. All methods of a row come from
the same `evaluate recommend` run (same split, same Cleora embeddings of the training events).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from spark_cleora.evaluate.recommend import DATASETS, evaluate_recommend, read_dataset
from spark_cleora.runtime.session import get_spark

# Half-lives tried on the validation split (seconds; events for amazon-games, which has only an order).
GRID = {
    "ml-100k": (None, 3600.0, 600.0, 120.0, 60.0, 30.0),
    "amazon-games": (None, 4.0, 1.0),
    "rsc15": (None, 600.0, 60.0),
    "lastfm": (None,),
}
WEIGHTS = (0.25, 0.5, 1.0)


def run(spark, name, *, data_dir, holdout, half_lives, weights, seeds, out):
    events, ds = read_dataset(spark, name, data_dir)
    with tempfile.TemporaryDirectory(prefix="emde_eval_") as work:
        rep = evaluate_recommend(spark, events, work_dir=work, holdout=holdout, coder_seeds=tuple(seeds),
                                 half_lives=tuple(half_lives), sketch_weights=tuple(weights),
                                 exclude_seen=ds.exclude_seen,
                                 baselines=("popularity", "knn") if holdout == "last" else ())
    rep["dataset"] = name
    path = os.path.join(out, f"{name}_{holdout}.json")
    with open(path, "w") as fh:
        json.dump(rep, fh, indent=2, sort_keys=True)
    return rep


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=list(GRID))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="coder seeds (mean, min-max reported)")
    ap.add_argument("--out", default="out/emde_eval")
    ap.add_argument("--master", default="local[2]")
    ap.add_argument("--data-dir", default=os.environ.get("SPARK_CLEORA_SHARED_DATA"),
                    help="directory holding the datasets' folders (default: $SPARK_CLEORA_SHARED_DATA)")
    args = ap.parse_args(argv)
    if not args.data_dir:
        ap.error("give --data-dir DIR (or set SPARK_CLEORA_SHARED_DATA)")
    data_dir = Path(args.data_dir)
    os.makedirs(args.out, exist_ok=True)
    spark = get_spark(master=args.master)
    rows = []
    for name in args.datasets:
        if not all((data_dir / f).exists() for f in DATASETS[name].files):
            print(f"skipping {name}: not in {data_dir}", file=sys.stderr)
            continue
        t0 = time.perf_counter()
        val = run(spark, name, data_dir=data_dir, holdout="second-to-last", half_lives=GRID[name], weights=WEIGHTS,
                  seeds=args.seeds, out=args.out)
        best = max((n for n in val["results"] if n.startswith("emde_popularity")),
                   key=lambda n: val["results"][n]["recall@10"])
        hl = val["emde"]["half_lives"]
        chosen_hl = hl[0] if len(hl) == 1 else next(h for h in hl if best.endswith(f"_hl{'none' if h is None else f'{h:g}'}"))
        chosen_w = float(best.split("_w")[1].split("_")[0])
        test = run(spark, name, data_dir=data_dir, holdout="last", half_lives=[chosen_hl], weights=[chosen_w],
                   seeds=args.seeds, out=args.out)
        rows.append((name, chosen_hl, chosen_w, test, round(time.perf_counter() - t0)))
        print(f"{name}: validation chose half-life {chosen_hl}, weight {chosen_w}", file=sys.stderr)

    print("| dataset | test customers | EMDE popularity-corrected | EMDE geometric | popularity | Cleora item-kNN | "
          "EMDE settings (chosen on validation) | seconds (test run) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, hl, w, rep, _secs in rows:
        res = rep["results"]

        def cell(key):
            m = res[key]
            spread = f" ({m['recall@10_min']:.3f}–{m['recall@10_max']:.3f})" if "recall@10_min" in m else ""
            return f"{m['recall@10']:.4f}{spread} / {m['ndcg@10']:.4f} / {m['mrr@10']:.4f}"

        emde = next(k for k in res if k.startswith("emde_popularity"))
        print(f"| {name} | {rep['data']['test_customers']} | {cell(emde)} | {cell('emde_geometric')} | "
              f"{cell('popularity')} | {cell('knn')} | half-life {hl}, weight {w:g} | {rep['seconds_total']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
