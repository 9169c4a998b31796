"""spark-submit entry point: takes exactly the arguments of ``spark-cleora emde STEP ...``.

    spark-submit --master yarn jobs/emde.py fit --embeddings s3a://lake/emb --output s3a://lake/coder
    spark-submit --master yarn jobs/emde.py sketch --coder s3a://lake/coder --events s3a://lake/events \
        --customer user_id --item item_id --timestamp ts --half-life 604800 --output s3a://lake/sketches
"""

import sys

#: an unsupported Python/PySpark then ends with one line and exit code 4, as the console script does
SPARK_CLEORA_ENTRY_POINT = True

from spark_cleora.cli import subcommand_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(subcommand_main("emde"))
