"""NMEA RMC/GGA parsing, cross-checked against pynmea2 where it applies."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from functools import reduce

import pynmea2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.protocols import nmea
from gateway.sources.nmea_source import NmeaSource

# The textbook examples of the NMEA 0183 reference (Munich, 23 March 1994)
RMC = "$GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W*6A"
GGA = "$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47"


def sentence(payload: str) -> str:
    """Wrap a payload with '$' and its checksum, computed independently of the module."""
    return f"${payload}*{reduce(lambda a, c: a ^ ord(c), payload, 0):02X}"


def test_rmc_textbook_example() -> None:
    pos = nmea.parse(RMC, "tracker-1")
    assert pos is not None and pos.device == "tracker-1" and pos.valid
    assert pos.lat == pytest.approx(48 + 7.038 / 60) and pos.lon == pytest.approx(11 + 31.0 / 60)
    assert pos.time == datetime(1994, 3, 23, 12, 35, 19, tzinfo=UTC)
    assert pos.speed_kmh == pytest.approx(22.4 * 1.852) and pos.course == 84.4
    ref = pynmea2.parse(RMC)
    assert (pos.lat, pos.lon) == (pytest.approx(ref.latitude), pytest.approx(ref.longitude))


def test_gga_textbook_example_takes_date_from_reference() -> None:
    pos = nmea.parse(GGA, "t", ref=datetime(2024, 5, 6, 12, 40, tzinfo=UTC))
    assert pos is not None and pos.valid
    assert pos.time == datetime(2024, 5, 6, 12, 35, 19, tzinfo=UTC)
    assert pos.altitude_m == 545.4
    assert pos.extras == {"source": "nmea_gga", "fix_quality": 1, "satellites": 8, "hdop": 0.9}
    ref = pynmea2.parse(GGA)
    assert (pos.lat, pos.lon) == (pytest.approx(ref.latitude), pytest.approx(ref.longitude))


def test_gga_just_before_midnight_received_after_midnight() -> None:
    s = sentence("GNGGA,235959.50,3114.1234,N,12128.5678,E,2,12,0.7,10.0,M,,M,,")
    pos = nmea.parse(s, ref=datetime(2024, 5, 7, 0, 0, 2, tzinfo=UTC))
    assert pos is not None and pos.time == datetime(2024, 5, 6, 23, 59, 59, 500000, tzinfo=UTC)


def test_south_and_west() -> None:
    rmc = nmea.parse(sentence("GNRMC,083000.00,A,3352.1280,S,15112.5340,W,0.5,12.0,010124,,,A"))
    assert rmc is not None
    assert rmc.lat == pytest.approx(-(33 + 52.128 / 60)) and rmc.lon == pytest.approx(-(151 + 12.534 / 60))
    assert rmc.time == datetime(2024, 1, 1, 8, 30, tzinfo=UTC)
    gga = nmea.parse(sentence("BDGGA,083000,2254.6600,S,04312.2000,W,1,05,1.2,3.0,M,,M,,"), ref=rmc.time)
    assert (
        gga is not None
        and gga.lat == pytest.approx(-22.911)
        and gga.lon == pytest.approx(-43.203333, abs=1e-6)
    )


def test_void_fix_and_no_position() -> None:
    void = nmea.parse(sentence("GPRMC,120000,V,4807.038,N,01131.000,E,,,230394,,"))
    assert void is not None and not void.valid
    assert nmea.parse(sentence("GPRMC,120000,V,,,,,,,230394,,,N")) is None
    assert nmea.parse(sentence("GPGGA,120000,,,,,0,00,,,M,,M,,")) is None
    assert nmea.parse(sentence("GPGSV,3,1,11,03,03,111,00,04,15,270,00,06,01,010,00,13,06,292,00")) is None


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (RMC[:-2] + "6B", "checksum mismatch"),
        (GGA.replace("4807.038", "4807.039"), "checksum mismatch"),
        (RMC.split("*")[0], "no '\\*hh'"),
        ("GPRMC,1*00", "start with"),
        (sentence("GPRMC,123519,A,4807.038,N"), "too few fields"),
        (sentence("GPRMC,123519,A,48x7.038,N,01131.000,E,0,0,230394,,"), "latitude"),
        (sentence("GPRMC,123519,A,4807.038,Q,01131.000,E,0,0,230394,,"), "hemisphere"),
        (sentence("GPRMC,123519,A,4807.038,N,01131.000,E,0,0,320394,,"), "date"),
        (sentence("GPRMC,256019,A,4807.038,N,01131.000,E,0,0,230394,,"), "time"),
        (sentence("GPGGA,123519,4807.038,N,18131.000,E,1,08,0.9,545.4,M,46.9,M,,"), "out of range"),
        (sentence("GPGGA,123519,4807.038,N,01131.000,E,nan,08,0.9,545.4,M,46.9,M,,"), "finite"),
        (sentence("GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,inf,M,46.9,M,,"), "finite"),
    ],
)
def test_invalid_sentences(text: str, reason: str) -> None:
    with pytest.raises(nmea.DecodeError, match=reason):
        nmea.parse(text, ref=datetime(2024, 1, 1, tzinfo=UTC))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=90))
def test_random_text_only_raises_decode_error(text: str) -> None:
    for candidate in (
        text,
        "$" + text,
        sentence("GPRMC," + text.replace("*", "")),
        sentence("GPGGA," + text),
    ):
        with contextlib.suppress(nmea.DecodeError):
            nmea.parse(candidate, ref=datetime(2024, 1, 1, tzinfo=UTC))


# ------------------------------------------------------------------ NmeaSource


async def test_source_replays_a_file_and_counts_noise(tmp_path) -> None:
    log = tmp_path / "track.nmea"
    log.write_text(
        "\n".join(
            [
                RMC,
                "garbage line",
                sentence("GPGSV,1,1,01,03,03,111,00"),
                GGA,
                RMC[:-2] + "00",
                "",
            ]
        )
    )
    got: list = []
    source = NmeaSource("bus-7", got.append)
    await source.read_file(log, date_ref=datetime(1994, 3, 23, 13, tzinfo=UTC))
    assert [p.device for p in got] == ["bus-7", "bus-7"]
    assert got[1].time == datetime(1994, 3, 23, 12, 35, 19, tzinfo=UTC)
    assert source.stats() == {"lines": 5, "positions": 2, "decode_errors": 2}


async def test_source_reads_nmea_over_tcp() -> None:
    async def talk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(f"{RMC}\r\n$GPRMC,noise\r\n".encode() + b"x" * 2000 + f"\r\n{RMC}\r\n".encode())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(talk, "127.0.0.1", 0)
    got: list = []

    async def collect(p) -> None:
        got.append(p)

    source = NmeaSource("boat", collect)
    try:
        await asyncio.wait_for(source.read_tcp("127.0.0.1", server.sockets[0].getsockname()[1]), 10)
    finally:
        server.close()
        await server.wait_closed()
    assert len(got) == 2 and got[0].lat == pytest.approx(48.1173)
    assert source.stats() == {"lines": 3, "positions": 2, "decode_errors": 2}
