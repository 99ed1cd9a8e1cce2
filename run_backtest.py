#!/usr/bin/env python
"""Backtest M2K strategies: ``python run_backtest.py --help``."""

import sys

from m2k_bt.cli.backtest import main

if __name__ == "__main__":
    sys.exit(main())
