"""The cache of validated bars (m2k_bt.feeds.cache): a file is parsed once; an edited file,
other options or a broken entry are parsed again; nothing else changes."""

from __future__ import annotations

import os

import pandas as pd
import pytest
from conftest import rth_bars, write_bars_csv

import m2k_bt.feeds.loaders as loaders
from m2k_bt.errors import DataFeedError
from m2k_bt.feeds import load_bars
from m2k_bt.feeds.cache import KEEP


@pytest.fixture
def counted(monkeypatch, tmp_path):
    """Each test its own cache folder; the list of files the loader really parsed."""
    monkeypatch.setenv("M2K_CACHE_DIR", str(tmp_path / "cache"))
    parsed = []
    real = loaders._load_bars

    def parse(path, *args):
        parsed.append(path)
        return real(path, *args)

    monkeypatch.setattr(loaders, "_load_bars", parse)
    return parsed


def test_a_file_is_parsed_once_and_read_back_the_same(counted, tmp_path):
    path = write_bars_csv(rth_bars(end="2024-02-23"), tmp_path / "bars.csv")
    first = load_bars(path)
    second = load_bars(path)
    assert counted == [path]  # the second load came from the cache
    pd.testing.assert_frame_equal(first, second)
    assert second.attrs["report"] == first.attrs["report"]
    assert second.attrs["source"] == path and second.attrs["format"] == first.attrs["format"]
    assert second.attrs["lines"] == first.attrs["lines"]
    second.iloc[0, 0] = -1.0  # a caller's edit does not reach the cache
    assert load_bars(path).iloc[0, 0] == first.iloc[0, 0]


def test_an_edited_file_is_parsed_again_even_with_the_same_size_and_time(counted, tmp_path):
    path = write_bars_csv(rth_bars(end="2024-02-23"), tmp_path / "bars.csv")
    before = load_bars(path)
    stat = os.stat(path)
    text = open(path).read()
    lines = text.splitlines(keepends=True)
    row = lines[1].split(",")
    close = float(row[4])
    row[4] = f"{close + 0.1:.1f}" if len(f"{close + 0.1:.1f}") == len(row[4]) else row[4]
    assert row[4] != lines[1].split(",")[4]  # same length: the file keeps its size
    lines[1] = ",".join(row)
    open(path, "w").write("".join(lines))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # and its time stamp
    after = load_bars(path)
    assert counted == [path, path]
    assert after["close"].iloc[0] == pytest.approx(before["close"].iloc[0] + 0.1)


def test_other_options_a_broken_entry_and_bad_files(counted, tmp_path, monkeypatch):
    path = write_bars_csv(rth_bars(end="2024-02-23"), tmp_path / "bars.csv")
    load_bars(path)
    load_bars(path, lenient=True)  # other options: another entry
    assert counted == [path, path]
    folder = tmp_path / "cache"
    for entry in folder.glob("*.pkl"):
        entry.write_bytes(b"not a pickle")  # truncated or foreign: parsed again
    again = load_bars(path)
    assert len(counted) == 3 and len(again) > 100
    bad = tmp_path / "bad.csv"
    bad.write_text("datetime,open,high,low,close,volume\n2024-02-20 10:00,1,2,3\n")
    for _ in range(2):  # an error is not cached: said each time
        with pytest.raises(DataFeedError):
            load_bars(str(bad))
    monkeypatch.setenv("M2K_CACHE_DIR", "off")
    load_bars(path)
    load_bars(path)
    assert len(counted) == 3 + 2 + 2


def test_the_cache_keeps_a_bounded_number_of_entries_and_survives_an_unwritable_folder(
        counted, tmp_path, monkeypatch):
    bars = rth_bars(end="2024-02-21")
    for k in range(KEEP + 3):
        load_bars(write_bars_csv(bars, tmp_path / f"b{k}.csv"))
    assert len(list((tmp_path / "cache").glob("*.pkl"))) == KEEP
    blocked = tmp_path / "a-file"
    blocked.write_text("x")
    monkeypatch.setenv("M2K_CACHE_DIR", str(blocked / "cache"))  # cannot be made
    path = write_bars_csv(bars, tmp_path / "other.csv")
    assert len(load_bars(path)) == len(load_bars(path)) > 0
