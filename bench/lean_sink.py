"""A lean SMTP sink for the benchmarks: accepts every message, records when each arrived.

The benchmarks share two cores between our service and the server it sends to. In production that
server is someone else's machine, so its CPU should weigh as little as it can here, as wrk does
for the load: aiosmtpd spends about 0.55 ms of CPU per message, a third of what the web server
spends to accept it. This one speaks just the SMTP that a client needs to deliver (RFC 5321:
EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP, QUIT, with PIPELINING and 8BITMIME) on an asyncio
protocol, and appends a "recipient arrival-time" line per recipient to a log, as the aiosmtpd sink
in send_bench.py does. It checks nothing: it is a sink, not a mail server.

    python bench/lean_sink.py PORT LOG_PATH    (or through send_bench.SinkProcess(kind="lean"))
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import IO

GREETING = b"220 localhost ESMTP bench sink\r\n"
EHLO = b"250-localhost\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 33554432\r\n"
END_OF_DATA = b"\r\n.\r\n"


class SinkProtocol(asyncio.Protocol):
    def __init__(self, log: IO[str]) -> None:
        self.log = log
        self.buffer = bytearray()
        self.in_data = False
        self.recipients: list[str] = []
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(GREETING)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        replies: list[bytes] = []
        while self.transport is not None:
            if self.in_data:
                # The message ends with CRLF.CRLF; the DATA command's own CRLF counts as the first.
                end = (b"\r\n" + self.buffer).find(END_OF_DATA)
                if end < 0:
                    break
                del self.buffer[: end + len(END_OF_DATA) - 2]
                self.in_data = False
                now = time.time()
                self.log.write("".join(f"{rcpt} {now}\n" for rcpt in self.recipients))
                self.recipients = []
                replies.append(b"250 2.0.0 Ok: queued\r\n")
                continue
            end = self.buffer.find(b"\r\n")
            if end < 0:
                break
            line = bytes(self.buffer[:end])
            del self.buffer[: end + 2]
            replies.append(self.command(line))
        if replies and self.transport is not None:
            self.transport.write(b"".join(replies))
            if replies[-1].startswith(b"221"):
                self.transport.close()
                self.transport = None

    def command(self, line: bytes) -> bytes:
        verb = line[:4].upper()
        if verb == b"EHLO":
            return EHLO
        if verb in (b"HELO", b"MAIL", b"NOOP"):
            self.recipients = [] if verb == b"MAIL" else self.recipients
            return b"250 2.0.0 Ok\r\n"
        if verb == b"RCPT":
            address = line.partition(b":")[2].strip().split(b" ")[0].strip(b"<>")
            self.recipients.append(address.decode("utf-8", "replace"))
            return b"250 2.1.5 Ok\r\n"
        if verb == b"DATA":
            if not self.recipients:
                return b"503 5.5.1 RCPT first\r\n"
            self.in_data = True
            return b"354 End data with <CR><LF>.<CR><LF>\r\n"
        if verb == b"RSET":
            self.recipients = []
            return b"250 2.0.0 Ok\r\n"
        if verb == b"QUIT":
            return b"221 2.0.0 Bye\r\n"
        return b"502 5.5.2 Command not implemented\r\n"


async def serve(port: int, log_path: str, ready: object = None) -> None:
    log = open(log_path, "a", buffering=1)  # noqa: SIM115 (lives as long as the process)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SinkProtocol(log), "127.0.0.1", port, backlog=512)
    if ready is not None:
        ready.set()  # type: ignore[attr-defined]
    async with server:
        await server.serve_forever()


def run(port: int, log_path: str, ready: object = None) -> None:
    asyncio.run(serve(port, log_path, ready))


if __name__ == "__main__":
    run(int(sys.argv[1]), sys.argv[2])
