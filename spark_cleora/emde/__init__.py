"""EMDE on Spark: DLSH coder, decayed customer sketches, top-k recommendations and look-alikes."""
