#!/usr/bin/env python
"""Thin script over :mod:`glta_hf.benchmark` (same options as ``glta benchmark``)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from glta_hf.benchmark import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
