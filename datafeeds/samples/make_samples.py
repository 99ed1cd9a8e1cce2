"""Write the vendor-format samples in this folder from the bundled synthetic 5-minute bars.

Each bar file is the same three trade dates (2024-06-04 .. 2024-06-06, 5-minute bars; Yahoo: daily
bars of 2023-2024) in the layout a vendor's export has, so ``load_bars`` detects each format from
the file alone. Synthetic like everything in ``datafeeds/``. Same bytes on every run::

    python datafeeds/samples/make_samples.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from m2k_bt import load_bars, resample_bars

HERE = Path(__file__).resolve().parent


def main() -> None:
    bars = load_bars(HERE.parent / "m2k_5min.csv.gz")
    week = bars.loc["2024-06-03 18:00":"2024-06-06 16:55", ["open", "high", "low", "close",
                                                           "volume"]]
    prices = ["open", "high", "low", "close"]
    vol = week["volume"].astype("int64")

    # Interactive Brokers: ib_async's util.df(reqHistoricalData(...)).to_csv(), New York time
    ib = week.copy()
    ib["volume"] = vol
    ib["average"] = ((ib["high"] + ib["low"] + ib["close"]) / 3).round(3)
    ib["barCount"] = (vol // 7).clip(lower=1)
    ib.index = ib.index.tz_localize(None).strftime("%Y-%m-%d %H:%M:%S-04:00")
    ib.index.name = "date"
    ib.to_csv(HERE / "ib.csv")

    # Databento OHLCV-1m style CSV: ts_event in UTC nanoseconds, fixed-point prices (1e-9)
    db = week.copy()
    out = db.index.tz_convert("UTC").as_unit("ns").asi8
    lines = ["ts_event,rtype,publisher_id,instrument_id,open,high,low,close,volume,symbol"]
    for ts, row, v in zip(out, db[prices].to_numpy(), vol, strict=True):
        fixed = ",".join(str(int(round(p * 10)) * 100_000_000) for p in row)
        lines.append(f"{ts},33,1,2130,{fixed},{v},M2KM4")
    (HERE / "databento.csv").write_text("\n".join(lines) + "\n")

    # NinjaTrader export: yyyyMMdd HHmmss;O;H;L;C;V, no header, New York time
    nt = [f"{ts:%Y%m%d %H%M%S};{o:.1f};{h:.1f};{lo:.1f};{c:.1f};{v}"
          for ts, (o, h, lo, c), v in zip(week.index, week[prices].to_numpy(), vol, strict=True)]
    (HERE / "ninjatrader.txt").write_text("\n".join(nt) + "\n")

    # backtrader's sample layout: Date,Time,Open,High,Low,Close,Volume,OpenInterest
    bt_rows = ["Date,Time,Open,High,Low,Close,Volume,OpenInterest"]
    bt_rows += [f"{ts:%Y-%m-%d},{ts:%H:%M:%S},{o:.1f},{h:.1f},{lo:.1f},{c:.1f},{v},0"
                for ts, (o, h, lo, c), v in zip(week.index, week[prices].to_numpy(), vol,
                                                 strict=True)]
    (HERE / "backtrader.csv").write_text("\n".join(bt_rows) + "\n")

    # Yahoo Finance daily download: Date,Open,High,Low,Close,Adj Close,Volume
    daily = resample_bars(bars[["open", "high", "low", "close", "volume"]], "1d")
    ya = daily[prices].round(1)
    ya.insert(4, "Adj Close", ya["close"])
    ya["Volume"] = daily["volume"].astype("int64")
    ya.columns = ["Open", "High", "Low", "Close", "Adj Close", "Volume"]
    ya.index = ya.index.strftime("%Y-%m-%d")
    ya.index.name = "Date"
    ya.to_csv(HERE / "yahoo.csv")
    assert np.isfinite(ya.to_numpy(dtype="float64")).all()

    # an outside daily series for the signal filter (a VIX-like close; synthetic, seed 3)
    days = daily.index.strftime("%Y-%m-%d")
    rng = np.random.default_rng(3)
    level = 18.0 + np.cumsum(rng.normal(0.0, 0.6, len(days)))
    vix = np.clip(level, 11.0, 45.0).round(2)
    lines = ["date,close"] + [f"{d},{v:.2f}" for d, v in zip(days, vix, strict=True)]
    (HERE / "vix_daily.csv").write_text("\n".join(lines) + "\n")

    # events of your own, added to the shipped calendar (times New York)
    (HERE / "my_events.csv").write_text(
        "# coverage earnings 2024-01-01 2024-12-31 source: example, not real dates\n"
        "time,kind,description\n"
        "2024-04-25 08:30,earnings,an example event of your own\n"
        "2024-06-05 10:00,earnings,another one\n")


if __name__ == "__main__":
    main()
