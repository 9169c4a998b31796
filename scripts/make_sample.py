"""Generate the bundled sample: a small, synthetic shop event log (redistributable by construction).

Shoppers have one or two favourite aisles and mostly buy there; each visit is a session of events a few
minutes apart, visits are days apart. Cleora should therefore place items of one aisle together.

    python scripts/make_sample.py  # writes spark_cleora/data/sample_events.csv
"""

from __future__ import annotations

import csv
import os

import numpy as np

AISLES = {
    "coffee": ["espresso-beans", "filter-coffee", "milk-frother", "coffee-grinder", "moka-pot", "oat-milk"],
    "pasta": ["spaghetti", "penne", "passata", "parmesan", "basil", "olive-oil", "garlic"],
    "baby": ["diapers", "baby-wipes", "baby-formula", "teething-ring", "baby-shampoo"],
    "baking": ["flour", "yeast", "baking-soda", "vanilla", "cocoa", "brown-sugar", "muffin-tray"],
    "pets": ["dog-food", "cat-litter", "cat-food", "chew-toy", "flea-spray"],
    "breakfast": ["cereal", "milk", "eggs", "bread", "butter", "jam", "orange-juice"],
    "bbq": ["charcoal", "sausages", "ketchup", "burger-buns", "corn", "tongs"],
    "cleaning": ["detergent", "sponges", "bleach", "paper-towels", "trash-bags"],
}


def main(path: str = os.path.join("spark_cleora", "data", "sample_events.csv"), seed: int = 7) -> None:
    rng = np.random.default_rng(seed)
    names = list(AISLES)
    rows = []
    t0 = 1_700_000_000
    for u in range(600):
        favs = rng.choice(len(names), size=rng.integers(1, 3), replace=False)
        t = t0 + int(rng.integers(0, 86_400 * 30))
        for _visit in range(int(rng.integers(1, 5))):
            for _ in range(int(rng.integers(2, 7))):
                aisle = names[int(rng.choice(favs))] if rng.random() < 0.85 else names[int(rng.integers(len(names)))]
                item = f"{aisle}:{AISLES[aisle][int(rng.integers(len(AISLES[aisle])))]}"
                rows.append((f"user{u:04d}", item, t))
                t += int(rng.integers(20, 400))
            t += int(rng.integers(86_400, 86_400 * 7))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["user_id", "item", "ts"])
        w.writerows(rows)
    print(f"wrote {len(rows)} events to {path}")


if __name__ == "__main__":
    main()
