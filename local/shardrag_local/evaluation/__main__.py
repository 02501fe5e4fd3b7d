"""``python -m shardrag_local.evaluation --dataset ../shared/datasets/scifact``."""

import sys

from shardrag_local.evaluation.cli import main

sys.exit(main())
