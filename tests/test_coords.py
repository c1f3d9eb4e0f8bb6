"""WGS-84 <-> GCJ-02 conversion against published values and its own inverse."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.coords import from_wgs84, gcj02_to_wgs84, haversine_m, out_of_china, to_wgs84, wgs84_to_gcj02


def test_known_offset_in_beijing():
    # the widely published example: WGS-84 (116.397, 39.908) shows at about (116.4032, 39.9094) on Chinese maps
    lon, lat = wgs84_to_gcj02(116.397, 39.908)
    assert lon == pytest.approx(116.40324, abs=2e-5) and lat == pytest.approx(39.90940, abs=2e-5)
    # the offset is a few hundred metres, as every map user in China knows
    assert 400 < haversine_m(116.397, 39.908, lon, lat) < 700


def test_no_offset_outside_china():
    assert out_of_china(-0.1276, 51.5072)
    assert wgs84_to_gcj02(-0.1276, 51.5072) == (-0.1276, 51.5072)
    assert gcj02_to_wgs84(2.35, 48.85) == (2.35, 48.85)


@settings(max_examples=200, deadline=None)
@given(st.floats(min_value=75.0, max_value=134.0), st.floats(min_value=18.0, max_value=53.0))
def test_round_trip_is_within_a_metre(lon, lat):
    back = gcj02_to_wgs84(*wgs84_to_gcj02(lon, lat))
    assert haversine_m(lon, lat, *back) < 1.0


def test_named_crs_dispatch():
    p = (121.4737, 31.2304)
    assert to_wgs84(*p, "wgs84") == p
    assert haversine_m(*to_wgs84(*from_wgs84(*p, "gcj02"), "gcj02"), *p) < 0.01
    with pytest.raises(ValueError, match="unknown coordinate system"):
        to_wgs84(*p, "bd09")  # type: ignore[arg-type]
