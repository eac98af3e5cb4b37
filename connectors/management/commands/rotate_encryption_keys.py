"""Re-encrypt every stored secret with the first key of CONNECTOR_ENCRYPTION_KEYS."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from connectors.models import Connector
from connectors.secrets import DecryptionError, needs_rotation, rotate_token


class Command(BaseCommand):
    help = "Re-encrypt every stored secret with the first key of CONNECTOR_ENCRYPTION_KEYS."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--dry-run", action="store_true", help="Count, change nothing.")

    def handle(self, *args: Any, dry_run: bool = False, **options: Any) -> None:
        changed = total = 0
        try:
            with transaction.atomic():
                for connector in Connector.objects.select_for_update().exclude(secrets=""):
                    total += 1
                    if not needs_rotation(connector.secrets):
                        continue
                    changed += 1
                    if not dry_run:
                        Connector.objects.filter(pk=connector.pk).update(
                            secrets=rotate_token(connector.secrets)
                        )
        except DecryptionError as exc:
            raise CommandError(f"{exc} Nothing was changed.") from None
        action = "would re-encrypt" if dry_run else "re-encrypted"
        self.stdout.write(
            f"{action} {changed} of {total} encrypted values with the first key "
            f"({total - changed} already used it)."
        )
