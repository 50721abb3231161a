"""`python -m melodee_pipeline.cli`, as the console script."""

import sys

from melodee_pipeline.cli import entry

sys.exit(entry())
