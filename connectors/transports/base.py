"""The contract every connector kind implements: send a rendered message, or fail with reasons."""

from __future__ import annotations

import contextlib
import heapq
import itertools
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Self

if TYPE_CHECKING:
    from types import TracebackType

    from ..rendering import RenderedMessage

__all__ = ["MASK", "SendResult", "Transport", "TransportError", "resolve"]

MASK = "********"

# getaddrinfo() has no time-out of its own; it runs on these threads so one can be enforced.
_resolver = ThreadPoolExecutor(max_workers=4, thread_name_prefix="transport-dns")

AddressInfo = tuple[socket.AddressFamily, socket.SocketKind, int, str, tuple[Any, ...]]


def resolve(host: str, port: int, *, timeout: float) -> Sequence[AddressInfo]:
    """Return the TCP addresses of a host; raise socket.gaierror, or TimeoutError after timeout."""
    future = _resolver.submit(socket.getaddrinfo, host, port, 0, socket.SOCK_STREAM)
    return future.result(timeout=timeout)


@dataclass
class SendResult:
    """What a server said when it accepted a message (or, for a check, a connection)."""

    message_id: str | None
    server_reply: str
    elapsed_ms: int
    warnings: list[str] = field(default_factory=list)
    transcript: list[str] = field(default_factory=list)


class Watchdog:
    """One thread per process that calls each armed callback once its deadline passes.

    What the transports use to cut off a send that outlasts its time limit: arming and
    disarming cost a lock and a heap operation, where a timer thread per send would cost a
    thread's start on every message.
    """

    def __init__(self) -> None:
        self._wakeup = threading.Condition()
        self._armed: dict[int, Callable[[], None]] = {}
        self._queue: list[tuple[float, int]] = []  # a heap of (deadline, key)
        self._keys = itertools.count()
        self._thread: threading.Thread | None = None

    def arm(self, deadline: float, callback: Callable[[], None]) -> int:
        """Call callback (in the watchdog's thread) at time.monotonic() deadline; return a key."""
        with self._wakeup:
            key = next(self._keys)
            self._armed[key] = callback
            heapq.heappush(self._queue, (deadline, key))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="send-watchdog", daemon=True)
                self._thread.start()
            if self._queue[0][1] == key:
                self._wakeup.notify()
            return key

    def disarm(self, key: int) -> None:
        """Forget an armed callback that has not been called yet."""
        with self._wakeup:
            self._armed.pop(key, None)

    def _run(self) -> None:
        while True:
            with self._wakeup:
                while True:
                    while self._queue and self._queue[0][1] not in self._armed:
                        heapq.heappop(self._queue)  # disarmed
                    if not self._queue:
                        self._wakeup.wait()
                        continue
                    deadline, key = self._queue[0]
                    left = deadline - time.monotonic()
                    if left <= 0:
                        heapq.heappop(self._queue)
                        callback = self._armed.pop(key)
                        break
                    self._wakeup.wait(left)
            with contextlib.suppress(Exception):
                callback()


watchdog = Watchdog()


def shut(sock: socket.socket | None) -> None:
    """Shut a socket from another thread, ending any read or write in progress on it."""
    if sock is not None:
        with contextlib.suppress(Exception):
            socket.socket.shutdown(sock, socket.SHUT_RDWR)  # not SSLSocket's: keep TLS state


class SendTimeLimit(TimeoutError):
    """The send as a whole took longer than its time limit (a transport's `send_timeout`)."""

    def __init__(self, step: str) -> None:
        super().__init__(f"the send's time limit ran out during {step}")


class TransportError(Exception):
    """A message was not sent: what failed, the server's own words, and what to try next.

    `permanent` says whether trying again can help: false for connection errors, time-outs,
    SMTP 4xx and HTTP 429/5xx; true for SMTP 5xx, other HTTP 4xx, TLS verification failures
    and invalid configuration.
    """

    def __init__(
        self,
        message: str,
        *,
        permanent: bool,
        code: int | None = None,
        server_text: str = "",
        hint: str = "",
        transcript: list[str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.permanent = permanent
        self.code = code
        self.server_text = server_text
        self.hint = hint
        self.transcript = list(transcript or [])

    @property
    def summary(self) -> str:
        """What failed and the server's own words, without the hint (kept apart in the log)."""
        parts = [self.message.rstrip(".") + "."]
        said = " ".join(p for p in (str(self.code or ""), self.server_text) if p)
        if said:
            parts.append(f"The server said: {said}" + ("" if said[-1] in ".!?" else "."))
        return " ".join(parts)

    def __str__(self) -> str:
        return f"{self.summary} {self.hint}" if self.hint else self.summary

    def __repr__(self) -> str:
        kind = "permanent" if self.permanent else "transient"
        return f"<TransportError {kind} code={self.code!r}: {self.message!r}>"

    def __reduce__(self) -> tuple[Any, ...]:
        # Exceptions pickle through self.args, which holds only the message; keep every field
        # so the error survives a trip through a task queue.
        return (_rebuild_error, (self.message, self.__dict__.copy()))


def _rebuild_error(message: str, state: dict[str, Any]) -> TransportError:
    """Return a TransportError from its pickled state."""
    error = TransportError(message, permanent=bool(state.get("permanent")))
    error.__dict__.update(state)
    return error


class Transport:
    """One connector kind: sends rendered messages to one configured destination.

    An instance may hold a connection open between sends; it is not thread-safe unless a
    subclass says so. Call close() when done, or use it as a context manager.
    """

    kind: ClassVar[str] = ""

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.config = config

    def send(
        self,
        message: RenderedMessage,
        *,
        to_type: str,
        payload: Mapping[str, Any],
        ip: str | None = None,
    ) -> SendResult:
        """Send one message, or raise TransportError."""
        raise NotImplementedError

    def close(self) -> None:
        """Release any connection held open between sends."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        # The config holds decrypted secrets: never show it.
        return f"<{type(self).__name__}>"
