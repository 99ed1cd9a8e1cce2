"""The compiled bar loop of :mod:`m2k_bt.kernel.simulation` (numba, cached on disk).

One function, :func:`run_loop`, replays what cerebro does for a direction-trading strategy
(:class:`~m2k_bt.strategies.base.M2KStrategy`: a direction per bar, with exit masks and entry
filters; the loop knows no strategy) on one feed, bar by bar, in backtrader's order: the
broker's ``next`` (activate bracket children, check submitted orders against cash by
pseudo-execution at the order's created price, execute pending orders at the open / stop / limit
with slippage clipped to the bar, mark to market, value, ``FuturesBroker``'s maintenance-margin
and negative-equity checks), then the strategy's notifications (trade log, re-entry blocks,
bracket state), then ``M2KStrategy.next`` (paper trades, flat window, signal, exit, roll, entry
with the sizer), then the per-bar record. Every float operation follows backtrader's and the
strategy's order of operations, so the results are the same numbers, not merely close ones.

The trading rules themselves (fill prices and slippage, commission, P&L and cash adjustment,
margin held, maintenance requirement, margin call, intraday cut-back, the Kelly decision) are
the rulebook's (:mod:`m2k_bt.rules`), the functions the backtrader classes call too; numba
compiles them into this loop. What stays here is the machinery: order slots and their life
cycle, the strategy's state and the records.

Speed: most bars are quiet (no order in use or alive, no paper trade to fill, nothing in the
margin checks, the signal wanting what is held); :func:`_quiet_bars` runs those in a small
function of its own, and only the others go through the whole machinery. The output tables grow
between bars, never inside the bar loop (numba would pay a reference count per bar for a table
that might be replaced in it).

Numba caches these functions with the rules compiled in and does not notice a change to a file
under ``rules/`` alone: after editing a rule, delete ``kernel/__pycache__/loop.*.nb*`` (or touch
this file).

Codes used in the arrays (see :mod:`m2k_bt.kernel.simulation`): reasons 0 signal, 1 stop, 2 target,
3 session_close, 4 margin_call, 5 roll, 6 end, 7 event; order types 0 market, 1 stop, 2 limit.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..rules import fees, kelly, money, pnl, prices
from ..rules import margin as mrules

# order slots
K = 48
FREE, SUBMITTED, PENDING, DONE = 0, 1, 2, 3
MARKET, STOP, LIMIT = prices.MARKET, prices.STOP, prices.LIMIT
R_SIGNAL, R_STOP, R_TARGET, R_SESSION, R_MARGIN, R_ROLL, R_END, R_EVENT = 0, 1, 2, 3, 4, 5, 6, 7
EV_COMPLETED, EV_MARGIN, EV_REJECTED, EV_CANCELED, EV_PARTIAL = 1, 2, 3, 4, 5

# trade rows
T_ENTRY_I, T_EXIT_I, T_DIR, T_CONTRACTS, T_ENTRY_PX, T_EXIT_PX, T_GROSS, T_COMM = range(8)
T_NET, T_BARS, T_REASON, T_KP, T_KB, T_KF, T_FILL_I, T_ID = range(8, 16)
T_COLS = 16
# decision rows: bar, p, b, f_star, f_used, equity, risk, contracts, binding, trades_used
D_COLS = 10
# margin events: bar, kind (0 margin_call, 1 negative_equity, 2 intraday_cutback), equity,
# requirement, contracts
E_COLS = 5
# int params
(IP_LONG_ONLY, IP_FIRST, IP_SIZER, IP_FIXED, IP_LOOKBACK, IP_MIN_TRADES,
 IP_WARMUP, IP_MAXC, IP_PAPER, IP_RTH, IP_FLAT, IP_LIQUIDATE, IP_HAS_BRACKET, IP_EXP_NUM,
 IP_EXP_DEN, IP_EVENTS, IP_FLAT_EVENT, IP_EXTERNAL) = range(18)
N_IP = 18
# filter records (the strategy's event_log, rebuilt in kernel.analysis): bar, action, direction,
# event index; actions:
F_BLOCKED, F_FORCED, F_SIGNAL = 0, 1, 2
#: A direction meaning "no opinion on this bar: keep what is held" (a signal's NaN after its
#: first value), subject to the exit masks.
KEEP = 2
# Most rows a bar can add to each table (the loop makes room for them before the bar): a
# trade closes on a fill, at most one fill per order slot; one Kelly decision (the entry); a
# negative-equity record and the two phases of the margin check; a forced close and a blocked
# entry (an event bar), or one blocked or refused entry.
TRADES_PER_BAR, DEC_PER_BAR, MEV_PER_BAR, FREC_PER_BAR = K, 1, 3, 2
# float params (FP_SLIP: slippage in ticks)
(FP_CASH, FP_COMM, FP_MULT, FP_MARGIN, FP_MAINT, FP_TICK, FP_SLIP, FP_SCALE, FP_MAXFRAC,
 FP_P10, FP_INTRADAY) = range(11)
N_FP = 11


@njit(cache=True)
def _grow(a):
    b = np.full((a.shape[0] * 2, a.shape[1]), np.nan)
    b[: a.shape[0]] = a
    return b


@njit(cache=True)
def _grow_rows(a):
    b = np.full((a.shape[0] * 2, a.shape[1]), -1, np.int64)
    b[: a.shape[0]] = a
    return b


@njit(cache=True, inline="always")
def _record(frec, nfrec, i, action, direction, event):
    """Write a filter record (bar, action, direction, event index) in row ``nfrec`` of
    ``frec`` (room made before the bar: :data:`FREC_PER_BAR`); returns the new length."""
    frec[nfrec, 0] = i
    frec[nfrec, 1] = action
    frec[nfrec, 2] = direction
    frec[nfrec, 3] = event
    return nfrec + 1


@njit(cache=True, inline="always")
def _wanted(d, held, exit_long, exit_short):
    """The direction wanted on a bar (``M2KStrategy._wanted``): ``d``, or for :data:`KEEP` the
    direction ``held``, unless an exit mask closes it."""
    if d != KEEP:
        return d
    if (held > 0 and exit_long) or (held < 0 and exit_short):
        return 0
    return held


@njit(cache=True, inline="always")
def _mark(cash, adjbase, psize, pprice, close, margin, mult):
    """The broker's end of bar: the position marked to ``close`` (cash settled from
    ``adjbase``), and the account value; returns ``(cash, adjbase, value)``."""
    if psize:
        cash += pnl.pnl(psize, adjbase, close, mult)
        adjbase = close
        pv = mrules.margin_held(psize, margin)
        unreal = pnl.pnl(psize, pprice, close, mult)
        return cash, adjbase, cash + ((pv - unreal) / 1.0 + unreal)
    return cash, adjbase, cash + 0.0


@njit(cache=True, inline="always")
def _usual(target, psize, sh_open, sh_dir):
    """Whether a bar's ``target`` leaves everything as it is: the position already points
    there and no paper trade is open, or flat with the paper trade pointing there."""
    held = pnl.sign(psize)
    return (held == target and not sh_open) or (held == 0 and sh_open and sh_dir == target)


@njit(cache=True)
def _quiet_bars(start, n, c, sig, exit_long, exit_short, roll, flatw, ev, inwin, first,
                long_only, has_flat, flat_events, has_intraday, active, psize, pprice, margin,
                maint, mult, sh_open, sh_dir, cash, adjbase, value, negative, blocked,
                out_value, out_cash, out_pos, out_active):
    """Run the bars from ``start`` on which nothing happens, as :func:`run_loop` would: called
    with no order slot in use, no order alive and no paper trade to fill, a bar is quiet when
    the intraday regime holds, the account meets its maintenance margin (or holds nothing that
    needs it), and the strategy, past its first bar, is in no flat window or event bar and
    wants what it holds (no roll). Such a bar only marks the position to market, settles the
    re-entry block and writes its record. Returns the first bar that is not quiet (``n`` at
    the end; that bar is left untouched, for :func:`run_loop`) and the state after the quiet
    ones: ``(bar, cash, adjbase, value, negative, blocked)``."""
    for i in range(start, n):
        u = np.uint64(i)  # an unsigned index: numba leaves out the negative-index wraparound
        if has_intraday and i >= 1 and inwin[u] != active:
            return i, cash, adjbase, value, negative, blocked
        new_cash, new_adjbase, new_value = _mark(cash, adjbase, psize, pprice, c[u], margin,
                                                 mult)
        requirement = mrules.requirement(psize, maint)
        new_negative = negative
        if mrules.margin_ok(new_value, requirement):
            new_negative = False
        elif requirement:
            return i, cash, adjbase, value, negative, blocked
        if i >= first:
            if (flat_events and ev[u] >= 0) or (has_flat and flatw[u]) or roll[u]:
                return i, cash, adjbase, value, negative, blocked
            wanted = _wanted(sig[u], pnl.sign(psize), exit_long[u], exit_short[u])
            target = max(wanted, 0) if long_only else wanted
            if not _usual(target, psize, sh_open, sh_dir):
                return i, cash, adjbase, value, negative, blocked
            if blocked and target != blocked:
                blocked = 0
        cash, adjbase, value, negative = new_cash, new_adjbase, new_value, new_negative
        out_value[u] = value
        out_cash[u] = cash
        out_pos[u] = psize
        out_active[u] = active
    return n, cash, adjbase, value, negative, blocked


@njit(cache=True)
def run_loop(o, h, lw, c, ct, sig, exit_long, exit_short, allow_long, allow_short, rth, flatw,
             roll, stop_n, target_n, inwin, ev, ext_ok, ip, fp):
    n = len(c)
    long_only = ip[IP_LONG_ONLY]
    has_events = ip[IP_EVENTS] != 0
    flat_events = has_events and ip[IP_FLAT_EVENT] != 0
    has_ext = ip[IP_EXTERNAL] != 0
    frec = np.full((64, 4), -1, np.int64)  # filter records
    nfrec = 0
    first, sizer_kind, fixed_n = ip[IP_FIRST], ip[IP_SIZER], ip[IP_FIXED]
    lookback, min_trades, warmup_n, max_c = ip[IP_LOOKBACK], ip[IP_MIN_TRADES], ip[IP_WARMUP], \
        ip[IP_MAXC]
    paper, rth_only, has_flat, liquidate = ip[IP_PAPER], ip[IP_RTH], ip[IP_FLAT], ip[IP_LIQUIDATE]
    commission, mult, margin, maint = fp[FP_COMM], fp[FP_MULT], fp[FP_MARGIN], fp[FP_MAINT]
    tick, p10 = fp[FP_TICK], fp[FP_P10]
    per_point = mult * 100.0  # cents of contract value per point (rules.prices.to_units)
    slip = prices.slip_cents(fp[FP_SLIP], tick, per_point)  # cents of contract value
    comm_cents = money.to_cents(commission)  # per contract per side
    kscale, kmaxfrac = fp[FP_SCALE], fp[FP_MAXFRAC]
    exp_num, exp_den = ip[IP_EXP_NUM], ip[IP_EXP_DEN]
    intraday = fp[FP_INTRADAY]  # NaN: no intraday margin
    has_intraday = not np.isnan(intraday)
    overnight = margin
    active = False  # the intraday regime (FuturesBroker._update_regime)

    # ---------------------------------------------------------------- broker state
    cash = fp[FP_CASH]
    psize = 0
    pprice = 0.0
    adjbase = 0.0
    value = cash
    negative = False
    # order slots
    o_status = np.zeros(K, np.int64)
    o_type = np.zeros(K, np.int64)
    o_size = np.zeros(K, np.int64)
    o_price = np.zeros(K)
    o_bar = np.zeros(K, np.int64)
    o_reason = np.zeros(K, np.int64)
    o_group = np.full(K, -1, np.int64)  # bracket / oco group id
    o_parent = np.zeros(K, np.bool_)  # the group's parent (a bracket's entry)
    o_active = np.zeros(K, np.bool_)
    o_toact = np.zeros(K, np.bool_)
    o_seq = np.zeros(K, np.int64)  # submission, then acceptance order
    o_kelly = np.full(K, -1, np.int64)
    o_roll = np.zeros(K, np.bool_)  # a roll's reopening order (continues the signal trade)
    o_child = np.zeros(K, np.bool_)
    o_tracked = np.zeros(K, np.bool_)
    o_ours = np.zeros(K, np.bool_)  # cancelled by the strategy
    o_exsize = np.zeros(K, np.int64)
    o_expx = np.zeros(K)
    o_excomm = np.zeros(K)
    group_alive = np.zeros(4 * n + 16, np.bool_)
    next_group = 0
    seq = 0
    # slots from hi up are FREE (a new order takes the lowest FREE slot): the scans of
    # the slots stop at hi, and the order machinery is skipped on bars with none in use
    hi = 0
    # events of the bar, delivered to the strategy after the broker's next
    ev_kind = np.zeros(4 * K, np.int64)
    ev_slot = np.zeros(4 * K, np.int64)
    nev = 0

    # ---------------------------------------------------------------- strategy state
    live = 0
    br0 = -1  # bracket children protecting the position
    br1 = -1
    br_stop = np.nan
    br_limit = np.nan
    blocked = 0
    t_open = False
    t_dir = 0
    t_entry_i = 0
    t_entry_bar = 0
    t_kelly = -1
    t_size = 0
    t_entry_u = 0  # fills in cents of contract value x contracts (strategies.trades.OpenTrade)
    t_entry_n = 0
    t_exit_u = 0
    t_exit_n = 0
    t_comm = 0  # cents
    sh_open = False
    sh_dir = 0
    sh_px = 0.0
    sh_next = 0
    sh_exit = False
    rolls = 0
    rej_margin = 0
    rej_rejected = 0
    rej_canceled = 0
    unsupported = 0
    # Kelly window: per-contract net P&L of closed trades (real and paper), in closing order
    win = np.zeros(max(lookback, 1), np.int64)  # rules.money.per_contract: 1/100 cent
    win_n = 0
    win_pos = 0
    # a roll's legs are one Kelly sample (sizers.signal_trades): the legs closed so far
    pend = False
    pend_net = 0  # cents
    pend_n = 0
    pend_id = 0
    tid = 0  # signal trades numbered so far (trade_id)
    t_id = 0
    n_shadow = 0

    trades = np.full((256, T_COLS), np.nan)
    ntr = 0
    dec = np.full((256, D_COLS), np.nan)
    ndec = 0
    mev = np.full((64, E_COLS), np.nan)
    nmev = 0
    out_value = np.empty(n)
    costs = np.zeros(5)  # fills, contracts, commission, slippage $, slippage ticks x contracts
    out_cash = np.empty(n)
    out_pos = np.empty(n)
    out_active = np.zeros(n, np.bool_)

    # The bars run in stretches: the tables (trades, decisions, margin events, filter records)
    # grow here, between two bars, and a stretch ends before a bar that might not fit in
    # them. A table reassigned inside the bar loop would cost numba a reference-count pair
    # (an atomic operation) at every join of the loop body, bar after bar: half the loop's
    # time on a bar with nothing to do.
    start = 0
    while start < n:
        while ntr + TRADES_PER_BAR > trades.shape[0]:
            trades = _grow(trades)
        while ndec + DEC_PER_BAR > dec.shape[0]:
            dec = _grow(dec)
        while nmev + MEV_PER_BAR > mev.shape[0]:
            mev = _grow(mev)
        while nfrec + FREC_PER_BAR > frec.shape[0]:
            frec = _grow_rows(frec)
        if not hi and not live and not sh_exit and not sh_next:
            start, cash, adjbase, value, negative, blocked = _quiet_bars(
                start, n, c, sig, exit_long, exit_short, roll, flatw, ev, inwin, first,
                long_only, has_flat, flat_events, has_intraday, active, psize, pprice, margin,
                maint, mult, sh_open, sh_dir, cash, adjbase, value, negative, blocked,
                out_value, out_cash, out_pos, out_active)
        stop = n
        for i in range(start, n):
            if (ntr + TRADES_PER_BAR > trades.shape[0] or ndec + DEC_PER_BAR > dec.shape[0]
                    or nmev + MEV_PER_BAR > mev.shape[0]
                    or nfrec + FREC_PER_BAR > frec.shape[0]):
                stop = i
                break
            # =============================================================== broker.next
            closing_window = False
            if has_intraday and i >= 1:  # from bar 1 the broker knows the data (a position entry)
                now = inwin[i]
                if now != active:
                    before = margin
                    active = now
                    margin = mrules.regime_margin(active, overnight, intraday)
                    maint = mrules.regime_margin(active, fp[FP_MAINT], intraday)
                    cash = mrules.rebase_cash(cash, psize, before, margin)  # equity unchanged
                    closing_window = not active
            if hi:
                for k in range(hi):
                    if o_toact[k]:
                        o_toact[k] = False
                        o_active[k] = True
            # -- check_submitted: pseudo-execute at the created price, in submission order
            ccash = cash
            csize = psize
            while hi:
                k = -1
                best = 1 << 62
                for j in range(hi):
                    if o_status[j] == SUBMITTED and o_seq[j] < best:
                        best = o_seq[j]
                        k = j
                if k < 0:
                    break
                g = o_group[k]
                if o_child[k] and g >= 0 and not group_alive[g]:
                    o_status[k] = DONE  # parent gone: backtrader rejects the child
                    ev_kind[nev] = EV_REJECTED
                    ev_slot[nev] = k
                    nev += 1
                    continue
                size = o_size[k]
                price = o_price[k]
                opened, closed = pnl.open_close(csize, size)
                csize = csize + size
                if closed:
                    ccash += mrules.margin_held(closed, margin) + 0.0
                    ccash -= fees.commission(closed, commission)
                if opened:
                    ccash -= mrules.margin_held(opened, margin)
                    ccash -= fees.commission(opened, commission)
                if ccash >= 0.0:
                    o_status[k] = PENDING
                    o_seq[k] = seq
                    seq += 1
                    continue
                o_status[k] = DONE
                ev_kind[nev] = EV_MARGIN
                ev_slot[nev] = k
                nev += 1
                if g >= 0 and group_alive[g]:  # cancel what of the group is pending
                    group_alive[g] = False
                    for j in range(hi):
                        if o_group[j] == g and o_status[j] == PENDING:
                            o_status[j] = DONE
                            ev_kind[nev] = EV_CANCELED
                            ev_slot[nev] = j
                            nev += 1
            # -- pending orders, in acceptance order
            last_seq = seq
            cur = -1
            while hi:
                k = -1
                best = 1 << 62
                for j in range(hi):
                    if o_status[j] == PENDING and o_seq[j] > cur and o_seq[j] < best \
                            and o_seq[j] < last_seq:
                        best = o_seq[j]
                        k = j
                if k < 0:
                    break
                cur = o_seq[k]
                if not o_active[k]:
                    continue
                size = o_size[k]
                buy = size > 0
                op = o[i]
                t = o_type[k]
                if t == MARKET and o_bar[k] >= i:
                    continue  # a market order fills from the bar after its creation
                fill = prices.fill_price(t, buy, o_price[k], op, h[i], lw[i], slip, per_point)
                if np.isnan(fill):
                    continue
                # -- _execute(order, ago=0, price=fill)
                price = fill
                opened, closed = pnl.open_close(psize, size)
                ecash = cash
                closedcomm = 0.0
                openedcomm = 0.0
                if closed:
                    ecash += mrules.margin_held(closed, margin) + 0.0
                    closedcomm = fees.commission(closed, commission)
                    ecash -= closedcomm
                    ecash += pnl.pnl(-closed, adjbase, price, mult)
                    cash = ecash
                popened = opened
                if opened:
                    ecash -= mrules.margin_held(opened, margin)
                    openedcomm = fees.commission(opened, commission)
                    ecash -= openedcomm
                    if ecash < 0.0:
                        opened = 0
                        openedcomm = 0.0
                    else:
                        after = psize + closed + opened
                        if abs(after) > abs(opened):
                            ecash += pnl.pnl(after - opened, adjbase, price, mult)
                        adjbase = price
                        cash = ecash
                execsize = closed + opened
                if execsize:
                    pprice = pnl.average_price(psize, pprice, execsize, price)
                    psize = psize + execsize
                    o_exsize[k] = execsize
                    o_expx[k] = price
                    o_excomm[k] = closedcomm + openedcomm
                    # CostAnalyzer: the price backtrader's rules give this order with no slippage
                    ref = prices.reference_price(t, buy, o_price[k], op)
                    costs[0] += 1
                    costs[1] += abs(execsize)
                    costs[2] += closedcomm + openedcomm
                    costs[3] += (price - ref) * execsize * mult
                    costs[4] += (price - ref) * execsize / tick
                g = o_group[k]
                if popened and not opened:
                    # not enough cash for the opening part: Margin, after any closing part, which
                    # backtrader executes and notifies first (Partial), e.g. the strategy's own
                    # close meeting a cut-back that already reduced the position
                    o_status[k] = DONE
                    if execsize:
                        ev_kind[nev] = EV_PARTIAL
                        ev_slot[nev] = k
                        nev += 1
                    ev_kind[nev] = EV_MARGIN
                    ev_slot[nev] = k
                    nev += 1
                    if g >= 0 and group_alive[g]:
                        group_alive[g] = False
                        for j in range(hi):
                            if o_group[j] == g and o_status[j] == PENDING:
                                o_status[j] = DONE
                                ev_kind[nev] = EV_CANCELED
                                ev_slot[nev] = j
                                nev += 1
                    continue
                o_status[k] = DONE
                ev_kind[nev] = EV_COMPLETED
                ev_slot[nev] = k
                nev += 1
                if g >= 0 and group_alive[g]:
                    if o_parent[k]:
                        for j in range(hi):  # a bracket parent filled: its children go live
                            if o_group[j] == g and o_status[j] == PENDING and j != k:
                                o_toact[j] = True
                    else:  # a child (or an oco member) filled: the others go
                        group_alive[g] = False
                        for j in range(hi):
                            if o_group[j] == g and o_status[j] == PENDING:
                                o_status[j] = DONE
                                ev_kind[nev] = EV_CANCELED
                                ev_slot[nev] = j
                                nev += 1
            # -- end of bar: mark to market, value
            cash, adjbase, value = _mark(cash, adjbase, psize, pprice, c[i], margin, mult)
            # -- FuturesBroker: maintenance margin, intraday cut-back and negative equity
            requirement = mrules.requirement(psize, maint)
            check = closing_window
            if not closing_window:
                if mrules.margin_ok(value, requirement):
                    negative = False
                elif requirement:
                    check = True
            if check:
                if value < 0 and not negative and psize:
                    mev[nmev, 0] = i
                    mev[nmev, 1] = 1
                    mev[nmev, 2] = value
                    mev[nmev, 3] = 0.0
                    mev[nmev, 4] = psize
                    nmev += 1
                negative = value < 0
                for phase in range(2):
                    forced_alive = False
                    for j in range(hi):
                        if o_status[j] == PENDING and o_reason[j] == R_MARGIN:
                            forced_alive = True
                    fsize = 0
                    if phase == 0:
                        if not closing_window or not psize or forced_alive:
                            continue
                        cut = mrules.cutback_contracts(psize, value, overnight)
                        if not cut:
                            continue
                        ekind = 2
                        ereq = mrules.margin_held(psize, overnight)
                        fsize = -cut if psize > 0 else cut
                    else:
                        requirement = mrules.requirement(psize, maint)
                        if not mrules.margin_call(value, requirement) or forced_alive:
                            continue
                        ekind = 0
                        ereq = requirement
                        fsize = -psize
                    mev[nmev, 0] = i
                    mev[nmev, 1] = ekind
                    mev[nmev, 2] = value
                    mev[nmev, 3] = ereq
                    mev[nmev, 4] = psize
                    nmev += 1
                    if liquidate:
                        k = -1
                        for j in range(K):
                            if o_status[j] == FREE:
                                k = j
                                break
                        o_status[k] = PENDING
                        hi = max(hi, k + 1)
                        o_type[k] = MARKET
                        o_size[k] = fsize
                        o_price[k] = c[i]
                        o_bar[k] = i
                        o_reason[k] = R_MARGIN
                        o_group[k] = -1
                        o_parent[k] = False
                        o_active[k] = True
                        o_toact[k] = False
                        o_seq[k] = seq
                        seq += 1
                        o_kelly[k] = -1
                        o_roll[k] = False
                        o_child[k] = False
                        o_tracked[k] = False
                        o_ours[k] = False

            # =============================================================== notifications
            for e in range(nev):
                k = ev_slot[e]
                ek = ev_kind[e]
                if ek == EV_COMPLETED or ek == EV_PARTIAL:
                    # _record_fill -> _apply_fill
                    dsize = o_exsize[k]
                    units = prices.to_units(o_expx[k], per_point)
                    comm = money.to_cents(o_excomm[k])
                    qty = abs(dsize)
                    if t_open and pnl.sign(dsize) != t_dir:
                        closing = min(qty, t_size)
                        share = comm * closing // qty
                        t_size -= closing
                        t_exit_u += units * closing
                        t_exit_n += closing
                        t_comm += share
                        qty -= closing
                        comm -= share
                        if t_size == 0:
                            gross = pnl.trade_gross_cents(t_dir, t_entry_u, t_exit_u)
                            net = gross - t_comm
                            trades[ntr, T_ENTRY_I] = t_entry_i
                            trades[ntr, T_EXIT_I] = i
                            trades[ntr, T_DIR] = t_dir
                            trades[ntr, T_CONTRACTS] = t_entry_n
                            trades[ntr, T_ENTRY_PX] = pnl.average_fill(t_entry_u, t_entry_n,
                                                                       per_point)
                            trades[ntr, T_EXIT_PX] = pnl.average_fill(t_exit_u, t_exit_n, per_point)
                            trades[ntr, T_GROSS] = money.dollars(gross)
                            trades[ntr, T_COMM] = money.dollars(t_comm)
                            trades[ntr, T_NET] = money.dollars(net)
                            trades[ntr, T_BARS] = (i + 1) - t_entry_bar
                            trades[ntr, T_REASON] = o_reason[k]
                            trades[ntr, T_ID] = t_id
                            if t_kelly >= 0:
                                trades[ntr, T_KP] = dec[t_kelly, 1]
                                trades[ntr, T_KB] = dec[t_kelly, 2]
                                trades[ntr, T_KF] = dec[t_kelly, 3]
                            ntr += 1
                            if o_reason[k] == R_ROLL:
                                if not pend:
                                    pend = True
                                    pend_net = 0
                                    pend_n = t_entry_n
                                    pend_id = t_id
                                pend_net += net
                            elif lookback > 0:
                                if pend:
                                    win[win_pos] = money.per_contract(pend_net + net, pend_n)
                                    pend = False
                                else:
                                    win[win_pos] = money.per_contract(net, t_entry_n)
                                win_pos = (win_pos + 1) % lookback
                                win_n = min(win_n + 1, lookback)
                            else:
                                pend = False
                            t_open = False
                    if qty:
                        if not t_open:
                            if pend and o_roll[k]:
                                t_id = pend_id  # the roll's new leg
                            else:
                                if pend:  # a roll whose reopening never filled: one leg
                                    pend = False
                                    if lookback > 0:
                                        win[win_pos] = money.per_contract(pend_net, pend_n)
                                        win_pos = (win_pos + 1) % lookback
                                        win_n = min(win_n + 1, lookback)
                                tid += 1
                                t_id = tid
                            t_open = True
                            t_dir = pnl.sign(dsize)
                            t_entry_i = i
                            t_entry_bar = i + 1
                            t_kelly = o_kelly[k]
                            t_size = 0
                            t_entry_u = 0
                            t_entry_n = 0
                            t_exit_u = 0
                            t_exit_n = 0
                            t_comm = 0
                        t_size += qty
                        t_entry_u += units * qty
                        t_entry_n += qty
                        t_comm += comm
                if ek == EV_PARTIAL:
                    continue  # still alive: its Margin follows
                if o_tracked[k]:
                    live -= 1
                    o_tracked[k] = False
                # _finish
                reason = o_reason[k]
                if ek != EV_COMPLETED and o_roll[k] and pend:
                    # the roll's reopening died: the signal trade ended at the roll, one sample
                    pend = False
                    if lookback > 0:
                        win[win_pos] = money.per_contract(pend_net, pend_n)
                        win_pos = (win_pos + 1) % lookback
                        win_n = min(win_n + 1, lookback)
                if ek == EV_COMPLETED:
                    if reason == R_MARGIN:
                        blocked = -pnl.sign(o_exsize[k])
                        for b in (br0, br1):  # _cancel_bracket
                            if b >= 0 and o_status[b] == PENDING:
                                o_ours[b] = True
                                o_status[b] = DONE
                                gb = o_group[b]
                                if gb >= 0 and group_alive[gb]:
                                    group_alive[gb] = False
                                    for j in range(hi):
                                        if o_group[j] == gb and o_status[j] == PENDING:
                                            o_status[j] = DONE
                        br0 = -1
                        br1 = -1
                        r_stop = br_stop
                        r_limit = br_limit
                        br_stop = np.nan
                        br_limit = np.nan
                        if psize:  # re-protect what is left, at the same prices (oco pair)
                            g = -1
                            if not (np.isnan(r_stop) or np.isnan(r_limit)):
                                g = next_group
                                next_group += 1
                                if g >= group_alive.shape[0]:
                                    unsupported = 3
                                    g = group_alive.shape[0] - 1
                                group_alive[g] = True
                            for which in range(2):
                                px = r_stop if which == 0 else r_limit
                                if np.isnan(px):
                                    continue
                                kk = -1
                                for j in range(K):
                                    if o_status[j] == FREE:
                                        kk = j
                                        break
                                o_status[kk] = SUBMITTED
                                hi = max(hi, kk + 1)
                                o_type[kk] = STOP if which == 0 else LIMIT
                                o_size[kk] = -psize
                                o_price[kk] = px
                                o_bar[kk] = i
                                o_reason[kk] = R_STOP if which == 0 else R_TARGET
                                o_group[kk] = g
                                o_parent[kk] = False
                                o_active[kk] = True
                                o_toact[kk] = False
                                o_seq[kk] = seq
                                seq += 1
                                o_kelly[kk] = -1
                                o_roll[kk] = False
                                o_child[kk] = True
                                o_tracked[kk] = False
                                o_ours[kk] = False
                                if br0 < 0:
                                    br0 = kk
                                else:
                                    br1 = kk
                            br_stop = r_stop
                            br_limit = r_limit
                    elif o_child[k]:
                        br0 = -1
                        br1 = -1
                        br_stop = np.nan
                        br_limit = np.nan
                        if reason == R_STOP or reason == R_TARGET:
                            blocked = -pnl.sign(o_exsize[k])
                    continue
                if ek == EV_CANCELED and (o_ours[k] or o_child[k]):
                    continue
                if ek == EV_MARGIN:
                    rej_margin += 1
                elif ek == EV_REJECTED:
                    rej_rejected += 1
                else:
                    rej_canceled += 1
                entry = reason == R_SIGNAL and pnl.sign(o_size[k]) != -pnl.sign(psize)
                if entry and (ek == EV_MARGIN or ek == EV_REJECTED):
                    blocked = pnl.sign(o_size[k])
            nev = 0
            if hi:
                for k in range(hi):
                    if o_status[k] == DONE:
                        o_status[k] = FREE
                        o_group[k] = -1
                while hi and o_status[hi - 1] == FREE:
                    hi -= 1

            # =============================================================== strategy.next
            if i >= first:
                # _fill_shadow
                if sh_exit or sh_next:
                    price = o[i]
                    if sh_exit and sh_open:
                        net = pnl.paper_trade_net(sh_px, price, sh_dir, per_point, comm_cents, slip)
                        n_shadow += 1
                        if paper and lookback > 0:
                            win[win_pos] = money.per_contract(net, 1)
                            win_pos = (win_pos + 1) % lookback
                            win_n = min(win_n + 1, lookback)
                        sh_open = False
                    sh_exit = False
                    if sh_next:
                        sh_open = True
                        sh_dir = sh_next
                        sh_px = price
                        sh_next = 0
                # M2KStrategy._event_bar: with flat_before_event, a bar whose next bar overlaps
                # an avoided event's window closes the position (reason 'event') and enters nothing
                ev_bar = False
                if flat_events:
                    ev_bar = ev[i] >= 0
                if live:
                    pass
                elif ev_bar or (has_flat and flatw[i]):
                    held0 = pnl.sign(psize)
                    if psize:
                        if ev_bar:
                            nfrec = _record(frec, nfrec, i, F_FORCED, held0, ev[i])
                        # _close('session_close') / _close('event')
                        for b in (br0, br1):
                            if b >= 0 and o_status[b] == PENDING:
                                o_ours[b] = True
                                o_status[b] = DONE
                                gb = o_group[b]
                                if gb >= 0 and group_alive[gb]:
                                    group_alive[gb] = False
                                    for j in range(hi):
                                        if o_group[j] == gb and o_status[j] == PENDING:
                                            o_status[j] = DONE
                                o_group[b] = -1
                        br0 = -1
                        br1 = -1
                        br_stop = np.nan
                        br_limit = np.nan
                        k = -1
                        for j in range(K):
                            if o_status[j] == FREE:
                                k = j
                                break
                        o_status[k] = SUBMITTED
                        hi = max(hi, k + 1)
                        o_type[k] = MARKET
                        o_size[k] = -psize
                        o_price[k] = c[i]
                        o_bar[k] = i
                        o_reason[k] = R_EVENT if ev_bar else R_SESSION
                        o_group[k] = -1
                        o_parent[k] = False
                        o_active[k] = True
                        o_toact[k] = False
                        o_seq[k] = seq
                        seq += 1
                        o_kelly[k] = -1
                        o_roll[k] = False
                        o_child[k] = False
                        o_tracked[k] = True
                        o_ours[k] = False
                        live += 1
                    # _check_shadow(0)
                    if sh_next and sh_next != 0:
                        sh_next = 0
                    if sh_open and sh_dir != 0:
                        sh_exit = True
                    if ev_bar:  # the entry the window refuses, logged
                        wanted = _wanted(sig[i], held0, exit_long[i], exit_short[i])
                        target = max(wanted, 0) if long_only else wanted
                        if blocked and target != blocked:
                            blocked = 0
                        if target and target != held0 and target != blocked:
                            nfrec = _record(frec, nfrec, i, F_BLOCKED, target, ev[i])
                else:
                    wanted = _wanted(sig[i], pnl.sign(psize), exit_long[i], exit_short[i])
                    target = max(wanted, 0) if long_only else wanted
                    if blocked and target != blocked:
                        blocked = 0
                    usual = not sh_next and not roll[i] and _usual(target, psize, sh_open,
                                                                    sh_dir)
                    if not usual:
                        # _check_shadow
                        if sh_next and sh_next != target:
                            sh_next = 0
                        if sh_open and sh_dir != target:
                            sh_exit = True
                        held = pnl.sign(psize)
                        do_close = 0
                        reopen = False
                        if held and held != target:
                            do_close = 1  # _check_exit
                        elif roll[i] and held and held == target:
                            do_close = 2  # _check_roll
                            reopen = True
                        r_stop = br_stop
                        r_limit = br_limit
                        r_kelly = t_kelly if t_open else -1
                        if do_close:
                            for b in (br0, br1):
                                if b >= 0 and o_status[b] == PENDING:
                                    o_ours[b] = True
                                    o_status[b] = DONE
                                    gb = o_group[b]
                                    if gb >= 0 and group_alive[gb]:
                                        group_alive[gb] = False
                                        for j in range(hi):
                                            if o_group[j] == gb and o_status[j] == PENDING:
                                                o_status[j] = DONE
                                    o_group[b] = -1
                            br0 = -1
                            br1 = -1
                            br_stop = np.nan
                            br_limit = np.nan
                            k = -1
                            for j in range(K):
                                if o_status[j] == FREE:
                                    k = j
                                    break
                            o_status[k] = SUBMITTED
                            hi = max(hi, k + 1)
                            o_type[k] = MARKET
                            o_size[k] = -psize
                            o_price[k] = c[i]
                            o_bar[k] = i
                            o_reason[k] = R_SIGNAL if do_close == 1 else R_ROLL
                            o_group[k] = -1
                            o_parent[k] = False
                            o_active[k] = True
                            o_toact[k] = False
                            o_seq[k] = seq
                            seq += 1
                            o_kelly[k] = -1
                            o_roll[k] = False
                            o_child[k] = False
                            o_tracked[k] = True
                            o_ours[k] = False
                            live += 1
                        # entry: the roll's reopen, or a new entry (_check_entry)
                        e_dir = 0
                        e_size = 0
                        e_kelly = -1
                        e_stop = np.nan
                        e_limit = np.nan
                        if reopen:
                            rolls += 1
                            e_dir = held
                            e_size = abs(psize)
                            e_kelly = r_kelly
                            e_stop = r_stop
                            e_limit = r_limit
                        elif target and held != target:
                            allowed = target != blocked
                            if allowed and rth_only and not rth[i]:
                                allowed = False
                            if allowed and has_events and ev[i] >= 0:
                                allowed = False  # an avoided event's window (_event_blocks)
                                nfrec = _record(frec, nfrec, i, F_BLOCKED, target, ev[i])
                            if allowed and has_ext and not ext_ok[i]:
                                allowed = False  # the external series (_external_ok)
                                nfrec = _record(frec, nfrec, i, F_SIGNAL, target, -1)
                            if allowed:
                                allowed = allow_long[i] if target > 0 else allow_short[i]
                            sh_dir_now = sh_dir if sh_open else 0
                            if allowed and not (target == sh_next or (sh_open
                                                                      and target == sh_dir_now)):
                                # _size_for
                                if sizer_kind == 0:
                                    e_size = fixed_n
                                else:
                                    # KellySizer.decide
                                    price = c[i]
                                    equity = value
                                    free_cash = money.to_cents(
                                        mrules.free_cash(cash, psize, target > 0, margin))
                                    nw = win_n
                                    stop_risk = np.nan
                                    if stop_n[i] >= 0:
                                        stop_risk = kelly.stop_risk(
                                            prices.tick_price(stop_n[i], tick, p10), mult)
                                    nwins, swin, nloss, sloss = kelly.tally(
                                        win, (win_pos - nw) % lookback, nw)
                                    contracts, binding, kp, kb, kf, f_used, risk = kelly.decide(
                                        nw, min_trades, warmup_n, nwins, swin, nloss, sloss,
                                        stop_risk, money.to_cents(equity), free_cash,
                                        prices.to_units(price, per_point), money.to_cents(margin),
                                        kscale, kmaxfrac, exp_num, exp_den, max_c)
                                    dec[ndec, 0] = i
                                    dec[ndec, 1] = kp
                                    dec[ndec, 2] = kb
                                    dec[ndec, 3] = kf
                                    dec[ndec, 4] = f_used
                                    dec[ndec, 5] = equity
                                    dec[ndec, 6] = risk
                                    dec[ndec, 7] = contracts
                                    dec[ndec, 8] = binding
                                    dec[ndec, 9] = nw
                                    e_kelly = ndec
                                    ndec += 1
                                    e_size = contracts
                                if e_size <= 0:
                                    sh_next = target  # declined: follow it on paper
                                    e_size = 0
                                else:
                                    e_dir = target
                                    if stop_n[i] >= 0:
                                        e_stop = prices.tick_price(ct[i] - target * stop_n[i],
                                                                   tick, p10)
                                    if target_n[i] >= 0:
                                        e_limit = prices.tick_price(
                                            ct[i] + target * target_n[i], tick, p10)
                        if e_dir and e_size > 0:
                            # _submit_entry
                            has_children = not (np.isnan(e_stop) and np.isnan(e_limit))
                            g = -1
                            if has_children:
                                g = next_group
                                next_group += 1
                                if g >= group_alive.shape[0]:
                                    unsupported = 3
                                    g = group_alive.shape[0] - 1
                                group_alive[g] = True
                            k = -1
                            for j in range(K):
                                if o_status[j] == FREE:
                                    k = j
                                    break
                            o_status[k] = SUBMITTED
                            hi = max(hi, k + 1)
                            o_type[k] = MARKET
                            o_size[k] = e_dir * e_size
                            o_price[k] = c[i]
                            o_bar[k] = i
                            o_reason[k] = R_SIGNAL
                            o_group[k] = g
                            o_parent[k] = has_children
                            o_active[k] = True
                            o_toact[k] = False
                            o_seq[k] = seq
                            seq += 1
                            o_kelly[k] = e_kelly
                            o_roll[k] = reopen
                            o_child[k] = False
                            o_tracked[k] = True
                            o_ours[k] = False
                            live += 1
                            if has_children:
                                br0 = -1
                                br1 = -1
                                for which in range(2):
                                    px = e_stop if which == 0 else e_limit
                                    if np.isnan(px):
                                        continue
                                    k = -1
                                    for j in range(K):
                                        if o_status[j] == FREE:
                                            k = j
                                            break
                                    o_status[k] = SUBMITTED
                                    hi = max(hi, k + 1)
                                    o_type[k] = STOP if which == 0 else LIMIT
                                    o_size[k] = -e_dir * e_size
                                    o_price[k] = px
                                    o_bar[k] = i
                                    o_reason[k] = R_STOP if which == 0 else R_TARGET
                                    o_group[k] = g
                                    o_parent[k] = False
                                    o_active[k] = False
                                    o_toact[k] = False
                                    o_seq[k] = seq
                                    seq += 1
                                    o_kelly[k] = -1
                                    o_roll[k] = False
                                    o_child[k] = True
                                    o_tracked[k] = False
                                    o_ours[k] = False
                                    if br0 < 0:
                                        br0 = k
                                    else:
                                        br1 = k
                                br_stop = e_stop
                                br_limit = e_limit
            out_value[i] = value
            out_cash[i] = cash
            out_pos[i] = psize
            out_active[i] = active
            if not hi and not live and not sh_exit and not sh_next:
                stop = i + 1  # what follows may be quiet
                break
        start = stop

    # stop(): an open trade is logged at the last close, no exit commission
    if t_open and t_size:
        t_exit_u += prices.to_units(c[n - 1], per_point) * t_size
        t_exit_n += t_size
        t_size = 0
        gross = pnl.trade_gross_cents(t_dir, t_entry_u, t_exit_u)
        if ntr == trades.shape[0]:
            trades = _grow(trades)
        trades[ntr, T_ENTRY_I] = t_entry_i
        trades[ntr, T_EXIT_I] = n - 1
        trades[ntr, T_DIR] = t_dir
        trades[ntr, T_CONTRACTS] = t_entry_n
        trades[ntr, T_ENTRY_PX] = pnl.average_fill(t_entry_u, t_entry_n, per_point)
        trades[ntr, T_EXIT_PX] = pnl.average_fill(t_exit_u, t_exit_n, per_point)
        trades[ntr, T_GROSS] = money.dollars(gross)
        trades[ntr, T_COMM] = money.dollars(t_comm)
        trades[ntr, T_NET] = money.dollars(gross - t_comm)
        trades[ntr, T_BARS] = n - t_entry_bar
        trades[ntr, T_REASON] = R_END
        trades[ntr, T_ID] = t_id
        if t_kelly >= 0:
            trades[ntr, T_KP] = dec[t_kelly, 1]
            trades[ntr, T_KB] = dec[t_kelly, 2]
            trades[ntr, T_KF] = dec[t_kelly, 3]
        ntr += 1
    counters = np.array([rolls, rej_margin, rej_rejected, rej_canceled, unsupported, n_shadow],
                        np.int64)
    return (out_value, out_cash, out_pos, trades[:ntr], dec[:ndec], mev[:nmev], counters, costs,
            out_active, frec[:nfrec])
