"""report.html, study.html and walkforward.html: their content as Bokeh models, and the files
opened from disk in a real headless Chromium (skipped, with the reason, where it is absent)."""

from __future__ import annotations

import csv
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import rth_bars, write_bars_csv

from m2k_bt.cli.backtest import main
from m2k_bt.report import bokeh_parts as bp
from m2k_bt.report import html as hr
from m2k_bt.report import study_html as sh
from m2k_bt.report.summary import build_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


# -------------------------------------------------------------------------------------------
# a real run through the command line
# -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data_csv(tmp_path_factory):
    # 2024-02-20 .. 2024-03-28 09:35-16:00: 28 days x 78 bars = 2,184 bars, across the DST
    # change of 2024-03-10 (offsets -05:00 then -04:00)
    path = tmp_path_factory.mktemp("data") / "m2k_html_5min.csv"
    return write_bars_csv(rth_bars(), path)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, data_csv):
    out = tmp_path_factory.mktemp("run") / "out"
    code = main(["--data", data_csv, "--out", str(out), "--param", "fast=10",
                 "--param", "slow=30", "--param", "stop_ticks=60",
                 "--sizer-param", "min_trades=5", "--quiet"])
    assert code == 0
    return out


def _trade_rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "trades.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_report_html_written_self_contained(run_dir):
    page = (run_dir / "report.html").read_text()
    assert "Bokeh" in page and "<script src=" not in page  # every resource inline
    assert "cdn.bokeh.org" not in page
    report = json.loads((run_dir / "report.json").read_text())
    assert report["files"]["report.html"] == "html"


def test_no_plot_skips_html_and_pngs(tmp_path, data_csv):
    out = tmp_path / "np"
    assert main(["--data", data_csv, "--out", str(out), "--no-plot", "--quiet"]) == 0
    names = {p.name for p in out.iterdir()}
    assert names == {"report.json", "trades.csv", "equity.csv"}


def test_open_flag_opens_report_html(tmp_path, data_csv, monkeypatch):
    import webbrowser

    opened = []
    monkeypatch.setattr(webbrowser, "open", lambda url, *a, **k: opened.append(url) or True)
    out = tmp_path / "op"
    assert main(["--data", data_csv, "--out", str(out), "--open", "--quiet"]) == 0
    assert opened == [(out / "report.html").resolve().as_uri()]
    opened.clear()
    assert main(["--data", data_csv, "--out", str(tmp_path / "op2"), "--quiet"]) == 0
    assert opened == []  # only when asked


# -------------------------------------------------------------------------------------------
# the models, without a browser
# -------------------------------------------------------------------------------------------


def test_levels_and_aggregation_known_answer():
    assert bp.resolution_levels(1500) == [1]
    assert bp.resolution_levels(1501) == [1, 4]  # ceil(1501 / 4) = 376 candles
    assert bp.resolution_levels(140_000) == [1, 4, 16, 64, 256]  # 140,000 / 256 = 547 <= 1,500
    bars = pd.DataFrame({
        "open": [10.0, 11, 12, 13, 14],
        "high": [12.0, 15, 13, 14, 20],
        "low": [9.0, 10, 8, 12, 13],
        "close": [11.0, 12, 13, 14, 19],
    }, index=[0.0, 1000, 2000, 3000, 4000])
    agg = bp.aggregate_ohlc(bars, 4)
    # bucket 1 = bars 0-3: open 10 (first), high 15 (max), low 8 (min), close 14 (last)
    # bucket 2 = bar 4 alone; x at the middle of a bucket's first and last bar
    assert agg["open"].tolist() == [10, 14] and agg["high"].tolist() == [15, 20]
    assert agg["low"].tolist() == [8, 13] and agg["close"].tolist() == [14, 19]
    assert agg["t"].tolist() == [1500.0, 4000.0] and agg["up"].tolist() == [1, 1]


def test_line_decimation_keeps_every_bucket_extreme():
    rng = np.random.default_rng(3)
    value = rng.normal(size=10_000).cumsum()
    rows = bp.line_rows(len(value), value, max_points=1000)
    assert len(rows) <= 1000 and np.all(np.diff(rows) > 0)
    assert value.argmin() in rows and value.argmax() in rows
    assert bp.line_rows(50, value[:50], max_points=1000).tolist() == list(range(50))


def _models(layout, name):
    return [m for m in layout.references() if getattr(m, "name", None) == name]


def test_layout_marks_every_trade_and_hover_shows_its_row(run_dir):
    # rebuild the layout from a fresh run of the same data to inspect the models
    from m2k_bt.engine import BacktestConfig, run_backtest

    data = rth_bars()
    result = run_backtest(data, BacktestConfig(params={"fast": 10, "slow": 30,
                                                       "stop_ticks": 60},
                                               sizer_params={"min_trades": 5}))
    layout = hr.report_layout(result, build_report(result))
    (trades,) = _models(layout, "trades")
    assert len(trades.data["entry_dt"]) == len(result.trades) == len(_trade_rows(run_dir))
    (hover,) = _models(layout, "trade_hover")
    fields = dict(hover.tooltips)
    assert fields["net_pnl"] == "@{net_pnl}{$0,0.00}" and fields["exit_reason"] == "@{exit_reason}"
    # a stop exit is drawn with the stop's marker; stop levels when the trades log them
    reasons = set(trades.data["exit_reason"])
    assert "stop" in reasons
    # stop levels (60 ticks = 6.0 points from the signal bar's close): a stop exit fills at
    # its level, or beyond it when the bar opens through it
    d = trades.data
    stops = [i for i, r in enumerate(d["exit_reason"]) if r == "stop"]
    for i in stops:
        sign = 1 if d["direction"][i] == "long" else -1
        assert sign * (d["exit_price"][i] - d["stop_level"][i]) <= 1e-9
    assert any(abs(d["exit_price"][i] - d["stop_level"][i]) < 1e-9 for i in stops)
    assert "target_level" not in d  # no target asked
    # SMA 10 and 30 over the price; the internal TickSums helper (plot=False) is not drawn
    assert _models(layout, "indicators") == []
    overlay, panel, left_out = hr._indicators_of(result, result.bars)
    assert left_out == []
    assert list(overlay) == ["SMA(10)", "SMA(30)"] and panel == {}
    # linked panels share the price chart's x range
    panels = [m for m in layout.references() if getattr(m, "name", None) in
              ("price", "equity", "drawdown", "position", "margin")]
    assert len(panels) == 5 and len({id(p.x_range) for p in panels}) == 1
    # 2,184 bars: levels of 1 and 4 bars (2184 / 4 = 546 buckets)
    assert [len(m.data["t"]) for m in (_models(layout, "ohlc_1") + _models(layout, "ohlc_4"))] \
        == [2184, 546]


def test_costs_breakdown_and_monthly_returns_known_answer():
    report = {"results": {"commission": 12.4, "slippage": 5.0},
              "inputs": {"costs": {"commission": 0.62, "slippage_ticks": 1.0},
                         "contract": {"tick_value": 0.5}}}
    trades = pd.DataFrame({"exit_reason": ["roll", "signal", "roll"], "contracts": [2, 5, 1]})
    # rolls: 3 contracts rolled x 2 sides x ($0.62 + 1 tick x $0.50) = 6.72
    assert hr.costs_breakdown(report, trades) == {"commission": 12.4, "slippage": 5.0,
                                                  "rolls": 6.72}

    class R:
        start_value = 1000.0
        equity = pd.DataFrame({"value": [1000.0, 1100.0, 1045.0, 990.0]},
                              index=pd.to_datetime(["2024-01-02", "2024-01-31", "2024-02-15",
                                                    "2024-02-28"]))

    monthly = hr._monthly_returns(R())
    # Jan: 1100 / 1000 - 1 = +10 %; Feb: 990 / 1100 - 1 = -10 %
    assert monthly["month"].tolist() == ["Jan", "Feb"]
    assert monthly["ret"].tolist() == pytest.approx([10.0, -10.0])


def test_study_and_walkforward_html_from_plain_results(tmp_path):
    trials = [{"number": i, "value": float(-(a - 20) ** 2 - (b - 50) ** 2),
               "params": {"fast": a, "slow": b}}
              for i, (a, b) in enumerate((a, b) for a in (10, 20, 30) for b in (40, 50))]
    study = {"trials": trials, "objective": "sharpe", "best_params": {"fast": 20, "slow": 50},
             "best_value": 0.0, "dsr": 0.91, "pbo": 0.2}
    path = sh.write_study_html(study, tmp_path / "study.html")
    layout = sh.study_layout(study)
    assert _models(layout, "param_heatmap") and _models(layout, "objective_fig")
    page = path.read_text()
    assert "Deflated Sharpe ratio" in page and "0.910" in page and "0.200" in page
    three = dict(study, trials=[dict(t, params=dict(t["params"], stop=5)) for t in trials])
    assert _models(sh.study_layout(three), "parallel_fig")  # beyond two parameters

    idx = pd.date_range("2024-01-01", periods=30, freq="D")
    wf = {"folds": [{"fold": i, "test_start": str(idx[10 * i].date()), "oos_sharpe": 0.5 + i,
                     "best_params": {"fast": 10 + i}} for i in range(3)],
          "oos_equity": pd.Series(np.linspace(25_000, 26_000, 30), index=idx),
          "efficiency": 0.62}
    path = sh.write_walkforward_html(wf, tmp_path / "walkforward.html")
    layout = sh.walkforward_layout(wf)
    assert _models(layout, "oos_equity") and _models(layout, "stability_fast")
    assert "0.620" in path.read_text()


@pytest.fixture(scope="module")
def study_dirs(tmp_path_factory):
    """A real grid study (fast 5/10 x slow 20/30) and a 2-fold walk-forward of the CLI."""
    from conftest import make_bars

    tmp = tmp_path_factory.mktemp("study")
    bars = make_bars(1500, seed=6)
    bars.index = bars.index.tz_localize(None)
    bars.to_csv(tmp / "bars.csv")
    common = ["--data", str(tmp / "bars.csv"), "--lenient", "--sizer", "fixed", "--space",
              "fast=5:10:5", "slow=20:30:10", "--sampler", "grid", "--workers", "1",
              "--min-trades", "0", "--quiet"]
    assert main(["optimize", *common, "--out", str(tmp / "opt")]) == 0
    assert main(["walkforward", *common, "--folds", "2", "--out", str(tmp / "wf")]) == 0
    return tmp / "opt", tmp / "wf"


def test_optimize_and_walkforward_write_their_html(study_dirs):
    opt, wf = study_dirs
    page = (opt / "study.html").read_text()
    assert "Deflated Sharpe ratio" in page and "Probability of backtest overfitting" in page
    assert "<script src=" not in page
    assert "Walk-forward efficiency" in (wf / "walkforward.html").read_text()


# -------------------------------------------------------------------------------------------
# in a real browser
# -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("headless Chromium and chromedriver are not installed (Debian: apt-get "
                    "install chromium chromium-driver); the browser tests need them")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    profile = tmp_path_factory.mktemp("chrome-profile")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1400,1800",
                f"--user-data-dir={profile}"):
        opts.add_argument(arg)
    opts.binary_location = CHROMIUM
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


def _open(driver, path: Path) -> list[dict]:
    """Load a file:// page, wait until Bokeh has rendered it; return the console log."""
    driver.get(path.resolve().as_uri())
    for _ in range(300):
        if driver.execute_script(
            "return !!(window.Bokeh && Bokeh.documents.length && Bokeh.index && "
            "Object.keys(Bokeh.index).length)"
        ):
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"Bokeh never rendered {path.name}")
    time.sleep(1.0)
    return driver.get_log("browser")


def _errors(log: list[dict]) -> list[str]:
    return [e["message"] for e in log if e["level"] in ("SEVERE", "ERROR")]


# Finds the Bokeh view of a named plot: Bokeh.index.roots are the root views, and every view
# yields its child views from children().
_VIEW_JS = """
function findView(name) {
  const stack = [...Bokeh.index.roots];
  while (stack.length) {
    const v = stack.pop();
    if (v.model && v.model.name === name) { return v; }
    for (const c of v.children()) { stack.push(c); }
  }
  return null;
}
"""


def _canvas_painted(driver, name: str) -> int:
    """Distinct colours in the plot's canvas (1 = blank)."""
    return driver.execute_script(_VIEW_JS + """
      const v = findView(arguments[0]);
      const c = v.canvas_view.primary.canvas;
      const ctx = c.getContext('2d');
      const px = ctx.getImageData(0, 0, c.width, c.height).data;
      const seen = new Set();
      for (let i = 0; i < px.length; i += 4 * 97) {
        seen.add((px[i] << 16) | (px[i + 1] << 8) | px[i + 2]);
      }
      return seen.size;""", name)


def _page_xy(driver, name: str, x: float, y: float) -> tuple[float, float]:
    """Viewport coordinates of data point (x, y) of a plot."""
    return tuple(driver.execute_script(_VIEW_JS + """
      const v = findView(arguments[0]);
      const r = v.canvas_view.el.getBoundingClientRect();
      const sx = v.frame.x_scale.compute(arguments[1]);
      const sy = v.frame.y_scale.compute(arguments[2]);
      return [r.left + sx, r.top + sy];""", name, x, y))


def _tooltip_text(driver) -> str:
    """Text of every visible Bokeh tooltip (they live in shadow roots)."""
    return driver.execute_script("""
      const out = [];
      const walk = (root) => {
        for (const el of root.querySelectorAll('*')) {
          if (el.shadowRoot) { walk(el.shadowRoot); }
          if (el.classList && [...el.classList].some(c => c.includes('tooltip'))
              && el.offsetParent !== null) { out.push(el.innerText); }
        }
      };
      walk(document);
      return out.join('\\n');""")


def test_report_html_in_chromium(browser, run_dir, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    from selenium.webdriver.common.actions.wheel_input import ScrollOrigin

    log = _open(browser, run_dir / "report.html")
    assert _errors(log) == []
    for name in ("price", "equity", "drawdown", "position", "margin", "monthly_fig",
                 "pnl_hist", "kelly_fig"):
        assert _canvas_painted(browser, name) > 2, f"{name} canvas is blank"

    rows = _trade_rows(run_dir)
    marks = browser.execute_script(
        "const m = Bokeh.documents[0].get_model_by_name('trades');"
        "return [m.data.entry_dt.length, m.data.x_exit.length];")
    assert marks == [len(rows), len(rows)] and len(rows) > 5

    # hover the entry mark of the biggest winner: the tooltip shows its trades.csv row
    trades = browser.execute_script(
        "const d = Bokeh.documents[0].get_model_by_name('trades').data;"
        "return [Array.from(d.x_entry), Array.from(d.entry_price), Array.from(d.net_pnl)];")
    best = int(np.argmax(trades[2]))
    x, y = _page_xy(browser, "price", trades[0][best], trades[1][best])
    action = ActionBuilder(browser)
    action.pointer_action.move_to_location(int(x) + 1, int(y) + 1)
    action.perform()
    time.sleep(0.5)
    action.pointer_action.move_to_location(int(x), int(y))
    action.perform()
    time.sleep(0.8)
    text = _tooltip_text(browser)
    assert "net_pnl" in text and rows[best]["entry_dt"] in text
    assert f"net_pnl:\n${float(rows[best]['net_pnl']):,.2f}" in text  # a winner: no sign

    # zoom with the mouse wheel over the price chart: the visible range narrows, every linked
    # panel follows, and the full-resolution candles replace the 4-bar buckets
    def state():
        return browser.execute_script("""
          const doc = Bokeh.documents[0], xr = doc.get_model_by_name('price_x');
          const eq = doc.get_model_by_name('equity');
          const vis = (n) => doc.get_model_by_name(n) && [...doc.all_models].filter(
              m => m.data_source && m.data_source.name === n).map(m => m.visible);
          return [xr.start, xr.end, eq.x_range.start, eq.x_range.end, vis('ohlc_1'),
                  vis('ohlc_4')];""")

    before = state()
    assert before[4] == [False, False] and before[5] == [True, True]
    browser.save_screenshot(str(tmp_path / "report.png"))
    cx, cy = _page_xy(browser, "price", trades[0][best], trades[1][best])
    for _ in range(6):
        ActionChains(browser).scroll_from_origin(
            ScrollOrigin.from_viewport(int(cx), int(cy)), 0, -300).perform()
        time.sleep(0.3)
    time.sleep(0.5)
    after = state()
    assert after[1] - after[0] < 0.5 * (before[1] - before[0])
    assert after[2:4] == after[0:2]
    assert after[4] == [True, True] and after[5] == [False, False]
    assert _errors(browser.get_log("browser")) == []

    shot = tmp_path / "report-zoomed.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000 and (tmp_path / "report.png").stat().st_size > 10_000


def test_real_study_and_walkforward_html_in_chromium(browser, study_dirs, tmp_path):
    opt, wf = study_dirs
    assert _errors(_open(browser, opt / "study.html")) == []
    assert _canvas_painted(browser, "param_heatmap") > 2  # two parameters: a heatmap
    assert _canvas_painted(browser, "objective_fig") > 2
    browser.save_screenshot(str(tmp_path / "study.png"))
    assert _errors(_open(browser, wf / "walkforward.html")) == []
    assert _canvas_painted(browser, "oos_fig") > 2
    # the folds table fits the 1,400 px window without scrolling sideways
    width = browser.execute_script("""
      const walk = (root) => {
        for (const el of root.querySelectorAll('*')) {
          if (el.id === 'm2k-folds') { return el.getBoundingClientRect().width; }
          if (el.shadowRoot) { const w = walk(el.shadowRoot); if (w) { return w; } }
        }
        return 0;
      };
      return walk(document);""")
    assert 0 < width <= browser.execute_script("return window.innerWidth") <= 1400
    browser.save_screenshot(str(tmp_path / "walkforward.png"))


def test_study_and_walkforward_html_in_chromium(browser, tmp_path):
    trials = [{"number": i, "value": float(-(a - 20) ** 2 - (b - 50) ** 2),
               "params": {"fast": a, "slow": b}}
              for i, (a, b) in enumerate((a, b) for a in (10, 20, 30) for b in (40, 50))]
    study = sh.write_study_html({"trials": trials, "objective": "sharpe", "dsr": 0.9,
                                 "pbo": 0.1}, tmp_path / "study.html")
    assert _errors(_open(browser, study)) == []
    assert _canvas_painted(browser, "param_heatmap") > 2
    idx = pd.date_range("2024-01-01", periods=30, freq="D")
    wf = sh.write_walkforward_html(
        {"folds": [{"fold": i, "test_start": str(idx[10 * i].date()),
                    "best_params": {"fast": 10 + i}} for i in range(3)],
         "oos_equity": pd.Series(np.linspace(25_000, 26_000, 30), index=idx),
         "efficiency": 0.5}, tmp_path / "walkforward.html")
    assert _errors(_open(browser, wf)) == []
    assert _canvas_painted(browser, "oos_fig") > 2
    browser.save_screenshot(str(tmp_path / "walkforward.png"))


def test_rolls_margin_events_and_warnings_are_shown():
    from types import SimpleNamespace

    from bokeh.models import Span

    from m2k_bt.engine import BacktestConfig, run_backtest

    data = rth_bars()
    data["roll"] = False
    data.iloc[[300, 1200], data.columns.get_loc("roll")] = True  # two roll bars
    result = run_backtest(data, BacktestConfig(params={"fast": 10, "slow": 30},
                                               sizer="fixed"))
    event = SimpleNamespace(dt=data.index[500].tz_localize(None).to_pydatetime(),
                            kind="margin_call", equity=600.0, requirement=700.0, contracts=1,
                            action="liquidated 1 contract")
    result.margin_events = [event]
    report = build_report(result)
    report["warnings"] = ["data: line 7 2024-02-20 10:05: high below close -> repaired",
                          "margin_call at 2024-02-27 10:15: equity $600.00"]
    layout = hr.report_layout(result, report)
    (price,) = _models(layout, "price")
    rolls = [s for s in price.center if isinstance(s, Span)]
    assert len(rolls) == 2  # one dashed vertical per roll bar
    (events,) = _models(layout, "margin_events")
    assert events.data["kind"] == ["margin_call"]
    assert events.data["price"][0] == pytest.approx(data["close"].iloc[500])  # on that bar
    page = hr._warnings_html(report, result)
    assert "1 warning(s)" in page and "1 data repair(s)" in page and "high below close" in page


# -------------------------------------------------------------------------------------------
# the figures a trader reads first (report.json's overview on the page)
# -------------------------------------------------------------------------------------------


def test_drawdown_periods_and_yearly_returns_known_answer():
    from m2k_bt.report.overview import drawdown_periods, yearly_returns

    idx = pd.to_datetime(["2023-12-28", "2023-12-29", "2024-01-02", "2024-01-03", "2024-01-05",
                          "2024-01-08"]).tz_localize("America/New_York")
    values = [1100.0, 990.0, 1045.0, 1100.0, 1080.0, 1070.0]
    dd = drawdown_periods(idx, values, 1000.0)
    # peak 1100 on 12-28; trough 990 on 12-29 (110 = 10 % of 1100); back to 1100 on 01-03:
    # 6 days, 3 bars. Then 1100 -> 1070 still under water at the end: 30 = 2.7273 %, from
    # 01-03 to the last bar 01-08: 5 days, 2 bars
    first, second = dd["worst"]
    assert (first["peak_dt"][:10], first["trough_dt"][:10], first["recovery_dt"][:10]) == (
        "2023-12-28", "2023-12-29", "2024-01-03")
    assert first["depth"] == 110.0 and first["depth_pct"] == pytest.approx(10.0)
    assert first["days"] == 6.0 and first["bars"] == 3
    assert second["recovery_dt"] is None and second["depth"] == 30.0
    assert second["depth_pct"] == pytest.approx(2.7273) and second["days"] == 5.0
    assert dd["max_duration_days"] == 6.0 and dd["max_duration_bars"] == 3
    years = yearly_returns(idx, values, 1000.0)
    # 2023: 990 / 1000 - 1 = -1 %; 2024: 1070 / 990 - 1 = +8.0808 %
    assert [y["year"] for y in years] == [2023, 2024]
    assert [y["return_pct"] for y in years] == pytest.approx([-1.0, 8.0808], abs=1e-4)
    assert [y["net_profit"] for y in years] == [-10.0, 80.0]


def test_waterfall_tables_and_header_known_answer():
    from m2k_bt.report.overview import cost_waterfall, roll_costs

    # 3 contracts rolled x 2 sides: commission 3 x 2 x $0.62 = $3.72, slippage 3 x 2 x 1 tick x
    # $0.50 = $3.00; gross = net 100 + commission 12.40 + slippage 5.00 = 117.40
    w = cost_waterfall(100.0, 12.4, 5.0, roll_costs(3, 0.62, 1.0, 0.5), 1.0, 0.5)
    assert (w["gross_pnl"], w["commission"], w["slippage"], w["rolls"], w["net_pnl"]) == (
        117.4, 8.68, 2.0, 6.72, 100.0)  # 117.40 - 8.68 - 2.00 - 6.72 = 100.00
    steps = hr.waterfall_steps(w)
    assert [s["value"] for s in steps] == [117.4, -8.68, -2.0, -6.72, 100.0]
    zero = cost_waterfall(-50.0, 10.0, 0.0, roll_costs(0, 0.62, 0.0, 0.5), 0.0, 0.5)
    assert zero["slippage_note"].startswith("0 ticks of slippage assumed")
    assert hr.waterfall_steps(zero)[2]["value"] == 0.0  # shown as $0.00, not -$0.00
    report = {"overview": {
        "costs": w,
        "directions": {"long": {"trades": 2, "win_rate": 0.5, "net_pnl": 60.0, "avg_pnl": 30.0},
                       "short": {"trades": 0, "win_rate": None, "net_pnl": 0.0,
                                 "avg_pnl": None}},
        "yearly_returns": [{"year": 2024, "return_pct": 8.0808, "net_profit": 80.0,
                            "end_value": 1070.0}],
        "drawdowns": {"max_duration_days": 6.0, "worst": [
            {"peak_dt": "2023-12-28T00:00:00-05:00", "trough_dt": "2023-12-29T00:00:00-05:00",
             "recovery_dt": None, "depth": 110.0, "depth_pct": 10.0, "days": 6.0, "bars": 3}]},
    }}
    page = hr._tables_html(report)
    for text in ("Long vs short", "$30.00", "Yearly returns", "8.08 %", "not yet", "-$110.00",
                 "longest: 6.0 days", "gross P&amp;L", "$117.40", "roll costs", "-$6.72",
                 "1 ticks of slippage per fill assumed ($0.50 per contract per side)"):
        assert text in page, text
    assert hr.changed_params_text({"strategy": {"fast": 10}, "sizer": {"min_trades": 5}}) == (
        "parameters changed from the defaults: fast=10, min_trades=5")


def test_report_page_shows_overview_kelly_declines_and_full_times(run_dir):
    from m2k_bt.engine import BacktestConfig, run_backtest

    result = run_backtest(rth_bars(), BacktestConfig(params={"fast": 10, "slow": 30,
                                                             "stop_ticks": 60},
                                                     sizer_params={"min_trades": 5}))
    report = build_report(result)
    layout = hr.report_layout(result, report)
    head = layout.children[0].text
    # only what differs from the defaults, never a row of name=None
    assert "parameters changed from the defaults: stop_ticks=60, fast=10, slow=30, " \
           "min_trades=5" in head  # in the strategy's parameter order, then the sizer's
    assert "=None" not in head
    assert "SYNTHETIC" not in head  # the test's own file
    for card in ("Buy &amp; hold, 1 contract", "Time in market", "Longest drawdown",
                 "Peak margin / equity", "Peak leverage", "Largest win", "Average loss"):
        assert card in head, card
    # buy and hold of one contract on the equity panel: start + (close - first close) x $5
    (bh,) = _models(layout, "buy_and_hold")
    close = result.equity["close"].to_numpy()
    assert bh.data["bh"][-1] == pytest.approx(result.start_value + (close[-1] - close[0]) * 5,
                                              abs=0.01)
    # every Kelly decision that gave 0 contracts is drawn on the zero line
    declined = report["overview"]["entries_declined"]
    (marks,) = _models(layout, "kelly_declined")
    assert len(marks.data["x"]) == declined["declined"] > 0
    if declined["declined"]:
        assert "Entries declined by the sizer" in head
    # the cost waterfall: gross - commission - slippage - rolls = net
    (costs,) = _models(layout, "costs")
    assert sum(costs.data["value"][:4]) == pytest.approx(costs.data["value"][4], abs=0.02)
    # the trade table's ISO times fit their columns
    (table,) = _models(layout, "trade_table")
    widths = {c.field: c.width for c in table.columns}
    assert widths["entry_dt"] >= 190 and widths["exit_dt"] >= 190
    assert table.autosize_mode == "none"


def test_price_chart_reads_on_its_own_and_thins_its_marks(monkeypatch):
    from m2k_bt.engine import BacktestConfig, run_backtest

    result = run_backtest(rth_bars(), BacktestConfig(params={"fast": 10, "slow": 30},
                                                     sizer="fixed"))
    report = build_report(result)
    layout = hr.report_layout(result, report)
    price = next(m for m in layout.references() if getattr(m, "name", None) == "price")
    assert all(ax.visible for ax in price.xaxis)  # dates under the price chart
    assert price.legend[0] in price.above  # the legend is above the plot, off the candles
    (rug,) = _models(layout, "trade_rug")
    entries = next(m for m in layout.references() if getattr(m, "name", None) == "entry_marks")
    n = len(result.trades)
    assert 5 < n <= hr.MAX_TRADE_MARKS and entries.visible and not rug.visible
    # past MAX_TRADE_MARKS trades in view: a density strip of the entries instead of the marks
    monkeypatch.setattr(hr, "MAX_TRADE_MARKS", n - 1)
    layout = hr.report_layout(result, report)
    (rug,) = _models(layout, "trade_rug")
    entries = next(m for m in layout.references() if getattr(m, "name", None) == "entry_marks")
    assert rug.visible and not entries.visible
    assert len(rug.data_source.data["x_entry"]) == n


def test_equity_panel_shades_where_the_sizer_kept_the_account_flat():
    # bars 0..7 ten ms apart; declined at bar 1 while flat, an entry sized at bar 4 fills at 5;
    # declined again at bar 6 to the end: two stretches, [10, 40) and [60, 70]
    t = np.arange(8) * 10.0
    pos = np.array([0, 0, 0, 0, 0, 1, 0, 0])
    log = [{"x": 10.0, "contracts": 0}, {"x": 40.0, "contracts": 1},
           {"x": 60.0, "contracts": 0}]
    left, right = hr.sizer_flat_spans(t, pos, log)
    assert left.tolist() == [10.0, 60.0] and right.tolist() == [40.0, 70.0]
    assert [s.tolist() for s in hr.sizer_flat_spans(t, pos, [])] == [[], []]


def test_study_page_colours_its_verdicts_and_formats_each_column():
    trials = [{"number": i, "value": float(-(a - 20) ** 2 - (b - 50) ** 2) if a < b else None,
               "params": {"fast": a, "slow": b}, "state": "COMPLETE" if a < b else "PRUNED",
               "retry_of": None, "net_profit": 1234.5 * i, "max_drawdown_pct": 9.0144}
              for i, (a, b) in enumerate((a, b) for a in (10, 20, 60) for b in (40, 50))]
    layout = sh.study_layout({"trials": trials, "objective": "sharpe", "dsr": 0.97,
                              "pbo": 0.571})
    head = layout.children[0].text
    assert "class='v pos'>0.970</div><div class='w'>significant" in head
    assert "class='v neg'>0.571</div><div class='w'>overfit" in head
    table = layout.children[-1].text
    assert "retry of" not in table  # a column with no value is left out
    assert "<td>$6,172.50</td>" in table  # 1234.5 x 5 trials, as dollars
    assert "<td>9.01 %</td>" in table
    (heat,) = _models(layout, "heatmap")
    (infeasible,) = _models(layout, "heatmap_infeasible")
    assert len(heat.data["a"]) == 4 and infeasible.data["a"] == ["60", "60"]  # 60 >= 40, 50
    (bar,) = _models(layout, "heatmap_colorbar")
    assert bar.title == "sharpe"


def test_parallel_coordinates_have_a_colour_bar_and_the_best_so_far_has_no_gaps():
    trials = [{"number": i, "value": None if i == 3 else float(i % 5 - 2),
               "params": {"a": i % 3, "b": i % 4, "c": i % 5}} for i in range(10)]
    layout = sh.study_layout({"trials": trials, "objective": "sortino"})
    (bar,) = _models(layout, "parallel_colorbar")
    assert bar.title == "sortino"
    (src,) = _models(layout, "trials")
    # values -2 -1 0 (infeasible) 2 -2 -1 0 1 2: the best so far carries over trial 3
    assert list(src.data["best"]) == [-2, -1, 0, 0, 2, 2, 2, 2, 2, 2]


def test_walkforward_folds_table_reads_at_a_glance():
    folds = [{"fold": i, "is_start": f"2024-0{i + 1}-01 18:00:00-05:00",
              "oos_start": f"2024-0{i + 3}-01 18:00:00-05:00", "objective": "sharpe",
              "is_trials": 10, "oos_final_value": 25_000.0 + 1_000 * i, "oos_engine": "kernel",
              "best_params": {"fast": 10 + i, "slow": 200}} for i in range(3)]
    idx = pd.date_range("2024-03-01", periods=90, freq="D")
    layout = sh.walkforward_layout({"folds": folds, "efficiency": 0.4,
                                    "oos_equity": pd.Series(np.linspace(25e3, 27e3, 90),
                                                            index=idx)})
    text = layout.children[-1].text
    folds_table = text.split("<details>")[0]
    head = folds_table.split("</tr>")[0]
    # the fold, its parameters, then its windows; dates without times, dollars as dollars
    assert [h.split("</th>")[0] for h in head.split("<th>")[1:]] == [
        "fold", "fast", "slow", "oos start", "is start", "oos final value"]
    assert "<td>2024-03-01</td>" in folds_table and "<td>$27,000.00</td>" in folds_table
    assert "2.7e+04" not in text
    assert "Every fold: objective: sharpe; is trials: 10; oos engine: kernel." in text
    labels = sorted(m.text for m in layout.references()
                    if getattr(m, "name", None) == "fold_label")
    assert labels == ["fold 0", "fold 1", "fold 2"]


def test_trade_marks_switch_to_a_density_strip_in_chromium(browser, tmp_path, monkeypatch):
    from m2k_bt.engine import BacktestConfig, run_backtest

    result = run_backtest(rth_bars(), BacktestConfig(params={"fast": 10, "slow": 30},
                                                     sizer="fixed"))
    n = len(result.trades)
    monkeypatch.setattr(hr, "MAX_TRADE_MARKS", 5)  # the whole run shows n > 5 trades
    page = hr.write_report_html(result, tmp_path / "report.html", build_report(result))
    assert _errors(_open(browser, page)) == []
    visible = """
      const doc = Bokeh.documents[0];
      return [doc.get_model_by_name('trade_rug').visible,
              doc.get_model_by_name('entry_marks').visible];"""
    assert n > 5 and browser.execute_script(visible) == [True, False]
    browser.save_screenshot(str(tmp_path / "dense.png"))
    # zoom to the span of the first three trades: the marks come back, the strip goes
    browser.execute_script("""
      const doc = Bokeh.documents[0], xr = doc.get_model_by_name('price_x');
      const x = doc.get_model_by_name('trades').data.x_entry;
      xr.start = x[0] - 1; xr.end = x[2] + 1;""")
    time.sleep(0.5)
    assert browser.execute_script(visible) == [False, True]
    assert _errors(browser.get_log("browser")) == []
    assert _canvas_painted(browser, "price") > 2
