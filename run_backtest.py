#!/usr/bin/env python
"""Backtest M2K strategies: ``python run_backtest.py --help``."""

import signal
import sys

if __name__ == "__main__":
    # Ctrl-C and SIGTERM wait while Python imports the package: main() lets them through with
    # its handlers in place, so a signal at any moment ends the run with one line
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    from m2k_bt.cli.backtest import exit_now, main

    exit_now(main())
