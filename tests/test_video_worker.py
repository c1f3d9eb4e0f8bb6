"""The analysis worker: newest frame only, and held alerts (clip post-roll) are never lost."""

import threading
from datetime import UTC, datetime

from core.model import Alert, Frame
from gateway.video_worker import FrameWorker

T0 = datetime(2026, 11, 23, 1, 0, tzinfo=UTC)


def frame(i: int) -> Frame:
    return Frame("cam", i, T0, image=None)


def held_alert() -> Alert:
    return Alert(rule="no-parking", subject_kind="camera", subject_id="cam", state="open", time=T0,
                 source="video", category="illegal_parking")


def test_held_alerts_come_out_when_the_worker_stops():
    got: list[Alert] = []
    worker = FrameWorker("cam", lambda f: [], got.append, flush=lambda: [held_alert()], idle_flush_s=3600)
    worker.start()
    worker.offer(frame(0))
    worker.stop()
    assert [a.rule for a in got] == ["no-parking"]


def test_held_alerts_come_out_when_the_stream_goes_quiet():
    got: list[Alert] = []
    flushed = threading.Event()
    held = [held_alert()]

    def flush():
        out, held[:] = list(held), []
        if out:
            flushed.set()
        return out

    worker = FrameWorker("cam", lambda f: [], got.append, flush=flush, idle_flush_s=0.05)
    worker.start()
    assert flushed.wait(10)
    worker.stop()
    assert len(got) == 1


def test_a_slow_analysis_sees_the_newest_frame_and_counts_the_skipped():
    seen: list[int] = []
    gate, busy = threading.Event(), threading.Event()

    def slow(f: Frame) -> list[Alert]:
        busy.set()
        gate.wait(10)
        seen.append(f.index)
        return []

    worker = FrameWorker("cam", slow, lambda a: None)
    worker.start()
    worker.offer(frame(0))
    assert busy.wait(10)  # the worker is busy with frame 0
    for i in range(1, 6):
        worker.offer(frame(i))
    gate.set()
    worker.stop()
    assert seen == [0, 5] and worker.counters["frames_skipped"] == 4
