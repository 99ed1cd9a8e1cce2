"""Reading and validating M2K bar files: format detection, CSV reading, timestamps, checks.

:func:`load_bars` reads a vendor file into a clean frame (tz-aware New York index named
``datetime``, float ``open high low close volume``, optional ``openinterest``, ``contract`` and
``roll``). Validation is strict by default: a bad row raises :class:`DataFeedError` naming the
file, the line, the value and the fix. With ``lenient=True`` bad rows are repaired or dropped and
each change is listed in ``df.attrs["report"]`` (dicts with ``line``, ``timestamp``, ``problem``,
``action``), so nothing is lost silently.

Formats (``fmt``; detected from the header and first rows when ``None``):

- ``"generic"``: CSV with a header, any column order and case, one datetime column or separate
  ``date`` and ``time`` columns, ``.csv.gz`` too. ISO timestamps may carry a UTC offset.
- ``"yahoo"``: Yahoo Finance daily CSV (``Date``, ``null`` rows, ``Adj Close`` ignored).
- ``"ninjatrader"``: ``yyyyMMdd HHmmss;O;H;L;C;V`` without header.
- ``"databento"``: Databento OHLCV CSV (``ts_event`` in nanoseconds or ISO, ``symbol``).
- ``"backtrader"``: backtrader's sample format, a ``Date`` column then a ``Time`` column. A
  header's names are used whatever their order (a ``Date,Time,Close,High,...`` file is read by
  name, not position); a file without a header is read by position
  ``Date,Time,Open,High,Low,Close,Volume[,OpenInterest]``.

Naive timestamps are read in ``tz`` (default New York; Databento stamps are UTC); UTC offsets
(``-04:00``, ``+05``, ``Z``, `` UTC``) are honoured row by row. Numeric day/month dates
(``05/03/2024``) are read in the order the file settles or ``date_format`` gives; a column of
times without dates is refused. A date-only (daily) bar belongs to that trade date's session.

:class:`~m2k_bt.feeds.bars.BarsFeed` hands such a frame to cerebro from plain arrays;
:func:`~m2k_bt.feeds.bars.resample_bars` makes N-minute, hourly and daily (CME trade date) bars
without crossing the 17:00-18:00 break.
"""

from __future__ import annotations

import codecs
import csv
import datetime as _dt
import io
import math
import os
import re
import warnings
import zlib
from collections.abc import Callable

import numpy as np
import pandas as pd
from dateutil import parser as _dateutil

from ..contracts import M2K, ContractSpec
from ..errors import TRUE_WORDS, DataFeedError, did_you_mean
from ..sessions import NY, in_globex_session, is_trading_day
from .cache import cached_load

__all__ = [
    "FORMATS",
    "PRICE_COLUMNS",
    "load_bars",
    "validate_bars",
    "detect_format",
    "LineNumbers",
    "HINTS",
    "MAX_PRICE",
    "TICK_ABS_TOLERANCE",
]

#: Names accepted by ``load_bars(fmt=...)``.
FORMATS = ("generic", "yahoo", "ninjatrader", "databento", "backtrader")

PRICE_COLUMNS = ("open", "high", "low", "close")
#: The columns every bar frame has (also read by :mod:`m2k_bt.feeds.bars`).
BAR_COLUMNS = (*PRICE_COLUMNS, "volume")

# header aliases (lower case, spaces/underscores removed) -> our column name
_ALIASES = {
    "open": "open", "o": "open", "high": "high", "h": "high", "low": "low", "l": "low",
    "close": "close", "c": "close", "last": "close", "volume": "volume", "vol": "volume",
    "v": "volume", "openinterest": "openinterest", "oi": "openinterest",
    "contract": "contract", "symbol": "contract", "roll": "roll",
    "datetime": "datetime", "timestamp": "datetime", "ts": "datetime", "dt": "datetime",
    "tsevent": "datetime", "tseventutc": "datetime", "time": "time", "date": "date",
    "adjclose": "adjclose", "schema": "schema", "rtype": "rtype",
}  # fmt: skip

_NT_RE = re.compile(r"^\d{8} \d{6};")
_TIME_RE = re.compile(r"^\d{1,2}:\d{2}(:\d{2})?$")
#: A date field: ISO (year first) or numeric day/month in either order.
_DATE_FIELD_RE = re.compile(r"^(\d{4}-\d{1,2}-\d{1,2}|\d{1,2}[/.\-]\d{1,2}[/.\-]\d{2,4})$")


# --------------------------------------------------------------------------- reading


class LineNumbers:
    """Read-only file line numbers of a frame's rows, kept in ``df.attrs["lines"]``.

    pandas copies ``attrs`` into the result of every operation and, in ``concat`` and
    ``groupby``, compares the inputs' ``attrs`` with ``==``. A bare numpy array there breaks both
    (its ``==`` is elementwise, so pandas 3 raises "truth value of an array is ambiguous"). This
    wrapper compares as one bool (same numbers), is never deep-copied (it cannot change) and
    behaves like a sequence of ints: ``len``, indexing, iteration, ``tolist()``,
    ``np.asarray(lines)``.

    >>> lines = LineNumbers([2, 3, 5])
    >>> lines == LineNumbers([2, 3, 5]), lines.tolist(), int(lines[-1])
    (True, [2, 3, 5], 5)
    """

    __slots__ = ("_values",)

    def __init__(self, values) -> None:
        arr = np.array(values, dtype="int64")
        arr.flags.writeable = False
        self._values = arr

    def __eq__(self, other) -> bool:
        if self is other:
            return True
        if not isinstance(other, LineNumbers):
            return NotImplemented
        return bool(np.array_equal(self._values, other._values))

    __hash__ = None  # mutable-looking container semantics: not a dict key

    def __deepcopy__(self, memo) -> LineNumbers:
        return self  # immutable

    def __copy__(self) -> LineNumbers:
        return self

    def __len__(self) -> int:
        return len(self._values)

    def __getitem__(self, i):
        return self._values[i]

    def __iter__(self):
        return iter(self._values.tolist())

    def __array__(self, dtype=None, copy=None):
        arr = self._values if dtype is None else self._values.astype(dtype)
        return arr.copy() if copy else arr

    def tolist(self) -> list[int]:
        return self._values.tolist()

    def __repr__(self) -> str:
        return f"LineNumbers({self._values.tolist()!r})" if len(self) <= 10 else (
            f"LineNumbers(<{len(self)} lines {self._values[0]}..{self._values[-1]}>)"
        )


#: Fixes that messages suggest, each naming the command-line flag and the Python argument so one
#: text reads right in both. Every hint of this module comes from here.
HINTS = {
    "lenient": "load leniently (--lenient / lenient=True)",
    "tz": "add UTC offsets to the timestamps or give the file's time zone (--tz / tz=)",
    "no_contract": "skip the contract checks (--contract none / spec=None)",
    "snap": "round each price to the tick (--snap-to-tick / snap_to_tick=True)",
    "ratio": "a back-adjusted series must be ratio-adjusted (--adjust ratio / adjust='ratio')",
    "date": "read them as day/month/year (--date-format dmy / date_format='dmy') or as "
            "month/day/year (--date-format mdy / date_format='mdy')",
}

#: Absolute tolerance, in price points, within which a price counts as on the tick grid (float64
#: noise). The float32 rendering of an on-grid price (Yahoo writes 1408.699951171875 for 1408.7)
#: also counts as on the grid; anything else off the grid is reported.
TICK_ABS_TOLERANCE = 1e-6

#: Largest price accepted, in points: beyond it a value is corrupt or in fixed-point units (e.g.
#: Databento's 1e-9), not a quote. No futures contract or index is quoted near 1e9.
MAX_PRICE = 1e9

_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 16


def _fail_line(parts: list[bytes]) -> int:
    """Number of complete lines in the decoded ``parts``."""
    return sum(p.count(b"\n") for p in parts)


def _gunzip(data: bytes, path: str) -> bytes:
    """Decompress every gzip member of ``data``; corrupt or truncated data raises a
    :class:`DataFeedError` naming the last complete line before the damage."""
    parts: list[bytes] = []
    view = memoryview(data)
    pos = 0
    while True:
        unzip = zlib.decompressobj(wbits=31)
        try:
            while not unzip.eof and pos < len(view):
                parts.append(unzip.decompress(view[pos : pos + _CHUNK]))
                pos += _CHUNK
            parts.append(unzip.flush())
        except zlib.error as exc:
            raise DataFeedError(
                f"{path}: corrupt gzip data after line {_fail_line(parts)} ({exc}); the file is "
                f"damaged: download or compress it again"
            ) from exc
        if not unzip.eof:
            raise DataFeedError(
                f"{path}: the gzip data ends early, after line {_fail_line(parts)} (a truncated "
                f"file); download or compress it again"
            )
        rest = bytes(unzip.unused_data) + bytes(view[pos:])
        if not rest.strip(b"\x00"):  # the end, or zero padding
            return b"".join(parts)
        if not rest.startswith(_GZIP_MAGIC):
            raise DataFeedError(
                f"{path}: {len(rest)} bytes of junk after the gzip data (after line "
                f"{_fail_line(parts)}); download or compress the file again"
            )
        view, pos = memoryview(rest), 0  # another gzip member follows


def _decode(data: bytes, path: str) -> str:
    utf16 = data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE))
    encoding, name = ("utf-16", "UTF-16") if utf16 else ("utf-8-sig", "UTF-8")
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataFeedError(
            f"{path}, line {line}: not {name} text (byte "
            f"{data[exc.start : exc.start + 1]!r} at offset {exc.start}); save the file as a "
            f"UTF-8 CSV"
        ) from exc
    nul = text.find("\x00")
    if nul >= 0:
        raise DataFeedError(
            f"{path}, line {text.count(chr(10), 0, nul) + 1}: a NUL byte; this is not a text "
            f"file (expected a CSV, or a .gz of one)"
        )
    return text


def _open_text(path: str) -> str:
    if not os.path.exists(path):
        raise DataFeedError(f"{path}: no such file; check the path (cwd is {os.getcwd()})")
    if os.path.isdir(path):
        raise DataFeedError(f"{path}: is a directory, expected a bar file")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise DataFeedError(f"{path}: cannot read ({exc}); expected a text or .gz CSV") from exc
    if data.startswith(_GZIP_MAGIC):
        data = _gunzip(data, path)
    elif path.endswith(".gz") and data:
        raise DataFeedError(
            f"{path}: not gzip data (it does not start with the gzip bytes 1f 8b); if it is "
            f"plain text, remove .gz from its name"
        )
    return _decode(data, path)


def _one_line(text: object) -> str:
    """``text`` on one line: each line break (and the blanks around it) becomes one space, so a
    message quoting a library's error or a file's value stays one line.

    >>> _one_line("Error tokenizing data.\\nC error: Expected 2 fields\\n")
    'Error tokenizing data. C error: Expected 2 fields'
    """
    return re.sub(r"\s*[\r\n\v\f\x1c-\x1e\x85\u2028\u2029]+\s*", " ", str(text)).strip()


def _norm(name: str) -> str:
    return re.sub(r"[\s_\-]", "", str(name).strip().lower())


def detect_format(text: str) -> str:
    """Guess the format name of a file's text from its header and first rows.

    >>> detect_format("20110103 090100;126.35;126.39;126.35;126.39;1579\\n")
    'ninjatrader'
    >>> detect_format("Date,Open,High,Low,Close,Adj Close,Volume\\n2020-01-02,1,1,1,1,1,5\\n")
    'yahoo'
    >>> detect_format("2006-01-02,09:05:00,3578.7,3605.9,3578.7,3604.3,0,0\\n")  # no header
    'backtrader'
    """
    lines = [ln for ln in text.splitlines()[:3] if ln.strip()]
    if not lines:
        return "generic"
    if _NT_RE.match(lines[0]):
        return "ninjatrader"
    header = [_norm(c) for c in lines[0].split(",")]
    if "tsevent" in header or "tseventutc" in header:
        return "databento"
    if _headerless_backtrader(lines[0]):
        return "backtrader"
    first = lines[1].split(",") if len(lines) > 1 else []
    if header and header[0] == "date":
        if len(first) > 1 and _TIME_RE.match(first[1].strip()) and (
            "time" not in header or header[1] == "time"
        ):
            return "backtrader"
        if "adjclose" in header:
            return "yahoo"
        if "time" not in header and first and re.fullmatch(r"\d{4}-\d{2}-\d{2}", first[0]):
            return "yahoo"
    return "generic"


def _read_csv(text: str, path: str, **kwargs) -> pd.DataFrame:
    """All fields as text; blank lines kept as empty rows so row i is file line i + offset."""
    try:
        raw = pd.read_csv(
            io.StringIO(text), dtype=str, keep_default_na=False, skip_blank_lines=False,
            **kwargs,
        )  # fmt: skip
    except (pd.errors.ParserError, ValueError, csv.Error, OverflowError) as exc:
        raise DataFeedError(f"{path}: not a readable CSV ({_one_line(exc)})") from exc
    return raw


def _blank_rows(raw: pd.DataFrame) -> np.ndarray:
    """Rows without any text (blank lines, or only delimiters): skipped, nothing is lost."""
    if raw.shape[1] == 0:
        return np.zeros(len(raw), dtype=bool)
    return np.asarray((raw.isna() | (raw == "")).all(axis=1))


def _rename(raw: pd.DataFrame, source: str) -> pd.DataFrame:
    """Canonical column names; two columns meaning the same thing (``last`` and ``close``,
    ``Open`` and ``open``, a repeated header) raise instead of one silently winning."""
    mapping: dict = {}
    owner: dict[str, str] = {}
    names = [str(c) for c in raw.columns]
    for col, name in zip(raw.columns, names):
        base = name
        dup = re.fullmatch(r"(.*)\.(\d+)", name)  # pandas renames a repeated 'open' 'open.1'
        if dup and dup.group(1) in names:
            base = dup.group(1)
        key = _ALIASES.get(_norm(base))
        if key is None:
            continue
        if key in owner:
            what = (f"column '{base}' appears twice" if owner[key] == base else
                    f"columns '{owner[key]}' and '{base}' both give '{key}'")  # fmt: skip
            raise DataFeedError(
                _one_line(f"{source}, line 1: {what}; keep one of them (delete or rename the "
                          f"other)")
            )
        owner[key] = name
        mapping[col] = key
    out = raw.rename(columns=mapping)
    out.attrs = {**raw.attrs, "names": {key: name for key, name in owner.items()}}
    return out


def _headerless_backtrader(line: str) -> bool:
    """A first line that is already a bar, ``date,time,...`` (a backtrader file without header)."""
    fields = [f.strip() for f in line.split(",")]
    return len(fields) >= 7 and bool(_DATE_FIELD_RE.match(fields[0])) and bool(
        _TIME_RE.match(fields[1])
    )


def _names_bar_columns(header: list[str], text: str) -> bool:
    """Whether ``header`` names the bar columns (then they are found by name, not position):
    it names at least one of open/high/low/close/volume and has a name for every field of the
    first row (a shorter header is the positional backtrader layout with a loose header)."""
    if not any(_ALIASES.get(_norm(h)) in BAR_COLUMNS for h in header):
        return False
    rows = [ln for ln in text.splitlines()[1:4] if ln.strip()]
    return not rows or len(rows[0].split(",")) == len(header)


def _read_raw(text: str, fmt: str, path: str) -> tuple[pd.DataFrame, np.ndarray, str | None]:
    """Raw string frame with canonical column names, the file line of each row, time format."""
    if fmt == "ninjatrader":
        raw = _read_csv(text, path, sep=";", header=None)
        if raw.shape[1] < 6:
            raise DataFeedError(
                f"{path}, line 1: NinjaTrader rows need 6 fields 'yyyyMMdd HHmmss;O;H;L;C;V', "
                f"found {raw.shape[1]}"
            )
        lines = np.arange(1, 1 + len(raw))
        keep = ~_blank_rows(raw)
        raw, lines = raw[keep], lines[keep]
        raw = raw.iloc[:, :6]
        raw.columns = ["datetime", "open", "high", "low", "close", "volume"]
        raw["datetime"] = raw["datetime"].fillna("").str.strip()
        return raw, lines, "%Y%m%d %H%M%S"
    if fmt == "backtrader":
        first_line = text.lstrip("\ufeff").split("\n", 1)[0].rstrip("\r")
        headerless = _headerless_backtrader(first_line)
        header = [] if headerless else first_line.split(",")
        if _names_bar_columns(header, text):
            # a header that names the columns: read by name, whatever their order (issue 24)
            return _read_raw(text, "generic", path)
        raw = _read_csv(text, path, header=None, skiprows=0 if headerless else 1)
        names = ["date", "time", "open", "high", "low", "close", "volume", "openinterest"]
        first = 1 if headerless else 2
        if raw.shape[1] < 7:
            shown = "none" if headerless else _one_line(",".join(header))
            raise DataFeedError(
                f"{path}, line {first}: backtrader rows need Date,Time,Open,High,Low,Close,Volume"
                f"[,OpenInterest]; found {raw.shape[1]} fields (header: {shown})"
            )
        lines = np.arange(first, first + len(raw))
        keep = ~_blank_rows(raw)
        raw, lines = raw[keep], lines[keep]
        raw = raw.iloc[:, : min(8, raw.shape[1])]
        raw.columns = names[: raw.shape[1]]
        return raw, lines, None
    raw = _read_csv(text, path)
    lines = np.arange(2, 2 + len(raw))
    keep = ~_blank_rows(raw)
    raw = _rename(raw[keep], path)
    return raw, lines[keep], None


#: Bar times accepted: 1900-01-01 to 2200-01-01 UTC (the calendar's range).
_FIRST_TS = pd.Timestamp("1900-01-01", tz="UTC")
_LAST_TS = pd.Timestamp("2200-01-01", tz="UTC")

#: :func:`localize_naive` codes: why a naive time has no New York moment.
TS_OK, DST_GAP, DST_REPEAT, TS_FAR = 0, 1, 2, 3
#: :func:`_parse_times` codes: a value without a full date (a time only: it would take today's
#: date), a value without a UTC offset in a column whose other values have one.
TS_NO_DATE, TS_NAIVE_MIX = 4, 5
_FAR_PROBLEM = "timestamp out of range (years 1900-2199)"


def _check_tz(tz: str | None) -> None:
    if tz is None:
        return
    try:
        pd.Timestamp("2000-01-01").tz_localize(tz)
    except Exception as exc:  # pytz / zoneinfo raise their own kinds
        raise DataFeedError(
            f"tz={tz!r} is not a time zone name like 'America/New_York' or 'UTC' (--tz / tz=)"
        ) from exc


def localize_naive(idx: pd.DatetimeIndex, tz: str) -> tuple[pd.DatetimeIndex, np.ndarray]:
    """Naive times read in ``tz``, as New York; codes (:data:`DST_GAP`, :data:`DST_REPEAT`,
    :data:`TS_FAR`) mark the times that do not exist (the spring-forward gap), are ambiguous (the
    repeated autumn hour) or are out of range: those become NaT."""
    codes = np.zeros(len(idx), dtype="int8")
    naive_first, naive_last = _FIRST_TS.tz_localize(None), _LAST_TS.tz_localize(None)
    far = np.asarray((idx < naive_first) | (idx >= naive_last))
    if far.any():  # pandas cannot localize times beyond Python's datetime range
        codes[far] = TS_FAR
        idx = idx.where(~far)
    local = idx.tz_localize(tz, ambiguous="NaT", nonexistent="NaT")
    lost = np.asarray(local.isna()) & ~np.asarray(idx.isna())
    if lost.any():
        shifted = idx[lost].tz_localize(tz, ambiguous="NaT", nonexistent="shift_forward")
        codes[lost] = np.where(np.asarray(shifted.isna()), DST_REPEAT, DST_GAP)
    return local.tz_convert(NY), codes


def _nanoseconds(text: pd.Series) -> pd.DatetimeIndex:
    """Integer nanoseconds since 1970 UTC; values beyond the datetime range become NaT."""
    nums = pd.to_numeric(text, errors="coerce")
    if nums.dtype != "int64":  # some value beyond int64: parse each exactly
        nat = np.iinfo("int64").min
        nums = np.array([v if v < 2**63 else nat for v in map(int, text)], dtype="int64")
    ts = pd.to_datetime(np.asarray(nums, dtype="int64"), unit="ns", utc=True)
    return pd.DatetimeIndex(ts).tz_convert(NY)


#: Orders accepted by ``load_bars(date_format=...)`` / ``--date-format`` for numeric dates
#: such as ``05/03/2024``: ``"dmy"`` (day/month/year) or ``"mdy"`` (month/day/year).
DATE_FORMATS = ("dmy", "mdy")
_DATE_WORDS = {"dmy": "dmy", "dayfirst": "dmy", "ddmmyyyy": "dmy", "ddmmyy": "dmy",
               "mdy": "mdy", "monthfirst": "mdy", "mmddyyyy": "mdy", "mmddyy": "mdy"}  # fmt: skip
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December")  # fmt: skip
#: A numeric date with the day and month in either order: 05/03/2024, 14.03.24, 03-14-2024.
_DM_DATE = r"^(\d{1,2})([/.\-])(\d{1,2})\2(\d{4}|\d{2})(?=$|[ T])"
#: A year-first date with slashes or dots: 2024/03/05.
_YMD_DATE = r"^(\d{4})([/.])(\d{1,2})\2(\d{1,2})(?=$|[ T])"
#: An ISO timestamp as most files write it (nothing to rewrite).
_ISO_SHAPE = (r"\d{4}-\d{2}-\d{2}(?:[ T]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?)?"
              r"(?:[+-]\d{2}:\d{2})?")  # fmt: skip
#: A value that is only a time of day (no date), maybe with a zone.
_TIME_ONLY = (r"(?i)\d{1,2}:\d{2}(?::\d{2}(?:\.\d*)?)?\s*(?:[ap]\.?m\.?)?\s*"
              r"(?:[+-]\d{2}(?::?\d{2})?|Z|UTC|GMT)?")  # fmt: skip


def _date_order(date_format: str | None) -> str | None:
    """``"dmy"``, ``"mdy"`` or ``None`` from ``date_format`` (``"dmy"``, ``"dayfirst"``,
    ``"%d/%m/%Y"``, ``"DD.MM.YYYY"``, ...)."""
    if date_format is None:
        return None
    order = _DATE_WORDS.get(re.sub(r"[\s_\-/.%]", "", str(date_format).lower()))
    if order is None:
        raise DataFeedError(
            f"unknown date order {str(date_format)!r} (--date-format / date_format=); use "
            f"'dmy' (day/month/year, 14/03/2024) or 'mdy' (month/day/year, 03/14/2024)"
        )
    return order


def _settle_order(parts: pd.DataFrame, hit: np.ndarray, column: str, path: str, lines) -> str:
    """The order a column of numeric dates settles: a first number above 12 can only be a day,
    a second above 12 only a day; both in one column, or neither (and some date that reads
    two ways), is an error."""
    a = pd.to_numeric(parts[0], errors="coerce").fillna(0).to_numpy()
    b = pd.to_numeric(parts[2], errors="coerce").fillna(0).to_numpy()
    valid = hit & (a >= 1) & (b >= 1)
    day_first = valid & (a > 12) & (a <= 31) & (b <= 12)
    month_first = valid & (b > 12) & (b <= 31) & (a <= 12)

    def shown(i: int) -> str:
        sep = parts.iat[i, 1]
        return f"{parts.iat[i, 0]}{sep}{parts.iat[i, 2]}{sep}{parts.iat[i, 3]}"

    if day_first.any() and month_first.any():
        i, j = np.flatnonzero(day_first)[0], np.flatnonzero(month_first)[0]
        raise DataFeedError(
            f"{path}, line {lines[i]}: column '{column}' mixes date orders: {shown(i)!r} can "
            f"only be day/month/year, {shown(j)!r} (line {lines[j]}) only month/day/year; "
            f"write every date in one order, or {HINTS['date']} and {HINTS['lenient']} to "
            f"drop the dates that do not fit"
        )
    if day_first.any():
        return "dmy"
    if month_first.any():
        return "mdy"
    ambiguous = valid & (a <= 12) & (b <= 12) & (a != b)
    if ambiguous.any():
        i = np.flatnonzero(ambiguous)[0]
        x, y = int(a[i]), int(b[i])
        raise DataFeedError(
            f"{path}, line {lines[i]}: the dates of column '{column}' read two ways "
            f"({shown(i)!r} is {x} {_MONTHS[y - 1]} day first, {_MONTHS[x - 1]} {y} month "
            f"first) and no day above 12 settles it; {HINTS['date']}"
        )
    return "dmy"  # every date reads the same either way (05/05/2024)


def _iso_dates(text: pd.Series, column: str, path: str, lines, order: str | None) -> pd.Series:
    """Numeric dates rewritten as ISO ``YYYY-MM-DD`` (the rest of each value kept): day/month
    dates in ``order`` or the order the column settles (:func:`_settle_order`), year-first
    dates with slashes or dots. Two-digit years are 1969-2068, as in ``strptime``'s ``%y``."""
    if not len(text):
        return text
    parts = text.str.extract(_DM_DATE)
    hit = parts[0].notna().to_numpy()
    if hit.any():
        order = order or _settle_order(parts, hit, column, path, lines)

        def iso(m: re.Match) -> str:
            x, y, year = int(m.group(1)), int(m.group(3)), m.group(4)
            day, month = (x, y) if order == "dmy" else (y, x)
            if len(year) == 2:
                year = ("19" if int(year) >= 69 else "20") + year
            return f"{year}-{month:02d}-{day:02d}"

        text = text.str.replace(_DM_DATE, iso, regex=True)
    if text.str.match(_YMD_DATE).any():
        text = text.str.replace(
            _YMD_DATE, lambda m: f"{m.group(1)}-{int(m.group(3)):02d}-{int(m.group(4)):02d}",
            regex=True,
        )
    return text


#: Defaults of the two loose parses: a value whose result depends on them lacks a full date.
_DEFAULT_A = _dt.datetime(2001, 1, 1)
_DEFAULT_B = _dt.datetime(2002, 2, 2)


def _parse_loose(values: pd.Series) -> tuple[list, np.ndarray, np.ndarray]:
    """Timestamps of values that are not ISO, each parsed on its own (dateutil) so one column
    can mix zones without an exception: the timestamps (``NaT`` where unparseable), which are
    tz-aware, and which lack a full date (dateutil would fill it in with today's date)."""
    out: dict[str, tuple] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an unknown zone name is unparseable, not ignored
        for value in pd.unique(values):
            stamp, aware, no_date = pd.NaT, False, False
            if value:
                try:
                    first = _dateutil.parse(value, default=_DEFAULT_A)
                    second = _dateutil.parse(value, default=_DEFAULT_B)
                except (ValueError, OverflowError, TypeError, Warning):
                    first = second = None
                if first is not None and first != second:
                    no_date = True
                elif first is not None and 1900 <= first.year < 2200:
                    aware = first.tzinfo is not None
                    try:
                        stamp = pd.Timestamp(first)
                        stamp = stamp.tz_convert("UTC") if aware else stamp
                    except (ValueError, OverflowError):
                        stamp, aware = pd.NaT, False
            out[value] = (stamp, aware, no_date)
    rows = [out[v] for v in values]
    return ([r[0] for r in rows], np.array([r[1] for r in rows], dtype=bool),
            np.array([r[2] for r in rows], dtype=bool))  # fmt: skip


def _utc_index(stamps: list) -> pd.DatetimeIndex:
    return pd.DatetimeIndex([None if s is pd.NaT else s for s in stamps],
                            dtype="datetime64[ns, UTC]")


def _to_utc(parse: pd.Series, has_offset: np.ndarray) -> pd.DatetimeIndex:
    """UTC instants of the values that carry an offset (``NaT`` elsewhere); ISO values at
    once, the others one by one."""
    aware = parse.where(has_offset, "")
    try:
        ts = pd.DatetimeIndex(pd.to_datetime(aware, errors="coerce", utc=True, format="ISO8601"))
    except (ValueError, OverflowError, TypeError):
        ts = pd.DatetimeIndex([pd.NaT] * len(aware), dtype="datetime64[ns, UTC]")
    miss = np.asarray(ts.isna()) & has_offset
    if miss.any():
        stamps, is_aware, _ = _parse_loose(aware[miss])
        loose = _utc_index([s if a else pd.NaT for s, a in zip(stamps, is_aware)])
        values = ts.to_numpy(copy=True)  # Timestamps (ts is UTC)
        values[miss] = loose.to_numpy()
        ts = pd.DatetimeIndex(values, tz="UTC")
    return ts


def _naive_stamps(parse: pd.Series, rows: np.ndarray) -> np.ndarray:
    """Which of ``rows`` hold a timestamp without an offset (rather than text that is no
    timestamp at all)."""
    out = np.zeros(len(parse), dtype=bool)
    if rows.any():
        stamps, aware, no_date = _parse_loose(parse[rows])
        out[np.flatnonzero(rows)] = ~pd.isna(np.array(stamps, dtype=object)) & ~aware & ~no_date
    return out


def _parse_times(raw: pd.DataFrame, fmt: str, tz: str | None, path: str, time_fmt,
                 lines=None, date_format: str | None = None):  # fmt: skip
    """Timestamps (tz-aware NY, NaT where unparseable), the raw text, the daily flag, the
    :func:`localize_naive` codes (and :data:`TS_NO_DATE`, :data:`TS_NAIVE_MIX`) and the zone
    naive times were read in.

    A column of times without dates is an error (it would load with today's date); so is a
    column of numeric day/month dates whose order neither ``date_format`` nor the file settles
    (:func:`_settle_order`). A column that mixes values with and without a UTC offset keeps
    those with one; the others are marked :data:`TS_NAIVE_MIX`."""
    cols = set(raw.columns)
    names = raw.attrs.get("names") or {}
    lines = np.arange(2, 2 + len(raw)) if lines is None else np.asarray(lines)

    def col(name: str) -> pd.Series:
        return raw[name].fillna("").astype(str).str.strip()

    if "datetime" in cols:
        text, column = col("datetime"), "datetime"
    elif "date" in cols and "time" in cols:
        text, column = (col("date") + " " + col("time")).str.strip(), "date"
    elif "date" in cols:
        text, column = col("date"), "date"
    elif "time" in cols:
        text, column = col("time"), "time"
    else:
        raise DataFeedError(
            f"{path}, line 1: no timestamp column; expected 'datetime' (or 'timestamp', "
            f"'ts_event') or 'date' with optional 'time'; found columns: "
            f"{_one_line(', '.join(map(str, raw.columns)))}"
        )
    column = _one_line(names.get(column, column))
    default_tz = tz or ("UTC" if fmt == "databento" else NY)
    codes = np.zeros(len(text), dtype="int8")
    if fmt == "databento" and len(text) and text.str.fullmatch(r"\d{15,}").all():
        return _nanoseconds(text), text, False, codes, default_tz
    if time_fmt is not None:  # a fixed format (NinjaTrader)
        ts = pd.to_datetime(text, errors="coerce", format=time_fmt)
        local, codes = localize_naive(pd.DatetimeIndex(ts), default_tz)
        return local, text, False, codes, default_tz

    filled = np.asarray(text != "")
    # values already ISO (most files) skip the rewriting below
    odd = ~np.asarray(text.str.fullmatch(_ISO_SHAPE))
    time_only = np.zeros(len(text), dtype=bool)
    parse = text
    if odd.any():
        some = text[odd]
        time_only[odd] = np.asarray(some.str.fullmatch(_TIME_ONLY))
        if filled.any() and time_only[filled].all():
            i = np.flatnonzero(filled)[0]
            raise DataFeedError(
                f"{path}, line {lines[i]}: column '{column}' holds times without dates "
                f"({_one_line(text.iloc[i])!r}), which would load with today's date; give the "
                f"file a date: a 'date' column beside '{column}', or one 'datetime' column of "
                f"'YYYY-MM-DD HH:MM:SS'"
            )
        codes[time_only] = TS_NO_DATE
        some = some.where(~time_only[odd], "")
        some = _iso_dates(some, column, path, lines[odd], _date_order(date_format))
        # zones written as a word (UTC, GMT, Z) or as hours only (+05): ISO offsets
        some = some.str.replace(r"(?i)(?<=\d)\s*(?:Z|UTC|GMT)$", "+00:00", regex=True)
        some = some.str.replace(r"(:\d\d(?:\.\d+)?)\s*([+-]\d{2})$", r"\1\2:00", regex=True)
        parse = text.copy()
        parse[odd] = some
    daily = bool(len(parse)) and bool(parse.str.fullmatch(r"\d{4}-?\d{2}-?\d{2}").all())
    has_offset = np.asarray(parse.str.contains(r"(?:[+-]\d{2}:?\d{2}|Z)$", regex=True))
    if has_offset.any():
        ts = _to_utc(parse, has_offset)
        codes[_naive_stamps(parse, filled & ~has_offset & (codes == TS_OK))] = TS_NAIVE_MIX
        return ts.tz_convert(NY), text, False, codes, default_tz
    try:
        ts = pd.DatetimeIndex(pd.to_datetime(parse, errors="coerce", format="ISO8601"))
    except (ValueError, OverflowError, TypeError):  # e.g. zones the offset test did not see
        ts = None
    if ts is None or (len(ts) and ts.isna().all()):
        stamps, aware, no_date = _parse_loose(parse)
        codes[no_date] = TS_NO_DATE
        if aware.any():
            codes[~aware & (codes == TS_OK) & filled] = TS_NAIVE_MIX
            idx = _utc_index([s if a else pd.NaT for s, a in zip(stamps, aware)])
            return idx.tz_convert(NY), text, False, codes, default_tz
        ts = pd.DatetimeIndex(stamps, dtype="datetime64[ns]")
    if ts.tz is not None:
        return ts.tz_convert(NY), text, daily, codes, default_tz
    local, dst = localize_naive(ts, default_tz)
    codes = np.where(dst != TS_OK, dst, codes).astype("int8")
    return local, text, daily, codes, default_tz


class _Checker:
    """Collects row problems; strict raises on the first kind found, lenient records."""

    def __init__(self, source: str, lenient: bool) -> None:
        self.source = source
        self.lenient = lenient
        self.report: list[dict] = []

    def flag(
        self, mask, lines, stamps, problem: str, values, fix: str, action: str,
        lenient_does: str | None = None,
    ) -> None:  # fmt: skip
        """Raise for the first row of ``mask`` (strict) or record each row (lenient).

        ``action`` is the report's word for what was done (``"drop"``); ``lenient_does`` what
        lenient loading would do, for the strict message (default: ``"<action> such rows"``).
        """
        mask = np.asarray(mask, dtype=bool)
        if not mask.any():
            return
        where = np.flatnonzero(mask)
        show: Callable[[int], object] = values if callable(values) else values.__getitem__
        if not self.lenient:
            i = where[0]
            line = lines[i]
            more = f" ({len(where) - 1} more rows like it)" if len(where) > 1 else ""
            does = lenient_does or f"{action} such rows"
            raise DataFeedError(_one_line(
                f"{self.source}, line {line}: {problem}: {show(i)}{more}; {fix}, "
                f"or {HINTS['lenient']} to {does}"
            ))
        stamp_list = list(pd.DatetimeIndex(np.asarray(stamps)[where]) if len(stamps) else [])
        for i, ts in zip(where, stamp_list):
            self.record(lines[i], ts, _one_line(f"{problem}: {show(i)}"), action)

    def record(self, line, ts, problem: str, action: str) -> None:
        self.report.append(
            {
                "line": None if line is None else int(line),
                "timestamp": None if ts is None or pd.isna(ts) else ts,
                "problem": problem,
                "action": action,
            }
        )


def _stamp_text(index: pd.DatetimeIndex) -> Callable[[int], str]:
    """Lazy text of timestamp i (only built for flagged rows)."""
    return lambda i: str(index[i])


def _row_text(df: pd.DataFrame, columns=BAR_COLUMNS) -> Callable[[int], str]:
    """Lazy 'open=..., high=...' text of row i (only built for flagged rows)."""
    cols = [(c, df[c].to_numpy()) for c in columns if c in df.columns]
    return lambda i: ", ".join(f"{c}={arr[i]}" for c, arr in cols)


def _validate(
    df: pd.DataFrame,
    lines: np.ndarray,
    spec: ContractSpec | None,
    lenient: bool,
    source: str,
    daily: bool,
    raw_ts=None,
    ts_codes: np.ndarray | None = None,
    tz_name: str = NY,
    snap_to_tick: bool = False,
) -> tuple[pd.DataFrame, list[dict], np.ndarray]:
    """The checks on a frame with a tz-aware index; returns the clean frame (no attrs), the
    report and the kept lines."""
    chk = _Checker(source, lenient)
    missing = [c for c in BAR_COLUMNS if c not in df.columns]
    if missing:
        raise DataFeedError(
            f"{source}, line 1: missing column(s) {', '.join(missing)}; found columns: "
            f"{_one_line(', '.join(map(str, df.columns)))}; a bar file needs open, high, low, "
            f"close, volume"
        )
    df = df.copy()
    df.attrs = {}
    df.index = pd.DatetimeIndex(df.index).tz_convert(NY)
    df.index.name = "datetime"
    lines = np.asarray(lines, dtype=object)

    def drop(mask) -> None:
        nonlocal df, lines
        keep = ~np.asarray(mask, dtype=bool)
        df = df[keep]
        lines = lines[keep]

    # 1. timestamps: out of range, unparseable, or naive times that do not exist / are ambiguous
    # in tz_name
    far = np.asarray((df.index < _FIRST_TS) | (df.index >= _LAST_TS))  # NaT compares False
    chk.flag(far, lines, df.index.where(~far), _FAR_PROBLEM,
             raw_ts if raw_ts is not None else _stamp_text(df.index),
             "check the timestamp column and its format", "drop")  # fmt: skip
    bad = np.asarray(df.index.isna())  # raw_ts and ts_codes line up with the rows until dropped
    if bad.any():
        vals = raw_ts if raw_ts is not None else np.array(["NaT"] * len(df), dtype=object)
        codes = ts_codes if ts_codes is not None else np.zeros(len(df), dtype="int8")
        kinds = (
            (DST_GAP, f"this time does not exist in {tz_name} (clocks skip that hour)",
             HINTS["tz"]),
            (DST_REPEAT, f"this time is ambiguous in {tz_name} (the repeated autumn hour)",
             HINTS["tz"]),
            (TS_FAR, _FAR_PROBLEM, "check the timestamp column and its format"),
            (TS_NO_DATE, "timestamp without a full date (a time of day only)",
             "give every row its date, e.g. 'YYYY-MM-DD HH:MM:SS'"),
            (TS_NAIVE_MIX, "timestamp without a UTC offset, while others in its column have one",
             "give every timestamp its offset, or none (then --tz / tz= names the zone)"),
            (TS_OK, "unparseable timestamp",
             "write timestamps as ISO 'YYYY-MM-DD HH:MM:SS[+HH:MM]'"),
        )  # fmt: skip
        for code, problem, fix in kinds:
            chk.flag(bad & (codes == code), lines, df.index, problem, vals, fix, "drop")
    drop(bad | far)

    # 2. numbers: NaN / null / text / inf; rows without prices go first, then missing volumes
    for col in (*BAR_COLUMNS, "openinterest"):
        if col in df.columns:
            df[col] = pd.to_numeric(df[col], errors="coerce").astype("float64").to_numpy()
    px = df[list(PRICE_COLUMNS)].to_numpy()
    nan_rows = ~np.isfinite(px).all(axis=1)
    chk.flag(nan_rows, lines, df.index, "missing or non-finite price (NaN, inf, null or text)",
             _row_text(df), "remove the row or fill the prices", "drop")  # fmt: skip
    drop(nan_rows)
    for col in ("volume", "openinterest"):
        if col in df.columns:
            num = df[col].to_numpy()
            bad = ~np.isfinite(num)
            chk.flag(bad, lines, df.index, f"missing or non-numeric {col}", num,
                     "fill the value", "set to 0", f"set the {col} to 0")  # fmt: skip
            df[col] = np.where(bad, 0.0, num)

    # 3. sorting (before duplicates, so they sit side by side)
    # (reported, as every repair is, in the report: not a Python warning)
    stamps = df.index.asi8
    back = np.flatnonzero(np.diff(stamps) < 0) + 1  # rows earlier than the row before them
    if len(back):
        order = np.argsort(stamps, kind="stable")
        chk.record(lines[back[0]], df.index[back[0]],
                   f"timestamps not in ascending order ({len(back)} "
                   f"{'bar' if len(back) == 1 else 'bars'} earlier than the bar above, the "
                   f"first here)", "sorted")  # fmt: skip
        df = df.iloc[order]
        lines = lines[order]

    # 4. duplicates
    dup = np.asarray(df.index.duplicated(keep="first"))
    chk.flag(dup, lines, df.index, "duplicate timestamp", _stamp_text(df.index),
             "keep one bar per timestamp", "drop (keeping the first)",
             "keep the first bar of each timestamp")  # fmt: skip
    drop(dup)

    # 5. impossible prices (<= 0, beyond MAX_PRICE) and negative volume
    px = df[list(PRICE_COLUMNS)].to_numpy()
    bad = (px <= 0).any(axis=1)
    chk.flag(bad, lines, df.index, "non-positive price", _row_text(df),
             f"prices must be > 0 ({HINTS['ratio']})", "drop")  # fmt: skip
    drop(bad)
    px = df[list(PRICE_COLUMNS)].to_numpy()
    bad = (px > MAX_PRICE).any(axis=1)
    chk.flag(bad, lines, df.index, f"impossible price (above {MAX_PRICE:g})", _row_text(df),
             "check the file (fixed-point prices in 1e-9 units must be divided by 1e9)",
             "drop")  # fmt: skip
    drop(bad)
    bad = np.asarray(df["volume"] < 0)
    chk.flag(bad, lines, df.index, "negative volume", np.asarray(df["volume"]),
             "volume must be >= 0", "drop")  # fmt: skip
    drop(bad)

    # 6. tick grid (contract-specific)
    if spec is not None and len(df):
        df, lines = _snap_to_grid(df, lines, spec, chk, lenient or snap_to_tick)

    # 7. OHLC consistency
    o, h, lo, c = (df[col].to_numpy() for col in PRICE_COLUMNS)
    bad = (h < np.maximum(o, c)) | (lo > np.minimum(o, c)) | (h < lo)
    if bad.any():
        vals = _row_text(df)
        chk.flag(bad, lines, df.index, "inconsistent OHLC (high below open/close or low above)",
                 vals, "fix the bar", "widen high/low to cover open and close",
                 "widen high/low to cover open and close")  # fmt: skip
        df["high"] = np.maximum.reduce([o, h, lo, c])
        df["low"] = np.minimum.reduce([o, h, lo, c])

    # 8. Globex session (contract-specific); daily bars: the trade date must be a session
    if spec is not None and len(df):
        if daily:
            ok = is_trading_day(df.index.tz_localize(None).normalize())
            what = "date is not a CME Globex trade date (weekend or holiday)"
        else:
            ok = in_globex_session(df.index)
            what = "bar outside the CME Globex session"
        bad = ~ok
        chk.flag(bad, lines, df.index, what, _stamp_text(df.index),
                 "remove bars outside Sunday 18:00-Friday 17:00 NY, the 17:00-18:00 break and "
                 "holidays (if the file is not New York time, give its time zone: --tz / tz=)",
                 "drop")  # fmt: skip
        drop(bad)

    return df, chk.report, lines.astype("int64")


def _snap_to_grid(df, lines, spec: ContractSpec, chk: _Checker, repair: bool):
    """Prices onto the tick grid. Float noise is snapped silently; a price off the grid raises
    (strict, naming only the offending columns) or, with ``repair``, is rounded to the nearest
    tick with one report line per price. A price that rounds to 0 is dropped."""
    tick = spec.tick_size
    decimals = max(0, -math.floor(math.log10(tick)) + 2)
    px = df[list(PRICE_COLUMNS)].to_numpy()
    grid = np.round(np.round(px / tick) * tick, decimals)
    off = np.abs(px - grid) > TICK_ABS_TOLERANCE
    off &= px.astype("float32") != grid.astype("float32")  # float32 rendering of a grid price
    rows = off.any(axis=1)
    if rows.any():
        problem = f"price off the {tick:g} tick grid of {spec.root}"
        if not repair:
            def offending(i: int) -> str:
                return ", ".join(f"{c}={float(px[i, j])}" for j, c in enumerate(PRICE_COLUMNS)
                                 if off[i, j])  # fmt: skip

            chk.flag(rows, lines, df.index, problem, offending,
                     f"check the instrument: for data not on the {spec.root} grid (e.g. the RUT "
                     f"cash index) {HINTS['no_contract']} or {HINTS['snap']}",
                     "round to the tick", "round such prices to the tick")  # fmt: skip
        for i, j in zip(*np.nonzero(off)):
            chk.record(lines[i], df.index[i], f"{problem}: {PRICE_COLUMNS[j]}={float(px[i, j])}",
                       f"round to {float(grid[i, j])}")  # fmt: skip
    zero = (grid <= 0).any(axis=1)
    before = _row_text(df)
    for j, col in enumerate(PRICE_COLUMNS):
        df[col] = grid[:, j]
    if zero.any():
        # lenient rounding must not invent a price of 0 (0.03 on a 0.10 grid)
        keep = ~zero
        for i in np.flatnonzero(zero):
            chk.record(lines[i], df.index[i],
                       f"price rounds to 0 on the {tick:g} tick grid: {before(i)}",
                       "drop")  # fmt: skip
        df, lines = df[keep], lines[keep]
    return df, lines


def _finish_columns(df: pd.DataFrame) -> pd.DataFrame:
    cols = [c for c in (*BAR_COLUMNS, "openinterest", "contract", "roll") if c in df.columns]
    out = df[cols].copy()
    for col in (*BAR_COLUMNS, "openinterest"):
        if col in out.columns:
            out[col] = out[col].astype("float64")
    if "contract" in out.columns:
        out["contract"] = out["contract"].astype(str)
    if "roll" in out.columns:
        r = out["roll"]
        if r.dtype != bool:
            # a yes word, or 1.0 (a float column written out); anything else is no roll
            r = r.astype(str).str.strip().str.lower().isin((*TRUE_WORDS, "1.0"))
        out["roll"] = r.astype(bool)
    return out


def validate_bars(
    df: pd.DataFrame,
    spec: ContractSpec | None = M2K,
    lenient: bool = False,
    source: str = "<frame>",
    tz: str | None = None,
    snap_to_tick: bool = False,
) -> pd.DataFrame:
    """Validate a bar frame built in memory (same checks as :func:`load_bars`).

    A naive index is read in ``tz`` (New York when ``None``); a naive time that does not exist
    there (the spring-forward gap) or is ambiguous (the repeated autumn hour) is an error, or a
    dropped row when ``lenient``. Lines in messages count from 1 for the first row. Returns a new
    frame; the input is not changed. ``spec``, ``lenient``, ``snap_to_tick``: as in
    :func:`load_bars`.

    >>> import pandas as pd
    >>> idx = pd.DatetimeIndex(["2025-03-10 10:00"], tz="America/New_York")
    >>> bars = pd.DataFrame({"open": [2000.1], "high": [2000.0], "low": [1999.5],
    ...                      "close": [1999.9], "volume": [10.0]}, index=idx)
    >>> validate_bars(bars)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    m2k_bt.errors.DataFeedError: <frame>, line 1: inconsistent OHLC ... high=2000.0, ...
    >>> validate_bars(bars, lenient=True)["high"].iloc[0]
    np.float64(2000.1)
    """
    if not isinstance(df, pd.DataFrame):
        raise DataFeedError(f"{source}: expected a pandas DataFrame, got {type(df).__name__}")
    if not isinstance(df.index, pd.DatetimeIndex):
        raise DataFeedError(
            f"{source}: the index must be a DatetimeIndex of bar times, got "
            f"{type(df.index).__name__}; use df.set_index('datetime')"
        )
    _check_tz(tz)
    frame = _rename(df, source)
    idx = frame.index
    tz_name = tz or NY
    codes = None
    if idx.tz is None:
        naive = idx
        idx, codes = localize_naive(idx, tz_name)
        raw_ts = _stamp_text(naive)
    else:
        raw_ts = _stamp_text(idx)
    local = idx.tz_convert(NY).tz_localize(None)
    valid = local[~local.isna()]
    daily = len(valid) > 0 and bool((valid == valid.normalize()).all())
    frame = frame.set_axis(idx)
    lines = np.arange(1, len(frame) + 1)
    out, report, kept = _validate(frame, lines, spec, lenient, source, daily, raw_ts, codes,
                                  tz_name, snap_to_tick)  # fmt: skip
    out = _finish_columns(out)
    out.attrs = {"report": report, "source": source, "lines": LineNumbers(kept)}
    return out


def load_bars(
    path: str | os.PathLike,
    fmt: str | None = None,
    tz: str | None = None,
    spec: ContractSpec | None = M2K,
    lenient: bool = False,
    snap_to_tick: bool = False,
    date_format: str | None = None,
) -> pd.DataFrame:
    """Read and validate a bar file; see the module docstring for formats and checks.

    - ``path``: a ``.csv``, ``.txt`` or ``.gz`` file.
    - ``fmt`` (def: ``None``): one of :data:`FORMATS`, or ``None`` to detect it.
    - ``tz`` (def: ``None``): time zone of naive timestamps in the file (New York when ``None``;
      UTC for Databento).
    - ``spec`` (def: ``M2K``): contract for the tick-grid and Globex-session checks; ``None``
      skips them (other instruments, e.g. the RUT cash index or SPY).
    - ``lenient`` (def: ``False``): repair or drop bad rows instead of raising; each change is
      listed in ``df.attrs["report"]``.
    - ``snap_to_tick`` (def: ``False``): round prices that are off ``spec``'s tick grid to the
      nearest tick, one report line per repaired price (``lenient`` does this too); every other
      check stays as strict as ``lenient`` says.
    - ``date_format`` (def: ``None``): the order of numeric dates such as ``05/03/2024``:
      ``"dmy"`` (day/month/year; also ``"%d/%m/%Y"``, ``"dayfirst"``) or ``"mdy"``
      (month/day/year). ``None`` lets the file settle it: a first number above 12 (``14/03``)
      makes the whole column day-first, a second above 12 (``03/14``) month-first; a column
      with neither, where some date reads two ways, raises :class:`DataFeedError` (so does a
      column with both). ISO dates (``2024-03-05``) need nothing.

    Every :class:`DataFeedError` message is one line. A column of times without dates is
    refused (it would take today's date); offsets (``+05``, ``-04:00``, ``Z``, `` UTC``) are
    honoured row by row, and rows without one in a column of rows with one are errors (or
    dropped and listed when ``lenient``).

    The frame also carries ``attrs["format"]``, ``attrs["source"]`` and ``attrs["lines"]``
    (a :class:`LineNumbers`: the file line of each row kept, for the frame as returned; a slice
    of the frame keeps the whole list).

    A file loaded before with the same content, path and options is read back from the cache
    of validated bars (:mod:`m2k_bt.feeds.cache`; ``M2K_CACHE_DIR=off`` turns it off).
    """
    path = os.fspath(path)
    options = (fmt, tz, repr(spec), bool(lenient), bool(snap_to_tick), date_format)
    try:
        # a file read and validated before (same content, path and options) is not again
        return cached_load(path, options, lambda: _load_bars(path, fmt, tz, spec, lenient,
                                                             snap_to_tick, date_format))
    except DataFeedError as exc:
        message = str(exc)
        if message == _one_line(message):
            raise
        raise type(exc)(_one_line(message)) from exc.__cause__


def _load_bars(path: str, fmt, tz, spec, lenient, snap_to_tick, date_format) -> pd.DataFrame:
    if fmt is not None and fmt not in FORMATS:
        raise DataFeedError(
            f"unknown fmt '{fmt}'{did_you_mean(str(fmt), FORMATS)}; known: {', '.join(FORMATS)}"
        )
    _check_tz(tz)
    _date_order(date_format)
    text = _open_text(path)
    if not text.strip():
        raise DataFeedError(f"{path}: the file is empty; expected a header and bars")
    fmt = fmt or detect_format(text)
    raw, raw_lines, time_fmt = _read_raw(text, fmt, path)
    if raw.empty:
        raise DataFeedError(
            f"{path}: no bars, only the header line {text.splitlines()[0][:80]!r}; expected "
            f"rows of bars below it"
        )
    report: list[dict] = []
    if fmt == "databento" and ("schema" in raw.columns or "rtype" in raw.columns):
        key = "schema" if "schema" in raw.columns else "rtype"
        kinds = raw[key].value_counts()
        if len(kinds) > 1:
            main = kinds.index[0]
            bad = np.asarray(raw[key] != main)
            chk = _Checker(path, lenient)
            chk.flag(bad, raw_lines, [pd.NaT] * len(raw),
                     f"row of another {key} (the file mixes {key}s "
                     f"{', '.join(map(str, kinds.index))})", np.asarray(raw[key]),
                     f"split the file by {key}",
                     f"drop (keeping {key} {main}, the most common)",
                     f"keep the {main} rows (the most common) and drop the others")  # fmt: skip
            report = chk.report
            raw = raw[~bad]
            raw_lines = raw_lines[~bad]
    index, raw_text, daily, codes, tz_name = _parse_times(raw, fmt, tz, path, time_fmt,
                                                          raw_lines, date_format)
    frame = raw.drop(
        columns=[c for c in ("datetime", "date", "time", "schema", "rtype") if c in raw.columns]
    )
    known = (*BAR_COLUMNS, "openinterest", "contract", "roll")
    ignored = [c for c in frame.columns if c not in known]
    frame = frame.drop(columns=ignored)
    frame.index = index
    if fmt == "databento" and "close" in frame.columns:
        close = pd.to_numeric(frame["close"], errors="coerce")
        if len(close) and close.median() > 1e7:  # fixed-point prices, 1e-9 units
            for col in PRICE_COLUMNS:
                if col in frame.columns:  # a missing one is reported by _validate
                    frame[col] = pd.to_numeric(frame[col], errors="coerce") / 1e9
    frame.attrs = {}
    df, checks, kept = _validate(frame, raw_lines, spec, lenient, path, daily,
                                 np.asarray(raw_text), codes, tz_name, snap_to_tick)  # fmt: skip
    report += checks
    if df.empty:
        first = next((e for e in report if e["line"] is not None), None)
        why = f" (first: line {first['line']}: {first['problem']})" if first else ""
        raise DataFeedError(
            f"{path}: no bars left: every one of the {len(raw_lines)} rows was dropped{why}; "
            f"fix the file or check fmt/tz (--format / fmt=, --tz / tz=)"
        )
    df = _finish_columns(df)
    df.attrs = {
        "report": report,
        "source": path,
        "format": fmt,
        "lines": LineNumbers(kept),
        "ignored_columns": ignored,
    }
    return df
