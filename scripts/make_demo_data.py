"""Writes the demo's recorded tracks and sensor series (configs/data/); run it to regenerate them.

They are short and meant for real-time replay: each problem shows within a few minutes.

Four vehicles in the demo grid (Dongcheng), one fix every 10 s, times on 2026-07-15 +08:00:
- muck-01 drives from its depot into the central no-muck-truck zone, leaves, and dumps its load
  by the road outside any approved site (status load bits 8-9 full → empty);
- mixer-01 drives at 75 km/h for a minute where its limit is 50 km/h;
- a terminal that is not in the fleet drives through the city (possible black truck);
- sweep-01 sweeps 南池子大街 at 8 km/h.
"""

import csv
import math
from datetime import datetime, timedelta, timezone
from pathlib import Path

DATA = Path(__file__).resolve().parent.parent / "configs" / "data"
OUT = DATA / "tracks"
T0 = datetime(2026, 7, 15, 10, 0, tzinfo=timezone(timedelta(hours=8)))
VALID, LOAD_FULL = 0b10, 0b11 << 8
M_PER_DEG_LAT = 111_320.0


def metres(a, b):
    kx = M_PER_DEG_LAT * math.cos(math.radians((a[1] + b[1]) / 2))
    return math.hypot((b[0] - a[0]) * kx, (b[1] - a[1]) * M_PER_DEG_LAT)


def drive(points, legs, start, step_s=10):
    """legs: [(to_lonlat, speed_kmh, status)] starting at points; speed 0 = stand still for `to` seconds."""
    rows, t, here = [], start, points
    for target, speed, status in legs:
        if speed == 0:
            for _ in range(int(target / step_s)):
                rows.append((t, here, 0.0, status))
                t += timedelta(seconds=step_s)
            continue
        dist = metres(here, target)
        steps = max(1, round(dist / (speed / 3.6 * step_s)))
        for i in range(steps):
            f = i / steps
            rows.append((t, (here[0] + (target[0] - here[0]) * f, here[1] + (target[1] - here[1]) * f), speed, status))
            t += timedelta(seconds=step_s)
        here = target
    rows.append((t, here, 0.0, legs[-1][2]))
    return rows


def write(name, device, rows):
    with open(OUT / name, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["time", "device", "lon", "lat", "speed_kmh", "course", "status", "alarm"])
        for t, (lon, lat), speed, status in rows:
            w.writerow([t.isoformat(), device, f"{lon:.6f}", f"{lat:.6f}", f"{speed:.1f}", 0, status, 0])


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    write("muck-01.csv", "013912340001", drive((116.4180, 39.9115), [
        ((116.4100, 39.9115), 30, VALID | LOAD_FULL),    # west along the road, loaded
        ((116.4060, 39.9115), 25, VALID | LOAD_FULL),    # into the central zone (116.395-116.410)
        ((116.4060, 39.9140), 25, VALID | LOAD_FULL),
        ((116.4130, 39.9140), 30, VALID | LOAD_FULL),    # out again, east
        (60, 0, VALID | LOAD_FULL),                      # stops by the road...
        (60, 0, VALID),                                  # ...and is empty: dumped outside any site
        ((116.4320, 39.9115), 35, VALID),                # back to the depot
    ], T0))
    write("mixer-01.csv", "013912340002", drive((116.3920, 39.8950), [
        ((116.3920, 39.9010), 40, VALID),
        ((116.3920, 39.9170), 75, VALID),                # 50 km/h limit: overspeed for ~80 s
        ((116.3920, 39.9190), 40, VALID),
    ], T0 + timedelta(seconds=30)))
    write("unknown-truck.csv", "013999999999", drive((116.4400, 39.9220), [
        ((116.4200, 39.9220), 30, VALID | LOAD_FULL),
        ((116.4200, 39.9300), 30, VALID | LOAD_FULL),
    ], T0 + timedelta(seconds=60)))
    write("sweep-01.csv", "013912340003", drive((116.4016, 39.9090), [
        ((116.4016, 39.9160), 8, VALID),
        ((116.4016, 39.9090), 8, VALID),
    ], T0))
    write_sensors()


def write_sensors():
    """A cloudburst at an underpass: 40 mm of rain in 10 min, the water rising 5 → 45 cm and back.

    One reading every 15 s for 15 min; a street sensor nearby stays low."""
    (DATA / "sensors").mkdir(parents=True, exist_ok=True)
    with open(DATA / "sensors" / "cloudburst-demo.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["time", "device", "level_cm", "rain_mm"])
        for i in range(61):
            t = (T0 + timedelta(seconds=15 * i)).isoformat()
            minute = i / 4
            if minute < 1:
                level = 5.0
            elif minute < 5:
                level = 5 + 40 * (minute - 1) / 4          # rises 10 cm a minute
            elif minute < 8:
                level = 45.0
            else:
                level = max(5.0, 45 - 40 * (minute - 8) / 4)
            rain = 1.0 if 0.5 <= minute < 10.5 else 0.0    # 1 mm per 15 s: 40 mm in 10 min
            w.writerow([t, "wl-underpass-01", f"{level:.1f}", ""])
            w.writerow([t, "wl-street-02", f"{4 + (i % 3):.1f}", ""])
            w.writerow([t, "rain-01", "", f"{rain:.1f}"])


if __name__ == "__main__":
    main()
