"""The one inference queue of a patrolling box: round-robin across groups, so a group of 5,000
cameras cannot starve a group of 50 key-street cameras; FIFO within a group."""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from typing import Generic, TypeVar

T = TypeVar("T")


class FairQueue(Generic[T]):
    def __init__(self) -> None:
        self._groups: OrderedDict[str, deque[T]] = OrderedDict()
        self._size = 0
        self._ready = asyncio.Event()

    def __len__(self) -> int:
        return self._size

    def put(self, group: str, item: T) -> None:
        self._groups.setdefault(group, deque()).append(item)
        self._size += 1
        self._ready.set()

    def get_nowait(self) -> T | None:
        """The next item in turn: the first group with work, which then moves to the back."""
        for group, items in self._groups.items():
            if items:
                item = items.popleft()
                self._groups.move_to_end(group)
                self._size -= 1
                return item
        return None

    async def get(self) -> T:
        while True:
            item = self.get_nowait()
            if item is not None:
                return item
            self._ready.clear()
            await self._ready.wait()
