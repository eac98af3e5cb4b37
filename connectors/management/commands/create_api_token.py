"""`python manage.py create_api_token NAME [--connector SLUG ...]`: make an HTTP API token."""

from __future__ import annotations

from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from connectors.models import Connector
from connectors.tokens import issue_token


class Command(BaseCommand):
    help = (
        "Create a token for the HTTP API and print it once, alone on the last line. Only its hash "
        "is stored: copy it now. With --connector the token may send through those connectors only."
    )
    # Scripts read the last line; warnings about development keys would only get in the way.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("name", help="who or what uses the token, e.g. logto-production")
        parser.add_argument(
            "--connector",
            action="append",
            default=[],
            metavar="SLUG",
            help="a connector the token may use (repeat for several; default: all)",
        )

    def handle(self, *args: Any, name: str, connector: list[str], **options: Any) -> None:
        name = name.strip()
        if not name or len(name) > 100:
            raise CommandError("NAME must be 1 to 100 characters, e.g. logto-production.")
        slugs = list(dict.fromkeys(connector))
        found = list(Connector.objects.filter(slug__in=slugs))
        missing = sorted(set(slugs) - {c.slug for c in found})
        if missing:
            known = ", ".join(Connector.objects.values_list("slug", flat=True)) or "none yet"
            raise CommandError(f"No connector with slug {', '.join(missing)} (known: {known}).")
        row, token = issue_token(name, connectors=found)
        scope = ", ".join(sorted(c.slug for c in found)) or "all connectors"
        self.stdout.write(
            f"Created API token {row.name!r} ({row.prefix}…) for {scope}. "
            "It is shown only now; store it where the client reads it:"
        )
        self.stdout.write(token)
