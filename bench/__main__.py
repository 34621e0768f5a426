"""``python -m bench [--quick] [--only AREA,...]``: every benchmark against its reference (see bench/runner.py)."""

import sys

from bench.runner import main

sys.exit(main())
