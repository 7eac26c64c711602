"""The bounded queue in front of the engine: FIFO turns, a visible position, 429 past serve.max_queue, leaving on cancel."""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from typing import Iterator

from .errors import QueueFull

POLL_S = 0.25  # how often a waiting request looks at its cancel flag


class Ticket:
    """One request's place in line; `position` is 0 once it holds the engine."""

    def __init__(self) -> None:
        self.position = 0
        self.started: float | None = None


class EngineQueue:
    """At most `max_active` requests generate at once and at most `max_waiting` wait behind them, first come first
    served. Past that `join()` raises QueueFull with the expected wait (from the mean of recent service times)."""

    def __init__(self, max_waiting: int, max_active: int = 1, first_guess_s: float = 10.0):
        self.max_waiting, self.max_active = max_waiting, max(1, max_active)
        self._cond = threading.Condition()
        self._waiting: deque[Ticket] = deque()
        self._active: set[Ticket] = set()
        self._mean_s = first_guess_s
        self.rejected = 0

    def join(self) -> Ticket:
        """A place in line, or QueueFull (429) when `max_waiting` requests already wait."""
        with self._cond:
            ticket = Ticket()
            if len(self._active) < self.max_active and not self._waiting:
                self._start(ticket)
                return ticket
            if len(self._waiting) >= self.max_waiting:
                self.rejected += 1
                raise QueueFull(f"the server is busy: {len(self._waiting)} requests are waiting for the model "
                                f"(serve.max_queue = {self.max_waiting}); retry in about {self.retry_after_s()} s",
                                self.retry_after_s())
            self._waiting.append(ticket)
            self._renumber()
            return ticket

    def wait(self, ticket: Ticket, cancel: threading.Event) -> Iterator[int]:
        """Yields the ticket's position each time it changes until its turn comes; a set `cancel` leaves the line."""
        last = None
        with self._cond:
            while ticket.started is None:
                if cancel.is_set():
                    self._leave(ticket)
                    return
                if ticket.position != last:
                    last = ticket.position
                    self._cond.release()
                    try:
                        yield last
                    finally:
                        self._cond.acquire()
                    continue
                self._cond.wait(POLL_S)

    def done(self, ticket: Ticket) -> None:
        """The request is over (answered, failed or gone): the next one in line gets the engine."""
        with self._cond:
            self._leave(ticket)

    def retry_after_s(self) -> int:
        """Expected seconds until a new request would get the engine. Example: 3 waiting, mean 10 s, 1 slot -> 40."""
        turns = (len(self._waiting) + 1) / self.max_active
        return max(1, math.ceil(turns * self._mean_s))

    def stats(self) -> dict:
        with self._cond:
            return {"active": len(self._active), "waiting": len(self._waiting), "max_queue": self.max_waiting,
                    "rejected": self.rejected}

    # -- under the condition's lock ---------------------------------------------------------------------------
    def _start(self, ticket: Ticket) -> None:
        ticket.position, ticket.started = 0, time.monotonic()
        self._active.add(ticket)

    def _leave(self, ticket: Ticket) -> None:
        if ticket in self._active:
            self._active.discard(ticket)
            self._mean_s = 0.8 * self._mean_s + 0.2 * (time.monotonic() - ticket.started)
        elif ticket in self._waiting:
            self._waiting.remove(ticket)
        while self._waiting and len(self._active) < self.max_active:
            self._start(self._waiting.popleft())
        self._renumber()
        self._cond.notify_all()

    def _renumber(self) -> None:
        for i, t in enumerate(self._waiting, 1):
            t.position = i
