"""Contract facts and the quarterly calendar."""

import datetime as dt

import pytest

from m2k_bt.contracts import (
    M2K,
    RTY,
    ContractSpec,
    contract_months,
    contract_symbol,
    expiry_date,
    front_contract,
    get_spec,
    parse_symbol,
    register_spec,
    roll_date,
    round_to_tick,
    trade_date,
)
from m2k_bt.errors import ContractSpecError


def test_m2k_and_rty_economics():
    assert M2K.multiplier == 5.0 and M2K.tick_size == 0.10
    assert M2K.tick_value == pytest.approx(0.50)  # 0.10 pts x $5
    assert RTY.tick_value == pytest.approx(5.00)  # 0.10 pts x $50
    assert M2K.initial_margin == pytest.approx(1.10 * M2K.maintenance_margin)  # 110% of 700
    assert M2K.commission == pytest.approx(0.25 + 0.35 + 0.02)


@pytest.mark.parametrize(
    "year,month,expiry,roll",
    [
        (2025, 12, dt.date(2025, 12, 19), dt.date(2025, 12, 11)),  # the examples
        (2024, 3, dt.date(2024, 3, 15), dt.date(2024, 3, 7)),
        (2025, 3, dt.date(2025, 3, 21), dt.date(2025, 3, 13)),
        (2024, 9, dt.date(2024, 9, 20), dt.date(2024, 9, 12)),
    ],
)
def test_expiry_and_roll(year, month, expiry, roll):
    assert expiry_date(M2K, year, month) == expiry
    assert expiry.weekday() == 4
    assert roll_date(M2K, year, month) == roll
    assert roll.weekday() == 3  # the Thursday before expiration week


def test_holiday_third_friday_moves_expiry_back():
    # 2026-06-19 is the 3rd Friday and Juneteenth (NYSE closed): expiry Thursday 2026-06-18
    assert expiry_date(M2K, 2026, 6) == dt.date(2026, 6, 18)
    # 2008-03-21 was the 3rd Friday and Good Friday
    assert expiry_date(RTY, 2008, 3) == dt.date(2008, 3, 20)
    # the roll is still 8 calendar days before the (moved) expiry: Wednesday 2026-06-10
    assert roll_date(M2K, 2026, 6) == dt.date(2026, 6, 10)


def test_roll_days_configurable():
    # CME's settlement lead month switches the Monday before expiry: 4 days before
    assert roll_date(M2K, 2025, 12, days_before=4) == dt.date(2025, 12, 15)
    with pytest.raises(ContractSpecError, match="days_before"):
        roll_date(M2K, 2025, 12, days_before=-1)


def test_symbols_both_ways():
    assert contract_symbol(M2K, 2025, 12) == "M2KZ5"
    assert contract_symbol(M2K, 2025, 12, year_digits=2) == "M2KZ25"
    assert contract_symbol(RTY, 2024, 3) == "RTYH4"
    c = parse_symbol("M2KZ25")
    assert (c.spec, c.year, c.month, c.symbol) == (M2K, 2025, 12, "M2KZ5")
    assert parse_symbol("m2kh6", ref_year=2025).year == 2026
    assert parse_symbol("M2KU9", ref_year=2026).year == 2019
    assert parse_symbol("RTYM7", ref_year=2026).year == 2027  # within a year ahead


@pytest.mark.parametrize("bad", ["M2K", "M2KZ", "M2KA5", "XYZZ5", "M2KF5"])
def test_bad_symbols(bad):
    with pytest.raises(ContractSpecError):
        parse_symbol(bad)


def test_month_not_listed():
    with pytest.raises(ContractSpecError, match="listed months: 3, 6, 9, 12"):
        expiry_date(M2K, 2025, 1)


def test_front_contract_honours_roll():
    assert front_contract(M2K, dt.date(2025, 12, 10)).symbol == "M2KZ5"
    assert front_contract(M2K, dt.date(2025, 12, 11)).symbol == "M2KH6"
    # the roll session opens 18:00 New York the evening before the roll date
    assert front_contract(M2K, dt.datetime(2025, 12, 10, 17, 59)).symbol == "M2KZ5"
    assert front_contract(M2K, dt.datetime(2025, 12, 10, 18, 0)).symbol == "M2KH6"
    # after the December roll and across the year end
    assert front_contract(M2K, dt.date(2025, 12, 31)).symbol == "M2KH6"
    assert front_contract(M2K, dt.date(2026, 1, 2)).symbol == "M2KH6"
    assert front_contract(M2K, dt.date(2024, 3, 6)).symbol == "M2KH4"
    assert front_contract(M2K, dt.date(2024, 3, 7)).symbol == "M2KM4"


def test_trade_date_of_aware_times():
    import zoneinfo

    utc = zoneinfo.ZoneInfo("UTC")
    # 23:30 UTC on 2025-12-10 is 18:30 New York: next trade date
    assert trade_date(dt.datetime(2025, 12, 10, 23, 30, tzinfo=utc)) == dt.date(2025, 12, 11)


def test_contract_months_lists_expiries_in_range():
    syms = [c.symbol for c in contract_months(M2K, dt.date(2025, 1, 1), dt.date(2025, 12, 31))]
    assert syms == ["M2KH5", "M2KM5", "M2KU5", "M2KZ5"]


def test_user_defined_spec_without_subclassing():
    mes = ContractSpec(root="MES", description="Micro E-mini S&P 500", multiplier=5.0,
                       tick_size=0.25, maintenance_margin=1500.0, initial_margin=1650.0,
                       commission=0.62)
    register_spec(mes)
    assert get_spec("mes") is mes
    assert parse_symbol("MESH6", ref_year=2025).spec is mes
    assert mes.round_price(5000.1) == 5000.0


@pytest.mark.parametrize(
    "changes,needle",
    [
        ({"multiplier": 0}, "multiplier"),
        ({"tick_size": -0.1}, "tick_size"),
        ({"initial_margin": 600.0}, "initial must be >= maintenance"),
        ({"intraday_margin": 5000.0}, "intraday_margin"),
        ({"months": "HMUA"}, "month codes"),
        ({"root": "m2k!"}, "root"),
        ({"multiplyer": 5}, "did you mean 'multiplier'"),
    ],
)
def test_impossible_specs(changes, needle):
    with pytest.raises(ContractSpecError, match=needle):
        M2K.replace(**changes)


def test_unknown_contract_name():
    with pytest.raises(ContractSpecError, match="did you mean 'M2K'"):
        get_spec("M2J")


def test_round_to_tick_modes():
    assert round_to_tick(2000.05 + 1e-9, 0.1) == 2000.1
    assert round_to_tick(2000.12, 0.1, "down") == 2000.1
    assert round_to_tick(2000.12, 0.1, "up") == 2000.2
    assert round_to_tick(2000.1000000001, 0.1, "up") == 2000.1  # float noise stays put
