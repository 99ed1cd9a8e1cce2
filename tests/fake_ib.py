"""A scripted fake IB gateway: an asyncio socket server on 127.0.0.1 that speaks the real TWS
API wire protocol (4-byte big-endian length prefix, NUL-terminated fields, the ``"API\\0"`` +
``"v157..178"`` handshake) well enough for the real ``ib_async`` client to connect, sync,
qualify a contract, read history and real-time bars, and place, fill and cancel orders.

Nothing of ours or of ib_async's is mocked: the client talks to this server over TCP. The
server answers at server version 157 (the lowest ib_async accepts), so the message layouts are
those of ``ib_async.decoder`` at that version.

Script knobs (set before or during a test): ``fill_mode`` (``"fill"``: market orders fill at
once at ``fill_price``; ``"none"``: they stay open; ``"reject"``: error 201; ``"partial"``:
half fills; ``"exchange"``: orders rest until :meth:`FakeGateway.push_rt_bar` moves the price,
then fill as backtrader's ``BackBroker`` fills them against that bar, see :meth:`match`),
``positions`` (per contract), ``executions`` and ``open_orders`` (what a restarted gateway
knows), ``details`` (contract details overrides) and ``contracts`` (the months it knows, by
``YYYYMM``; a month not scripted is ``details`` under that month's third Friday unless
``strict``), ``history`` (bars for reqHistoricalData, or a function of the request's fields),
``net_liquidation`` (reqAccountSummary), ``refuse`` (the gateway is away: nothing listens),
``refuse_modify`` (a modification gets error 105). It records ``placed`` (new orders),
``modified``, ``cancels``, ``rt_requests`` (subscription -> conId) and ``history_requests``;
executions are stamped with ``market_time``, the last bar pushed. Executions asked for again
(reqExecutions) come without their commission reports, as when IB's reports lag: the client
must wait for them or estimate.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time

SERVER_VERSION = 157
ACCOUNT = "DU1234567"
CON_ID = 730283085  # any number: what matters is that the fake uses one throughout
EXPIRY = "20251219"  # M2KZ5
LOCAL = "M2KZ5"


def _weekday(year: int, month: int, day: int) -> int:
    import datetime

    return datetime.date(year, month, day).weekday()


def encode(*fields) -> bytes:
    """One API message: length prefix + NUL-terminated fields."""
    body = "".join(f"{'' if f is None else f}\0" for f in fields).encode()
    return struct.pack(">I", len(body)) + body


def _contract_fields(d: dict) -> list:
    # conId, symbol, secType, lastTrade, strike, right, multiplier, exchange, currency,
    # localSymbol, tradingClass (the layout of position, execDetails and openOrder)
    return [d["conId"], d["symbol"], "FUT", d["expiry"], "0", "", d["multiplier"],
            d["exchange"], "USD", d["local"], d["symbol"]]


class FakeGateway:
    """The fake gateway on its own event-loop thread; ``port`` once started."""

    def __init__(self) -> None:
        self.fill_mode = "fill"
        self.fill_price = 2000.0
        self.net_liquidation = 31_234.56  # the account's equity, $ (reqAccountSummary)
        self.market_time = 0  # epoch of the last bar pushed: the time executions are stamped
        self.commission = 0.62
        self.details = {"conId": CON_ID, "symbol": "M2K", "expiry": EXPIRY, "multiplier": "5",
                        "exchange": "CME", "local": LOCAL, "minTick": "0.1"}
        # the contracts the gateway knows, by month; a request names its month (``details``
        # answers a request that names none, or a month it does not know when ``strict`` is off)
        self.contracts: dict[str, dict] = {"202512": self.details}
        self.strict = False
        # (contracts, avg cost per contract[, conId]); no conId: ``details``' contract
        self.positions: list[tuple] = []
        self.executions: list[dict] = []  # fills the gateway knows (sent on reqExecutions)
        self.open_orders: dict[int, dict] = {}  # orderId -> placed order fields
        self.placed: list[dict] = []  # every new order received, in order
        self.modified: list[dict] = []  # every placeOrder for an order id already open
        self.cancels: list[int] = []
        self.history: list[tuple[int, float, float, float, float, float]] = []
        self.rt_requests: dict[int, int] = {}  # reqId of a real-time bar subscription -> conId
        self.history_requests: list[list[str]] = []  # fields of every reqHistoricalData
        self.connections = 0
        self._refuse = False  # see the ``refuse`` property
        self.refuse_modify = False  # True: answer a modification with error 105
        self.client_id = 0
        self.next_id = 1
        self.perm = 9000
        self.exec_seq = 0
        self._writers: list[asyncio.StreamWriter] = []
        self._loop = asyncio.new_event_loop()
        self._server = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.port = 0

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> FakeGateway:
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        fut.result(5)
        return self

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def close(self) -> None:
        async def _close():
            self._server.close()
            for w in list(self._writers):
                w.close()
            await asyncio.sleep(0)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(_close(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    @property
    def refuse(self) -> bool:
        """True while the gateway is away (restarting): nothing listens on its port, so a
        connect is refused at once; False listens on the same port again."""
        return self._refuse

    @refuse.setter
    def refuse(self, value: bool) -> None:
        value = bool(value)
        if value == self._refuse:
            return
        self._refuse = value

        async def _switch():
            if value:
                self._server.close()
                await self._server.wait_closed()
            else:
                self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

        asyncio.run_coroutine_threadsafe(_switch(), self._loop).result(5)

    def link(self, code: int) -> None:
        """The gateway's link to IB: 1100 lost, 1101 restored (market data lost), 1102
        restored (kept); said to every client as IB's gateway says it. A lost link drops the
        real-time subscriptions when it comes back with 1101."""
        text = {1100: "Connectivity between IB and Trader Workstation has been lost.",
                1101: "Connectivity between IB and TWS has been restored- data lost.",
                1102: "Connectivity between IB and TWS has been restored- data maintained."}

        def _say():
            if code == 1101:
                self.rt_requests.clear()
            self._send(4, 2, -1, code, text[code])
        self.call(_say)

    def drop(self) -> None:
        """Close every client connection (the daily restart); the server keeps listening."""
        def _drop():
            for w in list(self._writers):
                w.close()
            self._writers.clear()
            self.rt_requests.clear()  # subscriptions die with the connection
        self._loop.call_soon_threadsafe(_drop)

    def call(self, fn, *args) -> None:
        """Run ``fn(*args)`` on the server's loop (to send scripted messages)."""
        done = threading.Event()

        def _run():
            try:
                fn(*args)
            finally:
                done.set()
        self._loop.call_soon_threadsafe(_run)
        done.wait(5)

    def wait_for(self, predicate, timeout: float = 5.0) -> bool:
        """Poll ``predicate`` until true or ``timeout`` (bounded)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if predicate():
                return True
            time.sleep(0.002)
        return bool(predicate())

    # -- the protocol ----------------------------------------------------------------------
    def _send(self, *fields) -> None:
        for w in list(self._writers):
            if not w.is_closing():
                w.write(encode(*fields))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            head = await reader.readexactly(4)
            if head != b"API\0":
                writer.close()
                return
            n = struct.unpack(">I", await reader.readexactly(4))[0]
            await reader.readexactly(n)  # "v157..178"
            writer.write(encode(SERVER_VERSION, time.strftime("%Y%m%d %H:%M:%S UTC")))
            self._writers.append(writer)
            while True:
                n = struct.unpack(">I", await reader.readexactly(4))[0]
                fields = (await reader.readexactly(n)).decode().split("\0")[:-1]
                self._handle(fields)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            if writer in self._writers:
                self._writers.remove(writer)
            writer.close()

    def _handle(self, f: list[str]) -> None:
        msg = int(f[0])
        if msg == 71:  # startApi: 71, version, clientId, optCapab
            self.client_id = int(f[2])
            self._send(9, 1, self.next_id)
            self._send(15, 1, ACCOUNT)
        elif msg == 8:  # reqIds
            self._send(9, 1, self.next_id)
        elif msg == 61:  # reqPositions
            for size, avg, *con in self.positions:
                d = self.by_con(con[0] if con else None)
                self._send(61, 3, ACCOUNT, *_contract_fields(d), size, avg)
            self._send(62, 1)
        elif msg in (5, 16):  # reqOpenOrders, reqAllOpenOrders
            for o in self.open_orders.values():
                self._open_order(o, "Submitted")
            self._send(53, 1)
        elif msg == 7:  # reqExecutions
            req = int(f[2])
            for ex in self.executions:
                self._exec(req, ex)
            self._send(55, 1, req)
        elif msg == 62:  # reqAccountSummary: 62, 1, reqId, group, tags
            req = int(f[2])
            self._send(63, 1, req, ACCOUNT, "NetLiquidation", f"{self.net_liquidation:.2f}",
                       "USD")
            self._send(64, 1, req)
        elif msg == 9:  # reqContractDetails: 9, 8, reqId, conId, symbol, secType, month, ...
            self._contract_details(int(f[2]), f[6])
        elif msg == 20:  # reqHistoricalData
            req = int(f[1])
            self.history_requests.append(f)
            rows = self.history(f) if callable(self.history) else self.history
            bars = [x for b in rows for x in (b[0], *b[1:], b[4], 1)]
            self._send(17, req, "", "", len(rows), *bars)
        elif msg == 50:  # reqRealTimeBars: 50, 3, reqId, conId, ...
            self.rt_requests[int(f[2])] = int(f[3] or 0)
        elif msg == 51:  # cancelRealTimeBars
            self.rt_requests.pop(int(f[2]), None)
        elif msg == 3:  # placeOrder
            self._place(f)
        elif msg == 4:  # cancelOrder
            oid = int(f[2])
            self.cancels.append(oid)
            o = self.open_orders.pop(oid, None)
            if o is not None:
                self._status(o, "Cancelled")

    def by_con(self, con_id: int | None) -> dict:
        """The contract details dict of ``con_id`` (``details`` for ``None`` or unknown)."""
        for d in self.contracts.values():
            if con_id is not None and int(d["conId"]) == int(con_id):
                return d
        return self.details

    def _contract_details(self, req: int, month: str) -> None:
        d = self.contracts.get(month[:6]) if month else self.details
        if d is None and not self.strict:  # ``details`` under the month asked for
            year, mon = int(month[:4]), int(month[4:6])
            fridays = [day for day in range(1, 22) if _weekday(year, mon, day) == 4]
            d = {**self.details, "expiry": f"{month[:6]}{fridays[2]:02d}",
                 "local": f"M2K{'FGHJKMNQUVXZ'[mon - 1]}{year % 10}"}
        if d is None:
            self._send(52, 1, req)
            return
        self._send(
            10, 8, req, d["symbol"], "FUT", d["expiry"], "0", "", d["exchange"], "USD",
            d["local"], d["symbol"], d["symbol"], d["conId"], d["minTick"], "1",
            d["multiplier"], "ACTIVETIM,LMT,MKT,STP", d["exchange"], "1", "0",
            "Micro E-Mini Russell 2000 Index", d["exchange"], "202512", "", "", "",
            "US/Central", "", "", "", "", 0, "", "RTY", "IND", "67", "", "")
        self._send(52, 1, req)

    def _place(self, f: list[str]) -> None:
        # 3, orderId, contract (12 fields), secIdType, secId, action, qty, type, lmt, aux, tif,
        # ocaGroup, account, openClose, origin, orderRef, transmit, parentId, ...
        o = {"orderId": int(f[1]), "conId": int(f[2] or 0), "action": f[16],
             "qty": float(f[17]), "type": f[18],
             "lmt": f[19], "aux": f[20], "tif": f[21], "oca": f[22], "account": f[23],
             "ref": f[26], "transmit": f[27], "parentId": int(f[28] or 0),
             "perm": self._perm()}
        old = self.open_orders.get(o["orderId"])
        if old is not None and self.refuse_modify:
            self._send(4, 2, o["orderId"], 105, "Order being modified does not match original")
            return
        if old is not None:  # the same id again: a modification (price, quantity)
            o["perm"], o["filled"] = old["perm"], old.get("filled", 0.0)
            self.modified.append(o)
            self.open_orders[o["orderId"]] = o
            self._open_order(o, "Submitted")
            self._status(o, "Submitted")
            return
        self.placed.append(o)
        self.next_id = max(self.next_id, o["orderId"] + 1)
        if o["type"] == "MKT" and self.fill_mode == "reject":
            self._send(4, 2, o["orderId"], 201, "Order rejected - reason: fake gateway says no")
            return
        self.open_orders[o["orderId"]] = o
        self._open_order(o, "Submitted")
        self._status(o, "Submitted")
        if o["type"] == "MKT" and self.fill_mode in ("fill", "partial"):
            qty = o["qty"] if self.fill_mode == "fill" else max(1.0, o["qty"] // 2)
            self.fill(o["orderId"], self.fill_price, qty)

    def _perm(self) -> int:
        self.perm += 1
        return self.perm

    def fill(self, order_id: int, price: float, qty: float | None = None) -> None:
        """Fill an open order (on the loop thread): execDetails, orderStatus, commission;
        a filled OCA member cancels its siblings."""
        o = self.open_orders[order_id]
        qty = o["qty"] - o.get("filled", 0.0) if qty is None else qty
        o["filled"] = o.get("filled", 0.0) + qty
        self.exec_seq += 1
        ex = {"orderId": order_id, "execId": f"0001f4e8.{self.exec_seq:04d}.01.01",
              "side": "BOT" if o["action"] == "BUY" else "SLD", "qty": qty, "price": price,
              "perm": o["perm"], "ref": o["ref"], "cum": o["filled"], "conId": o["conId"],
              "time": self.market_time}
        self.executions.append(ex)
        self._exec(-1, ex)
        done = o["filled"] >= o["qty"]
        self._status(o, "Filled" if done else "Submitted", price)
        self._send(59, 1, ex["execId"], self.commission * qty, "USD", "", "", "")
        signed = qty if o["action"] == "BUY" else -qty
        con = self.by_con(o["conId"])["conId"]
        held = {int(p[2]) if len(p) > 2 else self.details["conId"]: p for p in self.positions}
        size = (held[con][0] if con in held else 0.0) + signed
        held[con] = (size, price * 5, con)
        self.positions = [p for p in held.values() if p[0]]
        if done:
            self.open_orders.pop(order_id, None)
            if o["oca"]:
                for other in [x for x in self.open_orders.values() if x["oca"] == o["oca"]]:
                    self.open_orders.pop(other["orderId"], None)
                    self._status(other, "Cancelled")

    def _exec(self, req: int, ex: dict) -> None:
        d = self.by_con(ex.get("conId"))
        stamp = time.gmtime(ex.get("time") or 1759329000)  # else 2025-10-01 14:30 UTC
        self._send(11, req, ex["orderId"], *_contract_fields(d), ex["execId"],
                   time.strftime("%Y%m%d %H:%M:%S UTC", stamp), ACCOUNT, "CME", ex["side"],
                   ex["qty"], ex["price"],
                   ex["perm"], self.client_id, 0, ex.get("cum", ex["qty"]), ex["price"],
                   ex["ref"], "", "", "", 1)

    def _status(self, o: dict, status: str, price: float = 0.0) -> None:
        filled = o.get("filled", 0.0)
        self._send(3, o["orderId"], status, filled, o["qty"] - filled, price, o["perm"],
                   o["parentId"], price, self.client_id, "", 0)

    def _open_order(self, o: dict, status: str) -> None:
        d = self.by_con(o.get("conId"))
        fields = [5, o["orderId"], *_contract_fields(d), o["action"], o["qty"], o["type"],
                  o["lmt"], o["aux"], o["tif"] or "DAY", o["oca"], o["account"] or ACCOUNT,
                  "O", 0, o["ref"], self.client_id, o["perm"], 0, 0, 0, "", "", "", "", ""]
        fields += [""] * 12  # faProfile (server < 177), modelCode .. stockRefPrice
        fields += ["", "", "", "0", "0", "0", "0", "", "3" if o["oca"] else "0", "0", "0", "",
                   o["parentId"], "0", "", "0", "", ""]  # delta .. ocaType, .. parentId .. dnAux
        fields += ["0", "0", "", "", "", "", ""]  # continuousUpdate .. comboLegsDescrip
        fields += [0, 0, 0]  # combo legs, order combo legs, smart combo params
        fields += ["", "", ""]  # scale init, subs, increment
        fields += [""]  # hedgeType
        fields += ["0", "", "", "0", "0"]  # optOutSmartRouting .. dncPresent
        fields += [""]  # algoStrategy
        fields += ["0", "0", status] + [""] * 14 + ["0", "0"]  # solicited .. randomizePrice
        fields += [0]  # conditions
        fields += [""] * 12 + ["0", "0", "", "0"]  # adjustedOrderType .. usePriceMgmtAlgo
        self._send(*fields)

    # -- the exchange -----------------------------------------------------------------------
    def match(self, o: float, h: float, lo: float) -> None:
        """(``fill_mode="exchange"``, loop thread) Fill the resting orders that a bar of open
        ``o``, high ``h``, low ``lo`` reaches, in order id order (so a bracket's parent fills
        first, its stop is tried before its target, and the children may fill on the bar that
        filled the parent), at backtrader's ``BackBroker`` prices: a market order at the open;
        a stop at the open if the open is through it, else at the stop; a limit at the open if
        the open is better, else at the limit. A child rests until its parent has filled."""
        for oid in sorted(self.open_orders):
            od = self.open_orders.get(oid)
            if od is None or od["parentId"] in self.open_orders:
                continue
            buy, kind = od["action"] == "BUY", od["type"]
            price = None
            if kind == "MKT":
                price = o
            elif kind == "STP":
                aux = float(od["aux"])
                if (o >= aux) if buy else (o <= aux):
                    price = o
                elif (h >= aux) if buy else (lo <= aux):
                    price = aux
            elif kind == "LMT":
                lmt = float(od["lmt"])
                if (o <= lmt) if buy else (o >= lmt):
                    price = o
                elif (lo <= lmt) if buy else (h >= lmt):
                    price = lmt
            if price is not None:
                self.fill(oid, price)

    # -- scripted streams ------------------------------------------------------------------
    def push_rt_bar(self, epoch: int, o: float, h: float, lo: float, c: float,
                    v: float = 1, con_id: int | None = None) -> None:
        """A 5-second real-time bar to every subscription (call from the test thread); with
        ``fill_mode="exchange"`` the resting orders are matched against it first (a fill is
        reported before the bar that made it)."""
        self.call(self._push, epoch, o, h, lo, c, v, con_id)

    def _push(self, epoch, o, h, lo, c, v, con_id) -> None:
        self.market_time = epoch
        if self.fill_mode == "exchange":
            self.match(o, h, lo)
        for req, con in self.rt_requests.items():
            if con_id is None or con == con_id:
                self._send(50, 3, req, epoch, o, h, lo, c, v, c, 1)

    def push_minute(self, start: int, o: float, h: float, lo: float, c: float,
                    v: float = 1, con_id: int | None = None) -> None:
        """One minute bar from ``start`` (epoch seconds) as twelve 5-second bars whose
        aggregate is exactly ``(o, h, lo, c, v)``: the open alone, then the whole range
        (where a bracket's stop is tried before its target, as backtrader tries them), then
        the close ten times. With ``fill_mode="exchange"`` a market order fills at ``o``,
        stops and limits as ``BackBroker`` fills them on this bar."""
        parts = [(o, o, o, o, 0), (o, h, lo, c, v)] + [(c, c, c, c, 0)] * 10

        def _all():  # in one go on the loop, in order
            for i, (a, b, x, y, vol) in enumerate(parts):
                self._push(start + 5 * i, a, b, x, y, vol, con_id)
        self.call(_all)

    def minute_history(self, bars) -> None:
        """Answer history requests with ``bars``: ``(start epoch, o, h, lo, c, v)`` rows."""
        self.history = list(bars)


def free_port() -> int:
    """A loopback port with nothing listening on it (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SilentServer:
    """A TCP server on loopback that is not an IB gateway: it accepts and then either says
    nothing (``mode="silent"``) or answers like a web server and hangs up (``mode="http"``)."""

    def __init__(self, mode: str = "http") -> None:
        self.mode = mode
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self.sock.settimeout(0.05)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            if self.mode == "http":
                with contextlib.suppress(OSError):
                    conn.recv(1024)
                    conn.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\n")
                conn.close()
            else:
                self._held.append(conn)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        for c in self._held:
            c.close()
        self.sock.close()
