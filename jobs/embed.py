"""spark-submit entry point: takes exactly the arguments of ``spark-cleora embed``.

    spark-submit --master yarn jobs/embed.py events/ --hyperedge user_id --entity item_id --output out/emb
"""

import sys

from spark_cleora.cli import embed_main

if __name__ == "__main__":
    sys.exit(embed_main())
