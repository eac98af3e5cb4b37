"""Run the development mail catcher: an SMTP server on loopback that keeps what it is sent."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from connectors.mailcatcher import MailCatcher


class Command(BaseCommand):
    help = (
        "Run a local SMTP server that accepts every message and keeps it for the console's "
        "Mail catcher page (development only: nothing is relayed)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1", help="Address to listen on.")
        parser.add_argument("--port", type=int, default=1025, help="Port to listen on.")
        parser.add_argument(
            "--dir", type=Path, default=None, help="Where to keep messages (MAILCATCHER_DIR)."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            from aiosmtpd.controller import Controller
        except ImportError:
            raise CommandError(
                "The mail catcher needs aiosmtpd: pip install -e '.[test]' (scripts/dev does)."
            ) from None
        directory: Path = options["dir"] or settings.MAILCATCHER_DIR
        controller = Controller(
            MailCatcher(directory),
            hostname=options["host"],
            port=options["port"],
            server_hostname="localhost",  # else aiosmtpd looks up this machine's name, slowly
        )
        try:
            controller.start()
        except OSError as exc:
            raise CommandError(
                f"Cannot listen on {options['host']}:{options['port']} ({exc}): is another mail "
                "catcher running? Use --port to pick another port."
            ) from None
        self.stdout.write(
            f"Mail catcher listening on {options['host']}:{options['port']}, keeping messages in "
            f"{directory} (Ctrl-C stops it)"
        )
        stop = threading.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stop.set())
        try:
            while not stop.wait(1):
                pass
        finally:
            controller.stop()
