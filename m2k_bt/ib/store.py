"""The connection to TWS or IB Gateway: ``ib_async``'s ``IB`` on an event loop of its own
thread, so that backtrader's loop (cerebro's thread) never blocks on the socket.

- :meth:`IBStore.connect`: the API handshake and ib_async's start-up sync (positions, open
  orders, executions) within ``timeout`` seconds, or a :class:`~m2k_bt.ib.errors.GatewayError`
  that names the address and what failed (nothing listening, no answer, a server that does not
  speak the API, the connection closed during the handshake).
- After a lost connection (the daily gateway restart), reconnect with back-off
  (``backoff`` seconds between tries, the last repeated), then run the ``on_reconnect``
  callbacks (the feed backfills and re-subscribes, the broker reconciles).
- The gateway's own link to IB: error 1100 (lost) clears ``connected`` as a lost socket does
  (no order is sent meanwhile); 1101 and 1102 (restored, market data lost or kept) set it
  again and run the same callbacks.
- :meth:`IBStore.run`: run a coroutine or a function on the IB thread and wait for its result;
  every call into ``ib_async`` goes through it (``ib_async`` is not thread-safe).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
from collections.abc import Callable

from .errors import GatewayError, require_ib_async

__all__ = ["IBStore", "PAPER_PORT", "parse_address"]

logger = logging.getLogger(__name__)

#: TWS's paper-trading API port (IB Gateway's is 4002; live TWS 7496, live Gateway 4001).
PAPER_PORT = 7497
#: IB's codes for the gateway's link to IB: lost; restored with market data lost / kept.
LINK_LOST = 1100
LINK_RESTORED = (1101, 1102)


def parse_address(text: str) -> tuple[str, int]:
    """``"HOST:PORT"`` (or ``"HOST"``, paper port) -> ``(host, port)``.

    >>> parse_address("127.0.0.1:4002"), parse_address("localhost")
    (('127.0.0.1', 4002), ('localhost', 7497))
    """
    host, sep, port = str(text).strip().rpartition(":")
    if not sep:
        host, port = port, str(PAPER_PORT)
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not host or not 0 < number < 65536:
        raise GatewayError(f"--ib {text!r}: expected HOST:PORT, e.g. 127.0.0.1:{PAPER_PORT}")
    return host, number


class IBStore:
    """One API connection.

    - ``host``, ``port`` (def: ``"127.0.0.1"``, :data:`PAPER_PORT`), ``client_id`` (def: ``1``).
    - ``account`` (def: ``""``): the account to trade; ``""`` takes the only managed account.
    - ``timeout`` (def: ``4.0``): seconds for the whole connect, handshake and sync included.
    - ``backoff`` (def: ``(1, 2, 4, 8, 16, 30)``): seconds between reconnect tries; the last
      repeats until the connection is back or :meth:`close` is called.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = PAPER_PORT, client_id: int = 1,
                 account: str = "", timeout: float = 4.0,
                 backoff: tuple[float, ...] = (1, 2, 4, 8, 16, 30)) -> None:
        self.host, self.port, self.client_id = host, int(port), int(client_id)
        self.account = account
        self.timeout = float(timeout)
        self.backoff = tuple(backoff) or (1.0,)
        self.ib = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closing = False
        self._reconnect_cbs: list[Callable] = []
        self._state_cbs: list[Callable[[str, str], None]] = []
        self.reconnects = 0
        self._socket_up = False  # (IB thread) the socket is connected (and was synced)
        self.connected = threading.Event()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    # -- the IB thread ----------------------------------------------------------------------
    def _start_loop(self) -> None:
        if self._thread is not None:
            return
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        def _run():
            asyncio.set_event_loop(self.loop)
            ready.set()
            self.loop.run_forever()

        self._thread = threading.Thread(target=_run, name="ib-store", daemon=True)
        self._thread.start()
        ready.wait()

    def run(self, what, timeout: float | None = None):
        """Run ``what`` (a coroutine, or a function of no arguments, whose result is awaited if
        it is awaitable) on the IB thread and return its result (``timeout`` seconds, default
        the store's). Calls that make futures (``ib_async``'s ``...Async`` methods) must come
        as functions, ``lambda: ib.reqExecutionsAsync()``, so that they are made there."""
        async def _call():
            out = what() if callable(what) and not inspect.iscoroutine(what) else what
            if inspect.isawaitable(out):
                out = await out
            return out

        if threading.current_thread() is self._thread:
            raise RuntimeError("IBStore.run called on the IB thread")
        fut = asyncio.run_coroutine_threadsafe(_call(), self.loop)
        return fut.result(self.timeout if timeout is None else timeout)

    def call_soon(self, fn: Callable, *args) -> None:
        """Run ``fn(*args)`` on the IB thread without waiting."""
        self.loop.call_soon_threadsafe(fn, *args)

    # -- connect, reconnect -----------------------------------------------------------------
    def on_reconnect(self, fn: Callable) -> None:
        """Call ``fn()`` (a function or coroutine function) on the IB thread after a reconnect."""
        self._reconnect_cbs.append(fn)

    def on_state(self, fn: Callable[[str, str], None]) -> None:
        """Call ``fn(state, detail)`` on every connection state change."""
        self._state_cbs.append(fn)

    def _say(self, state: str, detail: str = "") -> None:
        for fn in self._state_cbs:
            try:
                fn(state, detail)
            except Exception:  # a journal that fails must not take the connection down
                logger.exception("state callback failed")

    async def _connect_once(self) -> None:
        ib_async = require_ib_async()
        from ib_async.ib import StartupFetch

        fetch = StartupFetch.POSITIONS | StartupFetch.ORDERS_OPEN | StartupFetch.EXECUTIONS
        await asyncio.wait_for(
            self.ib.connectAsync(self.host, self.port, clientId=self.client_id,
                                 timeout=self.timeout, account=self.account,
                                 fetchFields=fetch),
            self.timeout)
        del ib_async

    def connect(self) -> IBStore:
        """Connect within ``timeout`` seconds or raise :class:`GatewayError` (one line)."""
        ib_async = require_ib_async()
        self._start_loop()
        notes: list[str] = []

        def _make():
            self.ib = ib_async.IB()
            self.ib.client.apiError += notes.append
            self.ib.disconnectedEvent += self._on_disconnected
            self.ib.errorEvent += self._on_error
            self.ib.RaiseRequestErrors = False

        self.run(_make)
        try:
            self.run(self._connect_once(), timeout=self.timeout + 1.0)
        except BaseException as exc:  # noqa: BLE001 - every failure becomes one line
            sent = self.run(lambda: self.ib.client.conn.numBytesSent)
            self.close()
            raise GatewayError(f"IB gateway {self.address}: {self._why(exc, sent, notes)}") \
                from None
        accounts = self.run(self.ib.client.getAccounts)
        if self.account and self.account not in accounts:
            self.close()
            raise GatewayError(f"IB gateway {self.address}: account {self.account!r} is not "
                               f"managed by this login (it manages {', '.join(accounts)})")
        if not self.account:
            if len(accounts) != 1:
                self.close()
                raise GatewayError(f"IB gateway {self.address}: this login manages "
                                   f"{len(accounts)} accounts ({', '.join(accounts)}); "
                                   f"choose one with --account")
            self.account = accounts[0]
        self._socket_up = True
        self.connected.set()
        self._say("connected", f"{self.address} client {self.client_id} account {self.account}")
        return self

    def _why(self, exc: BaseException, sent: int, notes: list[str]) -> str:
        t = f"{self.timeout:g} s"
        if isinstance(exc, ConnectionRefusedError):
            return "connection refused (nothing is listening there; is TWS / IB Gateway " \
                   "running with the API enabled on this port?)"
        if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
            if not sent:
                return f"no TCP connection within {t}"
            if any("closed" in n for n in notes):
                return ("the server closed the connection during the API handshake (not an "
                        "IB gateway, or client id already in use)")
            return f"a server answered but did not complete the IB API handshake within {t} " \
                   f"(not TWS / IB Gateway?)"
        if isinstance(exc, OSError):
            return f"cannot connect: {exc.strerror or exc}"
        if isinstance(exc, ConnectionError):
            return f"connection failed: {exc}"
        return f"connection failed: {type(exc).__name__}: {exc}"

    def _on_disconnected(self) -> None:
        was_up = self._socket_up  # not ``connected``: that is also cleared by a lost link
        self._socket_up = False
        self.connected.clear()
        if self._closing or not was_up:  # closing, or a failed (re)connect: no new loop
            return
        self._say("disconnected", self.address)
        self.loop.create_task(self._reconnect())

    def _on_error(self, req_id, code, message, contract=None) -> None:
        """(IB thread) The gateway's link to IB: 1100 lost, 1101/1102 restored."""
        if code == LINK_LOST and self.connected.is_set():
            self.connected.clear()
            self._say("link_lost", f"IB error {code}: {message}")
        elif code in LINK_RESTORED and not self.connected.is_set() and not self._closing \
                and self.ib.isConnected():
            self.connected.set()
            self._say("link_restored", f"IB error {code}: {message}")
            self.loop.create_task(self._run_callbacks())

    async def _run_callbacks(self) -> None:
        for fn in self._reconnect_cbs:
            try:
                out = fn()
                if inspect.isawaitable(out):
                    await out
            except Exception:
                logger.exception("reconnect callback failed")

    async def _reconnect(self) -> None:
        tries = 0
        while not self._closing:
            delay = self.backoff[min(tries, len(self.backoff) - 1)]
            tries += 1
            await asyncio.sleep(delay)
            if self._closing:
                return
            try:
                await self._connect_once()
            except BaseException as exc:  # noqa: BLE001 - keep trying
                if isinstance(exc, asyncio.CancelledError):
                    raise
                logger.warning("reconnect %d to %s failed: %s", tries, self.address, exc)
                continue
            self.reconnects += 1
            self._socket_up = True
            self.connected.set()
            self._say("reconnected", f"{self.address} after {tries} tries")
            await self._run_callbacks()
            return

    def close(self) -> None:
        """Disconnect (no reconnect after) and stop the IB thread."""
        self._closing = True
        if self.loop is None:
            return
        if self.ib is not None:
            try:
                self.run(self.ib.disconnect, timeout=2.0)
            except Exception:  # noqa: BLE001 - closing anyway
                pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        if self._thread is not None:
            self._thread.join(2.0)
        self._thread = None
        self.connected.clear()
