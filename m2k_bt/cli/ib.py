"""``run_backtest.py live --ib HOST:PORT --client-id N [...]``: the strategy on an IB account.

The same cerebro as a backtest of the same arguments (``cli.live.live_cerebro``: strategy, sizer,
commission model, analyzers), fed by :class:`~m2k_bt.ib.feed.IBBarSource` through the live
``QueueFeed``, with :class:`~m2k_bt.ib.broker.IBBroker` in place of the paper broker. Ctrl-C or
SIGTERM stop it as they stop a replay (report written, exit status 130/143); open orders stay
at IB unless ``--cancel-on-exit``. A gateway that is not there, or is not a gateway: one line
naming the address and what failed, exit status 2, within ``--connect-timeout``.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import backtrader as bt

from ..errors import ConfigError

__all__ = ["wants_ib", "build_ib_parser", "ib_cerebro", "ib_main"]


def wants_ib(argv: list[str]) -> bool:
    """True when ``run_backtest.py live`` was given ``--ib``."""
    return any(a == "--ib" or a.startswith("--ib=") for a in argv)


def build_ib_parser() -> argparse.ArgumentParser:
    from ..ib.store import PAPER_PORT
    from .common import ArgParser

    p = ArgParser(
        prog="run_backtest.py live --ib",
        description="Trade a strategy on an Interactive Brokers account (paper by default) "
        "through TWS or IB Gateway; every order, fill and state change goes to the journal.",
    )
    g = p.add_argument_group("Interactive Brokers")
    g.add_argument("--ib", required=True, metavar="HOST:PORT",
                   help=f"TWS / IB Gateway API address (paper TWS: 127.0.0.1:{PAPER_PORT})")
    g.add_argument("--client-id", type=int, required=True, metavar="N", help="API client id")
    g.add_argument("--account", default="", metavar="ID",
                   help="account to trade (default: the login's only account)")
    g.add_argument("--dry-run", action="store_true",
                   help="send nothing: journal and log the orders it would send")
    g.add_argument("--adopt", action="store_true",
                   help="take over a position (or orders) the journal cannot account for")
    g.add_argument("--cancel-on-exit", action="store_true",
                   help="cancel our open orders when the run ends (default: leave them)")
    g.add_argument("--max-position", type=int, metavar="N", help="most contracts held")
    g.add_argument("--max-daily-loss", type=float, metavar="USD",
                   help="loss since the trade date began that stops trading and flattens")
    g.add_argument("--max-orders-per-minute", type=int, metavar="N",
                   help="orders sent in any 60 s that stop trading and flatten")
    g.add_argument("--bar-minutes", type=int, default=5, metavar="N",
                   help="the strategy's bar size in minutes, dividing an hour (5)")
    g.add_argument("--history", default="2 D", metavar="DURATION",
                   help="IB duration of the warm-up history ('2 D')")
    g.add_argument("--connect-timeout", type=float, default=4.0, metavar="SECONDS",
                   help="seconds for the connection and IB's start-up answers (4)")
    g.add_argument("--journal", metavar="FILE",
                   help="journal file, appended to (default: <out>/journal.jsonl); give the "
                   "same file after a restart")
    g.add_argument("--heartbeat", type=float, default=0.5, metavar="SECONDS",
                   help="feed heartbeat: wait on an empty queue before handing back control")

    g = p.add_argument_group("contract, strategy, sizing")
    g.add_argument("--contract", default="M2K", help="M2K (default), RTY or a registered root")
    g.add_argument("--cash", type=float, default=25_000.0,
                   help="equity the sizer, margin check and loss limit start from, $ (25000)")
    g.add_argument("--cash-from-ib", action="store_true",
                   help="start from the account's net liquidation value at IB instead")
    g.add_argument("--commission", type=float, help="$ per contract per side (spec)")
    g.add_argument("--margin", type=float, help="initial margin $ per contract (spec)")
    g.add_argument("--strategy", default="sma", help="sma (default), bollinger, adaptive")
    g.add_argument("--param", action="append", metavar="KEY=VALUE", help="strategy parameter")
    g.add_argument("--sizer", default="kelly", help="kelly (default) or fixed")
    g.add_argument("--sizer-param", action="append", metavar="KEY=VALUE",
                   help="sizer parameter")
    g = p.add_argument_group("output")
    g.add_argument("--out", metavar="DIR", help="output folder (default: results/<time>-...)")
    g.add_argument("--no-plot", action="store_true", help="no chart")
    g.add_argument("--quiet", action="store_true", help="print only errors")
    return p


def _config(args):
    from ..contracts import get_spec
    from ..engine import BacktestConfig
    from .common import parse_kv

    if not args.cash > 0:
        raise ConfigError(f"--cash must be a positive number of dollars, got {args.cash}")
    if not args.connect_timeout > 0:
        raise ConfigError(f"--connect-timeout must be seconds > 0, got {args.connect_timeout}")
    return BacktestConfig(
        strategy=args.strategy, params=parse_kv(args.param, "--param"), sizer=args.sizer,
        sizer_params=parse_kv(args.sizer_param, "--sizer-param"),
        spec=get_spec(args.contract), cash=args.cash, commission=args.commission,
        margin=args.margin, plot=not args.no_plot, runonce=False, preload=False,
    )


def ib_cerebro(live_cerebro, source, config, store, contract, journal, limits,
               stop_event=None, heartbeat: float = 0.5, **broker_kw):
    """The cerebro of a live run through IB: the one a backtest of ``config`` builds (strategy,
    sizer, commission model, analyzers: ``live_cerebro``, ``cli.live``'s), fed by ``source``
    (an :class:`~m2k_bt.ib.feed.IBBarSource`) through a ``QueueFeed``, with an
    :class:`~m2k_bt.ib.broker.IBBroker` in place of the paper broker (``broker_kw``: its
    other parameters). Returns ``(cerebro, feed, broker)``."""
    from ..ib import IBBroker

    # an unbounded queue: the IB thread puts bars on it and must never wait for the strategy,
    # which may be waiting for the IB thread to place an order (a long backfill, say)
    cerebro, feed = live_cerebro(
        source, config, timeframe=bt.TimeFrame.Minutes, compression=source.minutes,
        stop_event=stop_event, qcheck=heartbeat, guard_broker=False, maxsize=0)
    broker = IBBroker(store=store, contract=contract, spec=config.spec, journal=journal,
                      limits=limits, cash=config.cash, margin=config.margin,
                      history_end=lambda: source.history_end,
                      contract_for=source.contract_for, roll_held=source.mark_roll, data=feed,
                      **broker_kw)
    broker.comminfo = dict(cerebro.broker.comminfo)
    cerebro.broker = broker
    # IB's answers reach the strategy as they come (on the feed's heartbeat), not only with
    # the next bar: a stop filled in the middle of a bar is known before it ends, and a fill
    # that comes after the last bar is in the report
    cerebro.p.quicknotify = True
    return cerebro, feed, broker


def ib_main(argv: list[str], live_cerebro, signal_stop) -> int:
    """Entry point of ``run_backtest.py live --ib ...``; returns the exit status.
    ``live_cerebro`` and ``signal_stop`` are ``cli.live``'s (passed in: ``cli.live`` imports
    this module)."""
    from ..ib import IBBarSource, IBStore, Journal, Limits, parse_address
    from ..ib.contract import resolve_contract
    from ..ib.errors import require_ib_async
    from .common import default_out

    args = build_ib_parser().parse_args(argv)
    host, port = parse_address(args.ib)
    limits = Limits(args.max_position, args.max_daily_loss, args.max_orders_per_minute)
    config = _config(args)
    require_ib_async()
    # ib_async logs its own account of a failed connect; ours is the one line
    logging.getLogger("ib_async").addHandler(logging.NullHandler())
    logging.getLogger("ib_async").propagate = False
    out = Path(args.out) if args.out else default_out(config.strategy_name, "ib-")
    store = IBStore(host, port, args.client_id, args.account, timeout=args.connect_timeout)
    store.connect()  # GatewayError: one line, exit status 2
    journal = None
    try:
        month, contract, _ = resolve_contract(store, config.spec)
        journal = Journal(Path(args.journal) if args.journal else out / "journal.jsonl")
        store.on_state(lambda state, detail: journal.write("state", state=state,
                                                           detail=detail))
        journal.write("state", state="connected", detail=f"{store.address} client "
                      f"{args.client_id} account {store.account} contract {month.symbol}")
        source = IBBarSource(store, contract, config.spec, minutes=args.bar_minutes,
                             history=args.history, on_event=journal.write, month=month)
        with signal_stop(ignore_after=True) as stopper:
            cerebro, feed, broker = ib_cerebro(
                live_cerebro, source, config, store, contract, journal, limits,
                stop_event=stopper.event, heartbeat=args.heartbeat, dry_run=args.dry_run,
                adopt=args.adopt, cancel_on_exit=args.cancel_on_exit,
                equity_from_ib=args.cash_from_ib)
            stopper.attach(cerebro)
            if not args.quiet:
                print(f"live (IB {store.address}, account {store.account}, {month.symbol}"
                      f"{', dry-run' if args.dry_run else ''}): {config.strategy_name} on "
                      f"{args.bar_minutes}-minute bars; journal {journal.path}; Ctrl-C stops",
                      flush=True)
            t0 = time.perf_counter()
            try:
                strategy = cerebro.run()[0]
            finally:
                stopper.detach()
                source.stop()
            _write(strategy, cerebro, feed, source, broker, config, out, stopper, t0, args)
        return stopper.exit_status
    finally:
        if journal is not None:
            journal.close()
        store.close()


def _write(strategy, cerebro, feed, source, broker, config, out, stopper, t0, args) -> None:
    from ..engine import collect_analysis, make_result
    from ..report.summary import build_report, format_summary, write_outputs

    analysis = collect_analysis(strategy)
    analysis["stream"] = feed.summary()
    analysis["stream"]["interrupted_by"] = stopper.name
    analysis["ib"] = {**source.summary(), "sent": broker.sent, "refused": dict(broker.refused),
                      "halted": broker.halted, "reconnects": broker.p.store.reconnects,
                      "reconciliation": broker.reconciliation.summary()
                      if broker.reconciliation else None}
    warnings = []
    if broker.refused.get("warm-up"):
        warnings.append(f"{broker.refused['warm-up']} order(s) decided on warm-up (history) "
                        f"bars not sent, by design")
    if broker.halted:
        warnings.append(f"trading halted: {broker.halted}")
    if stopper.name:
        warnings.append(f"stopped by {'Ctrl-C' if stopper.name == 'SIGINT' else stopper.name}")
    for after, before, n in source.summary()["gaps"]:
        warnings.append(f"gap: {n} bar(s) missing between {after} and {before}")
    processed = len(strategy)
    result = make_result(
        config, final_value=broker.getvalue(), bars=processed, first_dt=None,
        last_dt=None, analysis=analysis, trades=getattr(strategy, "trade_log", []),
        margin_events=[], order_rejections=_rejections(strategy, broker),
        event_warnings=getattr(strategy, "event_warnings", None), more_warnings=warnings,
        data_report=[], elapsed=time.perf_counter() - t0, cerebro=cerebro, strategy=strategy)
    paths = write_outputs(result, out, plot=not args.no_plot)
    if not args.quiet:
        print(format_summary(build_report(result)))
        for w in result.warnings:
            print(f"warning: {w}")
        print(f"outputs: {out} ({', '.join(sorted(Path(p).name for p in paths.values()))})")


def _rejections(strategy, broker) -> dict:
    """The strategy's rejected orders less those the broker refused because they were decided
    on warm-up bars (not sent by design, reported apart)."""
    out = dict(getattr(strategy, "order_rejections", {}) or {})
    warm = broker.refused_orders.get("warm-up", 0)  # a bracket's legs each count
    if warm and out.get("Rejected"):
        out["Rejected"] -= min(warm, out["Rejected"])
        if not out["Rejected"]:
            del out["Rejected"]
    return out
