"""`python manage.py send_worker`: deliver queued messages, in batches, until stopped."""

from __future__ import annotations

import signal
import sys
from argparse import ArgumentParser
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from connectors.outbox import SendWorker

SWITCH_INTERVAL = 0.0005  # seconds; sys.getswitchinterval() is 0.005 by default


class Command(BaseCommand):
    help = (
        "Deliver queued messages (TASKS_BACKEND=connectors.outbox.OutboxBackend). Run one or more "
        "on any number of machines; SIGTERM finishes the current batch, then stops."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--batch-size", type=int, default=50, help="deliveries per claim")
        parser.add_argument(
            "--interval",
            type=float,
            default=0.05,
            help="seconds to wait when nothing is due (default 0.05)",
        )
        parser.add_argument(
            "--flush-every",
            type=int,
            default=10,
            help="record outcomes at least every N messages (default 10); a "
            "worker killed mid-batch may resend at most this many per thread",
        )
        parser.add_argument(
            "--threads",
            type=int,
            default=4,
            help="sending threads, each with its own database and SMTP connections (default 4): "
            "while one waits for a server, the others send",
        )
        parser.add_argument(
            "--gather",
            type=float,
            default=0.02,
            help="seconds a thread waits after a claim that drained the queue, so that the next "
            "one carries several messages (default 0.02; 0: claim again at once)",
        )
        parser.add_argument(
            "--exit-when-idle",
            type=float,
            default=None,
            metavar="SECONDS",
            help="stop after this long with nothing to do (for batch jobs, tests)",
        )

    def handle(
        self,
        *args: Any,
        batch_size: int,
        interval: float,
        flush_every: int,
        threads: int,
        gather: float,
        exit_when_idle: float | None,
        **options: Any,
    ) -> None:
        if threads < 1 or batch_size < 1 or flush_every < 1:
            raise CommandError("--threads, --batch-size and --flush-every must be at least 1")
        if gather < 0 or interval < 0:
            raise CommandError("--gather and --interval cannot be negative")
        if threads > 1:
            # The threads spend their time waiting on sockets; when a reply arrives, the thread
            # that waited for it should get the interpreter back within a fraction of a
            # millisecond, not after the default 5 ms another thread may hold it for (see
            # docs/performance.md: end to end with one worker, 0.55-0.73x against 0.52-0.55x).
            sys.setswitchinterval(SWITCH_INTERVAL)
        worker = SendWorker(
            batch_size=batch_size,
            interval=interval,
            flush_every=flush_every,
            threads=threads,
            gather=gather,
            recover_every=settings.CONNECTORS_RECOVER_EVERY,
        )
        signal.signal(signal.SIGTERM, worker.stop)
        signal.signal(signal.SIGINT, worker.stop)
        self.stdout.write(
            f"send_worker started ({threads} thread{'s' if threads > 1 else ''}, "
            f"batch {batch_size}, poll every {interval}s)"
        )
        worker.run(max_idle=exit_when_idle)
        self.stdout.write(f"send_worker stopped after {worker.sent} attempts")
