"""spark-submit entry point: takes exactly the arguments of ``spark-cleora embed``.

    spark-submit --master yarn jobs/embed.py events/ --hyperedge user_id --entity item_id --output out/emb
"""

import sys

#: an unsupported Python/PySpark then ends with one line and exit code 4, as the console script does
SPARK_CLEORA_ENTRY_POINT = True

from spark_cleora.cli import embed_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(embed_main())
