"""A reproducible rainstorm and the flooding of one underpass, for replaying through the sensor rules.

Shape (documented so the expected episodes can be reasoned about, not just recorded):

- Rain, one gauge (tipping bucket, 0.2 mm a tip, one report a minute carrying the tips of that
  minute as `rain_mm`):
  * 8 h of steady stratiform rain at 6 mm/h (48 mm), from 00:00;
  * then a 4 h convective burst of 150 mm shaped by the Chicago design hyetograph (Keifer & Chu,
    1957) for the intensity-duration curve i(t) = a / (t + b)^c (mm/min, t in minutes) with b = 15,
    c = 0.7 and the peak at r = 0.4 of the burst; `a` is scaled so the burst totals 150 mm;
  * then dry, with the gauge still reporting zeros every minute for 18 h.
- Water level at the underpass (one report a minute): a linear reservoir. Each minute the level
  rises by `RUNOFF_CM_PER_MM` per mm of rain and the drain takes away up to `DRAIN_CM_PER_MIN`; on
  top of a 3 cm dry reading it carries a seeded +-1 cm ripple (waves, probe noise), so it hovers
  around thresholds without crossing their hysteresis bands; at minute SPIKE_MINUTE one reading
  reads 180 cm (a leaf on the ultrasonic probe) and the next reads normally again.

`storm()` returns the readings in time order, both devices interleaved.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

from core.model import Reading

CST = timezone(timedelta(hours=8))
START = datetime(2026, 7, 20, 0, 0, tzinfo=CST)
PRE_MINUTES, PRE_MM_PER_H = 8 * 60, 6.0
BURST_MINUTES, BURST_MM, PEAK_AT = 4 * 60, 150.0, 0.4
DRY_MINUTES = 18 * 60
B, C = 15.0, 0.7
TIP_MM = 0.2
BASE_CM, RUNOFF_CM_PER_MM, DRAIN_CM_PER_MIN = 3.0, 0.7, 0.3
SPIKE_MINUTE = 300
GAUGE, PROBE = "rain-storm", "wl-storm"


def chicago_burst(minutes: int = BURST_MINUTES, total_mm: float = BURST_MM, r: float = PEAK_AT) -> list[float]:
    """mm per minute of a Chicago hyetograph, scaled to `total_mm`."""

    def intensity(tau: float, side: float) -> float:  # a = 1; tau: minutes from the peak on one side
        u = tau / side + B
        return ((1 - C) * tau / side + B) / u ** (1 + C)

    peak = r * minutes
    raw = [intensity(abs(m + 0.5 - peak), r if m + 0.5 < peak else 1 - r) for m in range(minutes)]
    scale = total_mm / sum(raw)
    return [x * scale for x in raw]


def rain_per_minute() -> list[float]:
    return [PRE_MM_PER_H / 60] * PRE_MINUTES + chicago_burst() + [0.0] * DRY_MINUTES


def tips(rain: list[float]) -> list[float]:
    """A tipping bucket reports whole tips: the rain of each minute rounded down to TIP_MM, the rest
    carried in the bucket to the next minute."""
    out, bucket = [], 0.0
    for mm in rain:
        bucket += mm
        n = int(round(bucket, 9) / TIP_MM)
        bucket -= n * TIP_MM
        out.append(round(n * TIP_MM, 1))
    return out


def levels(rain: list[float], seed: int = 7) -> list[float]:
    rnd = random.Random(seed)
    stored, out = 0.0, []
    for minute, mm in enumerate(rain):
        stored = max(0.0, stored + RUNOFF_CM_PER_MM * mm - DRAIN_CM_PER_MIN)
        value = round(BASE_CM + stored + rnd.uniform(-1.0, 1.0), 1)
        out.append(180.0 if minute == SPIKE_MINUTE else value)
    return out


TIPPED = tips(rain_per_minute())


def storm(start: datetime = START) -> list[Reading]:
    rain = rain_per_minute()
    readings = []
    for minute, (mm, cm) in enumerate(zip(tips(rain), levels(rain), strict=True)):
        t = start + timedelta(minutes=minute, seconds=30)
        readings.append(Reading(GAUGE, t, {"rain_mm": mm}, units={"rain_mm": "mm"}))
        readings.append(Reading(PROBE, t + timedelta(seconds=5), {"level_cm": cm}, units={"level_cm": "cm"}))
    return readings


def first_minute_reaching(window_min: int, mm: float) -> int:
    """Brute force, independent of the rules' rolling sums: the first minute whose trailing window of
    tips holds `mm`."""
    return next(i for i in range(len(TIPPED)) if window_total(i, window_min) >= mm - 1e-9)


def window_total(minute: int, window_min: int) -> float:
    """The tips of the `window_min` minutes up to and including `minute`, summed directly."""
    return round(sum(TIPPED[max(0, minute - window_min + 1):minute + 1]), 6)


def write_csv(path, readings: list[Reading]) -> None:
    """The storm as a readings CSV (time,device,level_cm,rain_mm) for gateway replays."""
    lines = ["time,device,level_cm,rain_mm"]
    for r in readings:
        lines.append(f"{r.time.isoformat()},{r.device},{r.values.get('level_cm', '')},{r.values.get('rain_mm', '')}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
