"""A backtrader broker that trades through IB: the strategy's orders become IB orders, and IB's
answers (acknowledgements, fills with IB's commissions, cancels, rejections) come back as the
backtrader notifications the strategy already handles.

What it does, in the order a strategy's order meets it:

1. A bracket (``buy_bracket``/``sell_bracket``: a parent held until its last child) is sent
   whole, as an IB bracket: the market (or limit) parent plus a stop and a target in one OCA
   group, their prices snapped to the tick grid (:func:`~m2k_bt.ib.orders.bracket_prices`).
2. Refused, as a backtrader rejection that names the reason in the journal, when: it was decided
   on a warm-up (history) bar; trading is halted; a limit would be broken (the broker then
   halts: cancels its orders and flattens); or our margin rule
   (:func:`~m2k_bt.rules.margin.supported_contracts` at the initial margin) says the equity
   does not carry the position.
3. Every order carries our reference (:func:`~m2k_bt.ib.orders.order_ref`, made from the bar it
   was decided on); a reference IB or the journal already knows is never sent again.
4. ``dry_run``: nothing is sent; the orders are journalled as ``would_send`` and logged.

At start it reconciles (:mod:`m2k_bt.ib.reconcile`) and refuses an account it cannot account
for unless ``adopt``; after a reconnect it asks IB for the executions again and books the fills
it missed (each execution once: fills are keyed by IB's execution id).

One contract root per broker, held in one month at a time except during a roll: an order that
reduces the position goes to the month that holds it, any other to the month our calendar
trades on the order's bar (``contract_for``, the feed's
:meth:`~m2k_bt.ib.feed.IBBarSource.contract_for`). So a roll (the strategy's close and reopen
on the feed's roll bar) closes in the old month and reopens in the new, as one position (one
``bt.Position``, one trade id in the strategy's log). A position found at start in a month
that is no longer the front month (a restart after the roll moment) is rolled on the first
live bar when ``roll_held`` is given (the feed marks that bar ``roll``), else closed in its
month when the strategy closes it.

Equity is ``cash`` (the starting equity given, or IB's net liquidation value at start with
``equity_from_ib``) plus realised and open profit: it is what the margin check, the sizer and
the daily loss limit see.

Orders of an earlier run found at start: a bracket's stop and target are kept while the
position is held (and cancelled when it is closed); any other is cancelled (the strategy
decides again). After a reconnect, IB's position must be the one our fills account for, or
trading stops and IB is left as it is.
"""

from __future__ import annotations

import collections
import datetime as _dt
import logging
import queue
import time

import backtrader as bt

from ..contracts import M2K, trade_date
from ..errors import ParameterError
from ..rules.margin import margin_held, supported_contracts
from ..sessions import NY_ZONE
from .errors import ReconcileError
from .limits import LimitGuard
from .orders import REF_TAG, ib_orders, order_ref, plan_orders
from .reconcile import IBFill, IBOrder, reconcile

__all__ = ["IBBroker"]

logger = logging.getLogger(__name__)

_ALIVE_AT_IB = ("PendingSubmit", "ApiPending", "PreSubmitted", "Submitted")
_REJECT_CODES = (201, 203, 10147, 10148)


class IBBroker(bt.broker.BrokerBase):
    """Parameters:

    - ``store`` (def: ``None``): a connected :class:`~m2k_bt.ib.store.IBStore`.
    - ``contract`` (def: ``None``): the qualified ``ib_async`` contract
      (:func:`~m2k_bt.ib.contract.resolve_contract`).
    - ``spec`` (def: ``M2K``): our contract facts (tick grid, multiplier, margins).
    - ``journal`` (def: ``None``): a :class:`~m2k_bt.ib.journal.Journal`.
    - ``limits`` (def: ``None``): :class:`~m2k_bt.ib.limits.Limits`.
    - ``cash`` (def: ``25000.0``): starting equity, dollars.
    - ``equity_from_ib`` (def: ``False``): take the starting equity from IB instead (the
      account's ``NetLiquidation`` in the contract's currency, read at start).
    - ``margin`` (def: ``None``): initial margin per contract, dollars; ``None``: the spec's.
    - ``dry_run`` (def: ``False``), ``adopt`` (def: ``False``), ``cancel_on_exit``
      (def: ``False``): see the module doc and the command line.
    - ``tag`` (def: ``"m2k"``): prefix of our order references.
    - ``history_end`` (def: ``None``): function returning the last warm-up bar's time (naive
      New York), e.g. ``lambda: source.history_end``; orders decided up to it are not sent.
    - ``comm_wait`` (def: ``2.0``): seconds a fill waits for IB's commission report before it
      is booked with the commission model's estimate; the strategy waits with it (a fill is
      always booked before the strategy's next bar).
    - ``settle`` (def: ``2.0``): seconds ``stop()`` waits for answers still on their way.
    - ``contract_for`` (def: ``None``): function of a bar's time (naive New York) returning
      the contract to open positions in then, e.g. ``source.contract_for``; ``None``: always
      ``contract``.
    - ``data`` (def: ``None``): the feed traded, whose close values the position (open
      profit in the equity, the daily loss limit) from the first bar on; ``None``: the data of
      the first order or position query (a position found at start is then not valued until
      the strategy asks).
    - ``roll_held`` (def: ``None``): function called at start when a position is held in a
      month other than ``contract``'s, e.g. ``source.mark_roll``: the strategy then rolls it
      on the first live bar, as a backtest of the continuous series would have.
    """

    params = (
        ("store", None),
        ("contract", None),
        ("spec", M2K),
        ("journal", None),
        ("limits", None),
        ("cash", 25_000.0),
        ("margin", None),
        ("dry_run", False),
        ("adopt", False),
        ("cancel_on_exit", False),
        ("tag", REF_TAG),
        ("history_end", None),
        ("comm_wait", 2.0),
        ("settle", 2.0),
        ("contract_for", None),
        ("roll_held", None),
        ("data", None),
        ("equity_from_ib", False),
    )

    def __init__(self) -> None:
        super().__init__()
        self.notifs: collections.deque = collections.deque()
        self._events: queue.SimpleQueue = queue.SimpleQueue()
        self.position = bt.Position()
        self.cash = self.startingcash = float(self.p.cash)
        self.by_id: dict[int, bt.Order] = {}  # IB order id -> our order
        self.ids: dict[int, list[int]] = {}  # our order ref -> IB order ids
        self.refs: dict[int, str] = {}  # our order ref -> IB order reference
        self.known_refs: set[str] = set()
        self.halted: str | None = None
        self._held: list[bt.Order] = []
        self._seq: collections.Counter = collections.Counter()
        self._execs: set[str] = set()
        self._comms: dict[str, float] = {}
        self._fills: list[tuple] = []  # (arrived, IBFill) waiting for a commission
        self._open_ids: tuple | None = None  # IB's open orders after a reconnect, last id
        self._last_placed = 0  # (IB thread) the highest order id placed
        self._ib_position: float | None = None  # IB's position after a reconnect
        self._cancels_due: set[int] = set()  # (IB thread) cancels to send when connected
        self._flatten_due = False  # a halt's cancel and flatten wait for the connection
        self._flattening: set[int] = set()  # IB ids of flatten orders not filled yet
        self._await_sync = False  # disconnected: wait for the reconnect's fills first
        self._data = self.p.data
        self._day = None
        self._day_start = None
        self.guard = LimitGuard(self.p.limits)
        self.reconciliation = None
        self.sent = 0
        self.refused: collections.Counter = collections.Counter()  # decisions, by reason
        self.refused_orders: collections.Counter = collections.Counter()  # their orders
        self.contracts: dict[int, object] = {}  # conId -> ib contract, of every month seen
        self.held: dict[int, float] = {}  # conId -> contracts held in that month
        self.orphans: list[int] = []  # IB ids of an earlier run's stops/targets, kept
        self.oca_of: dict[int, str] = {}  # our order ref -> its IB OCA group
        self._modifying: dict[int, tuple] = {}  # IB order id -> (order, price before)

    # -- journal ------------------------------------------------------------------------------
    def _j(self, kind: str, **fields) -> None:
        if self.p.journal is not None:
            self.p.journal.write(kind, **fields)

    # -- start, reconcile, stop ---------------------------------------------------------------
    def start(self) -> None:
        super().start()
        store = self.p.store
        self.contracts[self.p.contract.conId] = self.p.contract
        if self.p.equity_from_ib:
            self.cash = self.startingcash = self._ib_equity()
            self._j("state", state="equity", detail=f"${self.cash:,.2f} (IB's "
                    f"NetLiquidation of {store.account})")
        store.run(self._subscribe)
        self._reconcile()
        store.on_reconnect(self._on_reconnect)
        self._j("state", state="started", detail=f"dry_run={self.p.dry_run} "
                f"limits={self.guard.limits}")

    def _ib_equity(self) -> float:
        """The account's net liquidation value at IB, in the contract's currency."""
        store, currency = self.p.store, self.p.spec.currency
        values = store.run(lambda: store.ib.accountSummaryAsync(store.account))
        for v in values:
            if v.tag == "NetLiquidation" and v.currency == currency:
                equity = float(v.value)
                if equity > 0:
                    return equity
                raise ReconcileError(f"IB reports a net liquidation value of {v.value} "
                                     f"{currency} for {store.account}; nothing to trade with")
        raise ReconcileError(f"IB reported no NetLiquidation in {currency} for "
                             f"{store.account}; give the equity with --cash instead")

    @property
    def symbol(self) -> str:
        return getattr(self.p.contract, "localSymbol", "") or self.p.spec.root

    def _ours(self, contract) -> bool:
        """A contract of our root (any month), or one we trade."""
        return contract.conId in self.contracts or (
            contract.symbol == self.p.spec.root and contract.secType == "FUT")

    def _snapshot(self) -> tuple:
        """(IB thread) IB's positions in every month of our root (and the average price),
        open orders and fills on them."""
        ib = self.p.store.ib
        size, avg, held = 0.0, 0.0, {}
        for p in ib.positions(self.p.store.account):
            if self._ours(p.contract) and p.position:
                c = p.contract
                if not c.exchange:  # IB reports positions without the exchange
                    c.exchange = self.p.spec.exchange
                self.contracts.setdefault(c.conId, c)
                held[c.conId] = held.get(c.conId, 0.0) + p.position
                size += p.position
                avg = p.avgCost / self.p.spec.multiplier
        orders = [IBOrder(t.order.orderId, t.order.orderRef, t.order.action,
                          t.order.totalQuantity, t.order.orderType, t.orderStatus.status)
                  for t in ib.openTrades() if self._ours(t.contract)]
        fills = [self._fill_of(f) for f in ib.fills() if self._ours(f.contract)]
        return size, avg, held, orders, fills

    @staticmethod
    def _fill_of(f) -> IBFill:
        ex = f.execution
        sign = 1.0 if ex.side in ("BOT", "BUY") else -1.0
        comm = f.commissionReport.commission if f.commissionReport.execId else None
        when = ex.time if isinstance(ex.time, _dt.datetime) and ex.time.tzinfo else None
        return IBFill(ex.execId, ex.orderId, ex.orderRef, sign * ex.shares, ex.price, comm,
                      f.contract.conId, f.contract.localSymbol, when)

    def _reconcile(self) -> None:
        size, avg, held_by, orders, fills = self.p.store.run(self._snapshot)
        journal = self.p.journal
        booked = journal.exec_ids() if journal is not None else set()
        root = self.p.spec.root
        held = journal.position(root, root=True) if journal is not None else 0.0
        r = reconcile(self.symbol, size, orders, fills, held, booked, self.p.tag, self.p.adopt)
        for f in r.recovered:
            self._j("fill", ref=f.ref, exec_id=f.exec_id, symbol=f.symbol or self.symbol,
                    size=f.size, price=f.price, commission=f.commission, recovered=True)
        if r.adopted:
            self._j("adopt", symbol=self.symbol, size=size, price=avg)
        self._execs.update(f.exec_id for f in fills)
        self.known_refs = {o.ref for o in r.ours} | {f.ref for f in fills if f.ref}
        if journal is not None:
            self.known_refs |= journal.sent_refs()
        self.position = bt.Position(size, avg if size else 0.0)
        self.held = held_by
        for con, n in held_by.items():
            if con != self.p.contract.conId:
                how = "rolled on the first live bar" if self.p.roll_held is not None else \
                    "closed in that month when the strategy closes it"
                self._j("state", state="held_in_other_month",
                        detail=f"{n:+g} {self.contracts[con].localSymbol} (conId {con}): {how}")
                if self.p.roll_held is not None:
                    self.p.roll_held()
        self.reconciliation = r
        self._j("state", state="reconciled", detail=r.summary())
        self._tidy_last_run(r.ours)

    def _tidy_last_run(self, ours: list) -> None:
        """Our orders still working from an earlier run: an entry (or any order but a
        bracket's stop and target) is cancelled, since the strategy decides again and a new
        decision must not become a second order; a stop or target is kept while a position is
        held (it protects it) and cancelled when the position is closed."""
        if self.position.size:
            self.orphans = [o.order_id for o in ours if o.ref.endswith(("-S", "-T"))]
        drop = [o for o in ours if o.order_id not in self.orphans]
        for o in drop:
            self._cancel_at_ib(o.order_id, o.ref, "restart: an order of an earlier run; the "
                               "strategy decides again")

    def _cancel_at_ib(self, oid: int, ref: str | None, reason: str) -> None:
        if self.p.dry_run:
            self._j("order", event="would_cancel", ref=ref, ib_order_id=oid, reason=reason)
            return
        self._j("order", event="cancel_sent", ref=ref, ib_order_id=oid, reason=reason)
        self.p.store.call_soon(self._cancel_id, oid)

    async def _on_reconnect(self) -> None:
        """(IB thread) After a reconnect: book the executions missed while away, and close
        the orders IB no longer has open that were not filled (cancelled while away: a
        bracket's other leg, say)."""
        ib = self.p.store.ib
        fills = await ib.reqExecutionsAsync()
        for f in fills:
            if self._ours(f.contract):
                self._events.put(("exec", self._fill_of(f)))
        due, self._cancels_due = self._cancels_due, set()
        for oid in due:  # cancels asked for while away
            self._cancel_id(oid)
        # orders placed after this look (ids above the last placed now) are not judged by it
        self._events.put(("open_ids", ({t.order.orderId for t in ib.openTrades()},
                                       self._last_placed)))
        held = sum(p.position for p in ib.positions(self.p.store.account)
                   if self._ours(p.contract))
        self._events.put(("ib_position", held))
        self._events.put(("state", "reconnected"))

    def _check_position(self, ib_held: float) -> None:
        """After a reconnect, with the missed fills booked: IB's position must be ours. If it
        is not (a trade in TWS while we were away, say), trading stops (no order is sent any
        more) and IB is left as it is: which position to protect is for a person to say."""
        if abs(ib_held - self.position.size) <= 1e-9 or self.halted:
            return
        reason = (f"reconcile: after the reconnect IB holds {ib_held:+g} {self.p.spec.root} "
                  f"but our fills account for {self.position.size:+g}")
        self.halted = reason
        logger.error("trading stopped: %s; orders left as they are, check TWS", reason)
        self._j("state", state="halted", detail=f"{reason}; orders left as they are at IB, "
                f"nothing flattened: check TWS, then restart (--adopt to take IB's position)")

    def _close_gone(self) -> None:
        """Cancel (and notify) our live orders that IB did not list as open after the
        reconnect, once their fills are booked."""
        open_ids, upto = self._open_ids
        waiting = {f.order_id for _, f in self._fills}
        for oid, order in list(self.by_id.items()):
            if not order.alive() or oid in open_ids or oid > upto:
                continue
            if oid in waiting:
                return  # a fill of it is still waiting for its commission: next time
            self._j("status", ib_order_id=oid, ref=self.refs.get(order.ref),
                    status="Cancelled", detail="not open at IB after the reconnect")
            order.cancel()
            self.notify(order)
        self._open_ids = None

    def stop(self) -> None:
        end = time.monotonic() + self.p.settle
        while time.monotonic() < end and (self._fills or self._waiting()):
            self._drain(final=False)
            time.sleep(0.02)
        self._drain(final=True)
        if self.p.cancel_on_exit and not self.p.dry_run:
            ids = self.p.store.run(self._our_open_ids)
            for oid in ids:
                self.p.store.call_soon(self._cancel_id, oid)
            self._j("state", state="cancel_on_exit", detail=f"cancelled {len(ids)} order(s)")
        self._j("state", state="stopped", detail=f"position {self.position.size:+g}, "
                f"cash {self.cash:.2f}")
        super().stop()

    def _waiting(self) -> bool:
        # orders sent whose first answer has not come back yet, and flattens not done
        return bool(self._flattening) or any(o.status == o.Submitted
                                             for o in self.by_id.values())

    def _our_open_ids(self) -> list[int]:
        return [t.order.orderId for t in self.p.store.ib.openTrades()
                if t.order.orderRef.startswith(f"{self.p.tag}-")]

    def _cancel_id(self, oid: int) -> None:
        """(IB thread) Cancel IB order ``oid``; while disconnected, once the connection is
        back (:meth:`_on_reconnect`)."""
        ib = self.p.store.ib
        try:
            if not ib.isConnected():
                raise ConnectionError("not connected")
            for t in ib.openTrades():
                if t.order.orderId == oid:
                    ib.cancelOrder(t.order)
        except ConnectionError:
            self._cancels_due.add(oid)

    # -- IB's events (IB thread -> queue -> cerebro's thread) ---------------------------------
    def _subscribe(self) -> None:
        ib = self.p.store.ib
        ib.orderStatusEvent += self._on_status
        ib.execDetailsEvent += self._on_exec
        ib.commissionReportEvent += self._on_comm
        ib.errorEvent += self._on_error

    def _on_status(self, trade) -> None:
        s = trade.orderStatus
        status = s.status
        if status == "Cancelled" and trade.log and trade.log[-1].errorCode in _REJECT_CODES:
            status = "Rejected"  # ib_async reports a rejection as a cancel with an error code
        self._events.put(("status", trade.order.orderId, status, s.filled, s.remaining))

    def _on_exec(self, trade, fill) -> None:
        self._events.put(("exec", self._fill_of(fill)))

    def _on_comm(self, trade, fill, report) -> None:
        self._events.put(("comm", report.execId, report.commission))

    def _on_error(self, req_id, code, message, contract=None) -> None:
        self._events.put(("error", req_id, code, message))

    def _drain(self, final: bool = False) -> None:
        while True:
            try:
                ev = self._events.get_nowait()
            except queue.Empty:
                break
            kind = ev[0]
            if kind == "status":
                self._status(*ev[1:])
            elif kind == "exec":
                f = ev[1]
                if f.exec_id not in self._execs:
                    self._execs.add(f.exec_id)
                    self._fills.append((time.monotonic(), f))
            elif kind == "comm":
                self._comms[ev[1]] = ev[2]
            elif kind == "error":
                self._error(*ev[1:])
            elif kind == "open_ids":
                self._open_ids = ev[1]
            elif kind == "ib_position":
                self._ib_position = ev[1]
            elif kind == "state":
                self._j("state", state=ev[1], detail="executions asked again")
                self._await_sync = False
        now = time.monotonic()
        waiting = []
        for arrived, f in self._fills:
            if f.exec_id in self._comms or f.commission is not None or final \
                    or now - arrived >= self.p.comm_wait:
                self._book(f, self._comms.get(f.exec_id, f.commission))
            else:
                waiting.append((arrived, f))
        self._fills = waiting
        if self._open_ids is not None:
            self._close_gone()
        if self._ib_position is not None and not self._fills:
            self._check_position(self._ib_position)
            self._ib_position = None

    def _status(self, oid: int, status: str, filled: float, remaining: float) -> None:
        if status in ("Filled", "Cancelled", "ApiCancelled", "Inactive", "Rejected"):
            self._flattening.discard(oid)
        order = self.by_id.get(oid)
        self._j("status", ib_order_id=oid, ref=self.refs.get(order.ref) if order else None,
                status=status, filled=filled, remaining=remaining)
        if order is None or not order.alive():
            return
        if status in ("PreSubmitted", "Submitted") and order.status == order.Submitted:
            order.accept(self)
            self.notify(order)
        elif status in ("PreSubmitted", "Submitted") and oid in self._modifying:
            self._modifying.pop(oid)  # IB took the new price
            self.notify(order)
        elif status in ("Cancelled", "ApiCancelled") and filled < abs(order.size):
            order.cancel()
            self.notify(order)
        elif status in ("Inactive", "Rejected"):
            order.reject(self)
            self.notify(order)

    def _error(self, req_id: int, code: int, message: str) -> None:
        order = self.by_id.get(req_id)
        self._j("error", code=code, message=message,
                ref=self.refs.get(order.ref) if order is not None else None)
        if req_id in self._modifying and not 2100 <= code < 2200:
            self._modify_failed(req_id, f"IB error {code}: {message}")
            return
        if order is not None and code in _REJECT_CODES and order.alive():
            order.reject(self)
            self.notify(order)
            for child in self._children_of(order):
                if child.alive():
                    child.reject(self)
                    self.notify(child)
        elif (code < 2100 or code >= 2200) and code not in (1100, 1101, 1102):
            logger.warning("IB error %s: %s", code, message)  # 2100-2199: information

    def _children_of(self, order) -> list:
        return [o for o in self.by_id.values() if o.parent is order]

    def _book(self, f: IBFill, commission: float | None) -> None:
        """Book one fill: position, cash, the order's execution and its notification."""
        order = self.by_id.get(f.order_id)
        comminfo = self.getcommissioninfo(order.data) if order is not None else None
        if commission is None:  # no report from IB in time: the commission model's estimate
            commission = abs(f.size) * (comminfo.p.commission if comminfo else
                                        self.p.spec.commission)
        pos = self.position
        pprice_orig = pos.price
        psize, pprice, opened, closed = pos.update(f.size, f.price)
        mult = self.p.spec.multiplier
        pnl = -closed * (f.price - pprice_orig) * mult if closed else 0.0
        self.cash += pnl - commission
        con = f.con_id or self.p.contract.conId
        self.held[con] = self.held.get(con, 0.0) + f.size
        if not self.held[con]:
            del self.held[con]
        if not psize and self.orphans:
            for oid in self.orphans:
                if oid != f.order_id:
                    self._cancel_at_ib(oid, None, "position flat: an earlier run's stop or "
                                       "target protects nothing now")
            self.orphans = []
        self._j("fill", ref=f.ref, exec_id=f.exec_id, symbol=f.symbol or self.symbol,
                size=f.size, price=f.price, commission=commission, ib_order_id=f.order_id)
        if order is None or not order.alive():
            return  # an order of an earlier run (say its bracket's stop): position booked
        closedcomm = commission * abs(closed) / abs(f.size) if f.size else 0.0
        when = (f.time or _dt.datetime.now(NY_ZONE)).astimezone(NY_ZONE).replace(tzinfo=None)
        order.execute(bt.date2num(when), f.size, f.price, closed,
                      abs(closed) * pprice_orig * mult, closedcomm, opened,
                      abs(opened) * f.price * mult, commission - closedcomm,
                      comminfo.margin if comminfo else 0.0, pnl, psize, pprice)
        if order.executed.remsize:
            order.partial()
        else:
            order.completed()
            for child in self._children_of(order):
                if child.status == child.Created:
                    child.activate()
        self.notify(order)

    # -- what backtrader calls -----------------------------------------------------------------
    def getcash(self) -> float:
        held = margin_held(self.position.size, self._each())
        return self.getvalue() - held

    def getvalue(self, datas=None) -> float:
        value = self.cash
        data = self._data
        if self.position.size and data is not None and len(data):
            value += self.position.size * (data.close[0] - self.position.price) * \
                self.p.spec.multiplier
        return value

    def getposition(self, data, clone: bool = True):
        if self._data is None:
            self._data = data
        return self.position.clone() if clone else self.position

    def get_notification(self):
        try:
            return self.notifs.popleft()
        except IndexError:
            return None

    def notify(self, order) -> None:
        self.notifs.append(order.clone())

    def next(self) -> None:
        self._drain()
        while self._fills:  # booked before the strategy sees another bar (comm_wait at most)
            time.sleep(0.005)
            self._drain()
        if self._flatten_due and not self._await_sync and self._ib_position is None:
            self._close_out()
        self._check_loss()

    def _each(self) -> float:
        return float(self.p.margin or self.p.spec.initial_margin)

    def _check_loss(self) -> None:
        data = self._data
        if data is None or not len(data) or self.halted:
            return
        day = trade_date(data.datetime.datetime(0))
        value = self.getvalue()
        if self._day is None:  # the run's first trade date counts from the starting equity
            self._day, self._day_start = day, self.startingcash
        if day != self._day:
            self._day, self._day_start = day, value
            return
        breach = self.guard.check_loss(value - self._day_start)
        if breach and not self._warmup(data):
            self.halt(breach)

    def buy(self, owner, data, size, price=None, plimit=None, exectype=None, valid=None,
            tradeid=0, oco=None, trailamount=None, trailpercent=None, parent=None,
            transmit=True, **kwargs):
        order = bt.BuyOrder(owner=owner, data=data, size=size, price=price, pricelimit=plimit,
                            exectype=exectype, valid=valid, tradeid=tradeid, oco=oco,
                            trailamount=trailamount, trailpercent=trailpercent, parent=parent,
                            transmit=transmit)
        return self._take(order, kwargs)

    def sell(self, owner, data, size, price=None, plimit=None, exectype=None, valid=None,
             tradeid=0, oco=None, trailamount=None, trailpercent=None, parent=None,
             transmit=True, **kwargs):
        order = bt.SellOrder(owner=owner, data=data, size=size, price=price, pricelimit=plimit,
                             exectype=exectype, valid=valid, tradeid=tradeid, oco=oco,
                             trailamount=trailamount, trailpercent=trailpercent, parent=parent,
                             transmit=transmit)
        return self._take(order, kwargs)

    def _ib_id(self, order) -> int | None:
        for i in self.ids.get(order.ref, ()):
            if self.by_id.get(i) is order:
                return i
        return None

    def cancel(self, order) -> None:
        """Cancel ``order`` at IB; the strategy is notified (``Canceled``) when IB confirms."""
        if not order.alive():
            return
        oid = self._ib_id(order)
        if self.p.dry_run or oid is None:
            order.cancel()
            self.notify(order)
            return
        self._j("order", event="cancel_sent", ref=self.refs.get(order.ref), ib_order_id=oid)
        self.p.store.call_soon(self._cancel_id, oid)

    def modify(self, order, price: float) -> None:
        """Move a working stop or limit ``order`` to ``price`` (snapped to the nearest tick)
        in place at IB: the same IB order, its OCA group and parent kept. When IB acknowledges,
        the strategy is notified (``Accepted``, ``order.created.price`` the new price); when IB
        refuses, the price goes back and the strategy is notified again (the order works on at
        its old price). A modification counts towards the orders-per-minute limit; none is
        sent once trading is halted. backtrader's own brokers have no ``modify``: a strategy
        that must also run in a backtest moves a stop by cancelling it and sending a new one
        ``oco=`` the target, which this broker supports too."""
        from ..contracts import round_to_tick

        if not order.alive() or order.exectype not in (bt.Order.Stop, bt.Order.Limit):
            raise ParameterError(f"only a working stop or limit order can be modified, got "
                             f"{order.getordername()} order {order.ref} "
                             f"({order.getstatusname()})")
        new = round_to_tick(float(price), self.p.spec.tick_size)
        old = order.created.price
        oid = self._ib_id(order)
        ref = self.refs.get(order.ref)
        if self.p.dry_run or oid is None:
            self._j("order", event="would_modify", ref=ref, price=new, was=old)
            order.created.price = new
            self.notify(order)
            return
        why = f"halted: {self.halted}" if self.halted else \
            "disconnected: no connection to IB now" if not self.p.store.connected.is_set() \
            else self.guard.check_order(0.0, 1, time.monotonic())  # the order rate only
        if why:
            self._j("order", event="modify_refused", ref=ref, ib_order_id=oid, reason=why,
                    price=old)
            if not self.halted and not why.startswith("disconnected"):
                self.halt(why)
            self.notify(order)
            return
        self._j("order", event="modify_sent", ref=ref, ib_order_id=oid, price=new, was=old)
        self._modifying[oid] = (order, old)
        order.created.price = new
        try:
            placed = self.p.store.run(lambda: self._replace(oid, new))
        except ConnectionError as exc:
            placed = False
            why = f"disconnected: {exc}"
        if not placed:
            self._modify_failed(oid, why or "IB does not list the order as open")
            return
        self.guard.record_sent(1, time.monotonic())

    def _replace(self, oid: int, price: float) -> bool:
        """(IB thread) Place IB order ``oid`` again at ``price``; False if it is not open."""
        ib = self.p.store.ib
        for t in ib.openTrades():
            if t.order.orderId == oid:
                if t.order.orderType == "STP":
                    t.order.auxPrice = price
                else:
                    t.order.lmtPrice = price
                ib.placeOrder(t.contract, t.order)
                return True
        return False

    def _modify_failed(self, oid: int, why: str) -> None:
        order, old = self._modifying.pop(oid)
        self._j("order", event="modify_refused", ref=self.refs.get(order.ref),
                ib_order_id=oid, reason=why, price=old)
        order.created.price = old
        if order.alive():
            self.notify(order)

    # -- sending -------------------------------------------------------------------------------
    def _take(self, order, info: dict):
        order.addcomminfo(self.getcommissioninfo(order.data))
        order.addinfo(**info)
        self._data = order.data
        return self.submit(order)

    def submit(self, order):
        """Take a strategy's order: notified ``Submitted``, then sent (a bracket when its last
        leg comes), refused or held; returns it. (backtrader's hook: the live latency analyzer
        times the strategy's orders here, to the moment they are at IB's socket.)"""
        order.submit(self)
        self.notify(order)
        if order.parent is None and not order.transmit:
            self._held = [order]
            return order
        if order.parent is not None:
            self._held.append(order)
            if not order.transmit:
                return order
            group, self._held = self._held, []
        else:
            group = [order]
        self._send(group)
        return order

    def _warmup(self, data) -> bool:
        end = self.p.history_end() if self.p.history_end is not None else None
        return end is not None and data.datetime.datetime(0) <= end

    def _refuse(self, group: list, why: str, ref: str) -> None:
        self.refused[why.split(":")[0]] += 1
        self.refused_orders[why.split(":")[0]] += len(group)
        self._j("order", event="refused", ref=ref, reason=why)
        for o in group:
            o.reject(self)
            self.notify(o)

    def _send(self, group: list) -> None:
        parent = group[0]
        data = parent.data
        bar_dt = data.datetime.datetime(0)
        self._seq[bar_dt] += 1
        ref = order_ref(self.p.tag, bar_dt, self._seq[bar_dt])
        stop = target = None
        for child in group[1:]:
            if child.exectype in (bt.Order.Stop, bt.Order.StopLimit):
                stop = child.created.price
            else:
                target = child.created.price
        etype = {bt.Order.Limit: "LMT", bt.Order.Stop: "STP"}.get(parent.exectype, "MKT")
        price = parent.created.price if etype != "MKT" else None
        partner = parent.p.oco
        oca = self.oca_of.get(partner.ref, "") if partner is not None else ""
        if partner is not None and not oca:
            return self._refuse(group, f"oco: the order it is oco with (ref {partner.ref}) is "
                                f"in no IB OCA group (a market order, or not sent)", ref)
        plan = plan_orders(self.p.spec, parent.isbuy(), abs(parent.size), ref, etype, price,
                           stop, target, oca=oca)
        if self._warmup(data):
            return self._refuse(group, "warm-up: decided on a history bar, not sent", ref)
        if self.halted:
            return self._refuse(group, f"halted: {self.halted}", ref)
        pending = sum(o.executed.remsize for o in self.by_id.values()
                      if o.alive() and o.parent is None)
        before = self.position.size + pending
        after = before + parent.size
        contract = self._route(before, parent.size, bar_dt)
        if contract is None:
            return self._refuse(group, f"roll: {parent.size:+g} would reverse a position held "
                                f"in another month; close it first", ref)
        breach = self.guard.check_order(after, len(plan.legs), time.monotonic())
        if breach:
            self._refuse(group, f"limit: {breach}", ref)
            self.halt(breach)
            return
        each = self._each()
        if abs(after) > abs(self.position.size) and \
                supported_contracts(self.getvalue(), each) < abs(after):
            return self._refuse(group, f"margin: {abs(after):g} contracts need "
                                f"${margin_held(after, each):,.2f} at ${each:,.2f} each, equity "
                                f"${self.getvalue():,.2f}", ref)
        if ref in self.known_refs:
            self._j("order", event="not_resent", ref=ref, plan=plan.describe(),
                    reason="IB or the journal already has this order (restart)")
            for o in group:
                o.cancel()
                self.notify(o)
            return
        self.known_refs.add(ref)
        for o in group:
            self.refs[o.ref] = ref
        if self.p.dry_run:
            logger.warning("dry-run: would send %s", plan.describe())
            self._j("order", event="would_send", ref=ref, plan=plan.describe())
            for o in group:
                o.accept(self)
                self.notify(o)
            return
        if not self.p.store.connected.is_set():
            return self._refuse(group, "disconnected: no connection to IB now (reconnecting)",
                                ref)
        try:
            ids = self.p.store.run(lambda: self._place(plan, contract))
        except ConnectionError as exc:  # lost on the way: nothing was written to IB
            return self._refuse(group, f"disconnected: {exc}", ref)
        for o, oid in zip(group, ids):
            self.by_id[oid] = o
        self.ids[parent.ref] = ids
        for o in group[1:]:
            self.ids[o.ref] = ids
        for o, leg in zip(group, plan.legs):
            if leg[0] != "entry" or plan.entry_oca:
                self.oca_of[o.ref] = plan.oca
        self.guard.record_sent(len(ids), time.monotonic())
        self.sent += len(ids)
        self._j("order", event="sent", ref=ref, plan=plan.describe(), ib_order_ids=ids,
                symbol=getattr(contract, "localSymbol", "") or None)

    def _route(self, before: float, size: float, bar_dt: _dt.datetime):
        """The contract of an order of ``size`` when ``before`` contracts are held or on
        their way: an order that reduces them goes to the month holding them (an older month
        first: a roll's close), any other to the month our calendar trades on ``bar_dt``;
        ``None`` for an order that would reverse a position held in another month."""
        front = self.p.contract_for(bar_dt) if self.p.contract_for is not None \
            else self.p.contract
        self.contracts.setdefault(front.conId, front)
        if not before or size * before > 0:
            return front
        if abs(size) <= abs(before) + 1e-9:
            for con, n in self.held.items():
                if n * before > 0 and con != front.conId:
                    return self.contracts[con]
            return front
        return None if any(con != front.conId for con in self.held) else front

    def _place(self, plan, contract=None) -> list[int]:
        """(IB thread) Place ``plan``'s orders on ``contract`` (def: ours) with consecutive
        ids; returns the ids."""
        ib = self.p.store.ib
        first = ib.client.getReqId()
        for _ in plan.legs[1:]:
            ib.client.getReqId()
        orders = ib_orders(plan, first, self.p.store.account)
        for o in orders:
            ib.placeOrder(contract if contract is not None else self.p.contract, o)
        self._last_placed = max(self._last_placed, orders[-1].orderId)
        return [o.orderId for o in orders]

    # -- halting -------------------------------------------------------------------------------
    def halt(self, reason: str) -> None:
        """Stop trading: cancel our open orders, close the position at market, refuse the
        rest of the run's orders."""
        if self.halted:
            return
        self.halted = reason
        logger.warning("limit broken, trading halted: %s", reason)
        self._j("limit", limit=reason.split(":")[0], detail=reason)
        if self.p.dry_run:
            self._j("state", state="halted", detail=f"dry-run: would cancel and flatten "
                    f"{self.position.size:+g}")
            return
        self._flatten_due = True
        self._close_out()

    def _close_out(self) -> None:
        """A halt's work: cancel our open orders and close the position at market (in every
        month that holds some). Disconnected, it waits for the connection and for the fills
        missed meanwhile (:meth:`next` calls it again)."""
        store = self.p.store
        if not store.connected.is_set():
            if not self._await_sync:
                self._await_sync = True
                self._j("state", state="halted", detail="disconnected: cancel and flatten "
                        "when the connection is back")
            return
        for oid in store.run(self._our_open_ids):
            store.call_soon(self._cancel_id, oid)
        size = self.position.size  # entries still working are cancelled above
        held = dict(self.held) or ({self.p.contract.conId: size} if size else {})
        try:
            for i, (con, n) in enumerate(sorted(held.items())):
                ref = f"{self.p.tag}-flatten-{_dt.datetime.now():%Y%m%d%H%M%S}" + \
                    (f"-{i + 1}" if i else "")
                plan = plan_orders(self.p.spec, n < 0, abs(n), ref)
                contract = self.contracts.get(con, self.p.contract)
                ids = store.run(lambda: self._place(plan, contract))  # noqa: B023 - run now
                self._flattening.update(ids)
                self._j("order", event="sent", ref=ref, plan=plan.describe(),
                        ib_order_ids=ids, reason="flatten",
                        symbol=getattr(contract, "localSymbol", "") or None)
                held[con] = 0.0
        except ConnectionError:  # lost on the way: the rest when it is back
            self._await_sync = True
            self._j("state", state="halted", detail="disconnected while flattening: the rest "
                    "when the connection is back")
            return
        self._flatten_due = False
        self._j("state", state="halted", detail=f"cancelled our orders, flatten {-size:+g}")
