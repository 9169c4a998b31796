"""EMDE on Spark: DLSH coder, decayed customer sketches, top-k recommendations and look-alikes.

Library use (every function takes and returns DataFrames; nothing grows on the driver)::

    from spark_cleora.emde import fit_coder, item_codes, build_sketches, recommend

    coder = fit_coder([emb], depth=10, bits=7, seed=0)          # emb: entity, embedding
    codes = item_codes(coder, [emb])                           # item, codes
    sk = build_sketches(events, codes, customer="user", item="item", timestamp="ts", half_life=86400.0)
    recs, report = recommend(sk.sketches, codes, width=coder.width, n_codes=coder.n_codes,
                             popularity=sk.items, seen=events.selectExpr("user AS customer", "item"))
"""

from .coder import Coder, extend_codes, fit_coder, item_codes, load_coder, read_codes, save_coder
from .recommend import recommend
from .similar import similar_customers
from .sketch import Previous, SketchResult, build_sketches, read_items, read_sketches

__all__ = ["Coder", "Previous", "SketchResult", "build_sketches", "extend_codes", "fit_coder", "item_codes", "load_coder",
           "read_codes", "read_items", "read_sketches", "recommend", "save_coder", "similar_customers"]
