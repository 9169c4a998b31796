"""``python -m spark_cleora.cli``: the ``spark-cleora`` console script."""

import sys

from . import main

sys.exit(main())
