"""Position filters: each bad fix is dropped with its reason and counted; history is told apart."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from core.model import Position
from detectors.vehicle.config import FilterConfig
from detectors.vehicle.filters import (
    DUPLICATE,
    FUTURE,
    HISTORY,
    INVALID_FIX,
    JUMP,
    LIVE,
    OUT_OF_ORDER,
    ZERO,
    PositionFilter,
)

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=timezone(timedelta(hours=8)))


def fix(s: float, lon: float = 116.40, lat: float = 39.90, **kw) -> Position:
    return Position(lat=lat, lon=lon, time=T0 + timedelta(seconds=s), device="1", **kw)


def test_each_reason_is_returned_and_counted():
    f = PositionFilter(FilterConfig())
    assert f.check(fix(0)) == LIVE
    assert f.check(fix(5, valid=False)) == INVALID_FIX
    assert f.check(fix(5, lon=0.0, lat=0.0)) == ZERO
    assert f.check(fix(5, lon=200.0)) == ZERO
    assert f.check(fix(0, lon=116.401)) == DUPLICATE
    assert f.check(fix(3600), received_at=T0) == FUTURE
    assert f.check(fix(10, lon=116.50)) == JUMP  # 8.5 km in 10 s
    assert f.check(fix(-60)) == HISTORY  # older than the last live fix
    assert f.check(fix(20, history=True)) == HISTORY  # a 0x0704 supplement
    assert f.check(fix(20, lon=116.4002)) == LIVE
    assert f.counts == {LIVE: 2, INVALID_FIX: 1, ZERO: 2, DUPLICATE: 1, FUTURE: 1, JUMP: 1, HISTORY: 2}


def test_a_terminal_that_keeps_reporting_the_new_place_is_believed():
    f = PositionFilter(FilterConfig(jump_accept_after=3))
    assert f.check(fix(0, lon=0.5, lat=0.5)) == LIVE  # a bad first fix
    assert [f.check(fix(10 + i, lon=116.40 + i * 1e-5)) for i in range(3)] == [JUMP, JUMP, LIVE]
    assert f.check(fix(20, lon=116.4001)) == LIVE


def test_filters_can_be_switched_off():
    f = PositionFilter(FilterConfig(invalid_fix=False, duplicates=False, max_speed_kmh=None,
                                    out_of_order_as_history=False, future_s=None))
    assert f.check(fix(0, valid=False)) == LIVE
    assert f.check(fix(0)) == LIVE
    assert f.check(fix(10, lon=117.0)) == LIVE
    assert f.check(fix(-10)) == OUT_OF_ORDER
    assert f.check(fix(99999), received_at=T0) == LIVE


def test_devices_are_independent():
    f = PositionFilter(FilterConfig())
    assert f.check(fix(0)) == LIVE
    other = Position(lat=31.23, lon=121.47, time=T0 + timedelta(seconds=1), device="2")
    assert f.check(other) == LIVE  # far away, but another terminal
