"""An aiomqtt client whose messages stay the broker's until the gateway has handled them.

aiomqtt (2.x) acknowledges a QoS 1 message as soon as it is in its incoming queue, and a bounded
queue drops what does not fit: acknowledged, so the broker forgets it. `FlowClient` changes two
things (through aiomqtt internals: its socket reader, queue and disconnect future; and paho's socket
read and packet queue; aiomqtt 2.x, paho 2.x, tests/test_mqtt_backlog.py notices a change):

- **Acknowledgement after hand-off.** paho's `manual_ack` is on; the source takes messages in
  `batches()`, marks each `handled()` once handed on, and `send_acks()` after the batch. A message
  not handled, or handled but not yet acknowledged, when the connection or the process ends comes
  again in a persistent session: at least once.
- **A bound on what is held.** The broker's in-flight window (Mosquitto `max_inflight_messages`)
  should bound the unacknowledged messages it sends, but Mosquitto 2.0.11 (Debian 12) sends a whole
  window for every acknowledgement (fixed in 2.0.13), and a broker may allow any number. So reading
  from the socket stops while `high_water` received messages wait, and resumes when half of them are
  handled; TCP then holds the broker back and the rest waits in its queue. Unlike the queue it
  replaces, nothing is dropped here.

Its reader also takes up to ACK_BATCH packets a loop turn where paho reads one a call, and gives
paho its bytes from a buffer filled RECV_SIZE at a time where paho asks the socket three times a
packet (the command byte, the length, the rest): with the batched acknowledgements the source spends
less per message than aiomqtt's own (README, benchmarks). The acknowledgements of a batch go out in
one write, straight to the socket when paho has nothing queued.

A pause lasts as long as the pipeline takes to handle `high_water / 2` messages; it must stay well
under the keep-alive (no PINGRESP is read meanwhile), which it does by orders of magnitude at the
default 1,000.
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator, MutableMapping
from typing import Any

import aiomqtt
import paho.mqtt.client as paho

# most messages handled, and acknowledged, together: below the usual broker windows (Mosquitto 20,
# EMQX 32), so the broker has sent the next ones before these are acknowledged
ACK_BATCH = 16
RECV_SIZE = 65536  # bytes taken from the socket at once: a drained backlog fills it


class FlowClient(aiomqtt.Client):
    def __init__(self, *args: Any, high_water: int, stats: MutableMapping[str, int] | None = None,
                 **kwargs: Any) -> None:
        """`stats` (updated live, may outlive the client): "pauses", the times reading stopped at high
        water, and "most_held", the most messages received and not yet handled at once."""
        if high_water < 2:
            raise ValueError(f"high_water must be at least 2, not {high_water}")
        super().__init__(*args, **kwargs)  # no max_queued_incoming_messages: the pause bounds the queue
        self._client.manual_ack_set(True)
        self.high_water = high_water
        self.stats = stats if stats is not None else {}
        self.stats.setdefault("pauses", 0)
        self.stats.setdefault("most_held", 0)
        self._fd: int | None = None
        self._paused = False
        self._unacked: list[tuple[int, int]] = []  # handled QoS 1 messages (mid, qos) not yet acknowledged
        self._inbuf = b""  # bytes read from the socket, paho's from _inpos on
        self._inpos = 0
        self._sock_recv = self._client._sock_recv  # paho's own: one socket read, its errors as paho wants them
        self._client._sock_recv = self._buffered_recv

    async def batches(self) -> AsyncIterator[list[aiomqtt.Message]]:
        """The messages as they come: each time one waited for and those already behind it, up to
        ACK_BATCH. Handle a batch, `handled()` each message, then `send_acks()`: one write and one
        loop turn per batch rather than per message while a backlog drains (~30 us of CPU per message
        on the 2-core box), and no acknowledgement waits for a message still to come."""
        async for message in self.messages:
            batch = [message]
            while len(batch) < ACK_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            yield batch

    def handled(self, message: aiomqtt.Message) -> None:
        """The message was handed on, or refused for good: to be acknowledged (QoS 1; QoS 0 has no
        acknowledgement). Reading resumes when the messages held here are down to half."""
        if message.qos:
            self._unacked.append((message.mid, message.qos))
        if self._paused and self._queue.qsize() <= self.high_water // 2:
            self._paused = False
            if self._fd is not None:
                self._loop.add_reader(self._fd, self._read)
                if self._buffered():
                    self._loop.call_soon(self._read)  # read already: the socket will not announce it

    def send_acks(self) -> None:
        """Acknowledge every handled message now: the PUBACKs of a batch in one write (paho queues and
        sends each alone), exactly the bytes paho's `ack` would send."""
        pubacks = bytearray()
        for mid, qos in self._unacked:
            if qos == 1:
                pubacks += struct.pack("!BBH", paho.PUBACK, 2, mid)
            else:
                self._client.ack(mid, qos)
        self._unacked.clear()
        if pubacks:
            self._write(bytes(pubacks))

    def _write(self, data: bytes) -> None:
        """Write now when paho has nothing queued (the stream is between packets), else, or for what the
        socket does not take at once, queue behind paho's packets: its write-readiness round (a wake-up
        of the loop, two epoll changes, a callback) cost more than the messages' decoding (measured)."""
        client = self._client
        sent = 0
        if not client._out_packet:
            try:
                sent = client._sock_send(data)
            except BlockingIOError:
                pass  # nothing taken: all of it is queued
            except OSError as exc:  # the connection is gone: its end is noticed, as a paho write would
                if not self._disconnected.done():
                    self._disconnected.set_exception(exc)
                return
        if sent < len(data):
            client._packet_queue(paho.PUBACK, data[sent:], 0, 1)

    # -- reading: aiomqtt's socket reader, replaced by one that can stop ----------------------------
    def _on_socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        super()._on_socket_open(client, userdata, sock)
        # runs on the loop after aiomqtt's own add_reader (both are queued in order from paho's thread)
        self._loop.call_soon_threadsafe(self._take_over_reading, sock.fileno())

    def _on_socket_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._fd = None
        self._inbuf, self._inpos = b"", 0  # a new connection starts a new stream
        super()._on_socket_close(client, userdata, sock)

    def _buffered_recv(self, bufsize: int) -> bytes:
        """paho's socket read, served from a buffer: up to `bufsize` bytes."""
        if self._inpos >= len(self._inbuf):
            data = self._sock_recv(RECV_SIZE)  # BlockingIOError when there is nothing, b"" when closed
            if not data:
                return data
            self._inbuf, self._inpos = data, 0
        start = self._inpos
        self._inpos = min(start + bufsize, len(self._inbuf))
        return self._inbuf[start:self._inpos]

    def _buffered(self) -> bool:
        return self._inpos < len(self._inbuf)

    def _take_over_reading(self, fd: int) -> None:
        sock = self._client.socket()
        if sock is None or sock.fileno() != fd:
            return  # closed meanwhile
        self._fd = fd
        self._paused = False
        self._loop.add_reader(fd, self._read)  # replaces aiomqtt's reader of the same socket

    def _read(self) -> None:
        """aiomqtt's reader, reading up to ACK_BATCH messages a turn rather than one (paho reads one
        packet a call), then the high-water check."""
        if self._paused:
            return  # a read scheduled before the pause
        queue = self._queue
        try:
            for _ in range(ACK_BATCH):
                before = queue.qsize()
                self._client.loop_read()
                sock = self._client.socket()
                while hasattr(sock, "pending") and sock.pending() > 0:  # decrypted TLS: no event announces it
                    self._client.loop_read()
                if queue.qsize() == before or queue.qsize() >= self.high_water:
                    break  # nothing more to read now (or not a message), or enough
        except Exception as exc:  # noqa: BLE001 - a broken socket ends the connection, as in aiomqtt
            if not self._disconnected.done():
                self._disconnected.set_exception(exc)
            return
        held = queue.qsize()
        if held > self.stats["most_held"]:
            self.stats["most_held"] = held
        if held >= self.high_water and not self._paused and self._fd is not None:
            self._paused = True
            self.stats["pauses"] += 1
            self._loop.remove_reader(self._fd)
        elif self._buffered() and self._fd is not None:
            self._loop.call_soon(self._read)  # packets read but not handled: the socket will not announce them
