"""`python manage.py deliveries list | show ID | requeue ID... | recover`."""

from __future__ import annotations

from argparse import ArgumentParser
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from connectors.delivery import recover, requeue
from connectors.models import Delivery, DeliveryStatus


class Command(BaseCommand):
    help = "List deliveries, requeue failed ones, and recover deliveries stranded by a dead worker."

    def add_arguments(self, parser: ArgumentParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
        listing = sub.add_parser("list", help="List recent deliveries, newest first.")
        listing.add_argument("--status", choices=DeliveryStatus.values)
        listing.add_argument("--connector", help="connector slug")
        listing.add_argument("--to", help="recipient address")
        listing.add_argument("--limit", type=int, default=50)
        show = sub.add_parser("show", help="Show a delivery and its attempts.")
        show.add_argument("id")
        requeue = sub.add_parser("requeue", help="Send failed deliveries again.")
        requeue.add_argument("ids", nargs="*", metavar="ID")
        requeue.add_argument("--all-failed", action="store_true", help="every failed delivery")
        sub.add_parser("recover", help="Requeue deliveries whose worker died (fit for a timer).")

    def handle(self, *args: Any, action: str, **options: Any) -> None:
        getattr(self, f"handle_{action}")(**options)

    def handle_list(
        self,
        *,
        status: str | None,
        connector: str | None,
        to: str | None,
        limit: int,
        **options: Any,
    ) -> None:
        deliveries = Delivery.objects.all()
        if status:
            deliveries = deliveries.filter(status=status)
        if connector:
            deliveries = deliveries.filter(connector_slug=connector)
        if to:
            deliveries = deliveries.filter(to__iexact=to)
        for d in deliveries[:limit]:
            problem = f"  {d.error[:80]}" if d.error else ""
            self.stdout.write(
                f"{d.pk}  {d.created_at:%Y-%m-%d %H:%M:%S}  {d.status:<7}  {d.attempts}x  "
                f"{d.connector_slug:<16}  {d.usage_type:<16}  {d.to}{problem}"
            )

    def delivery(self, delivery_id: str) -> Delivery:
        try:
            return Delivery.objects.get(pk=delivery_id)
        except (Delivery.DoesNotExist, ValidationError, ValueError):
            raise CommandError(f"No delivery with id {delivery_id!r}.") from None

    def handle_show(self, *, id: str, **options: Any) -> None:
        d = self.delivery(id)
        for label, value in [
            ("id", d.pk),
            ("status", d.status),
            ("connector", d.connector_slug),
            ("to", d.to),
            ("usage type", d.usage_type),
            ("locale", d.locale or "default"),
            ("source", d.get_source_display()),
            ("created", d.created_at),
            ("sent", d.sent_at or ""),
            ("message id", d.message_id),
            ("error", d.error),
            ("hint", d.hint),
        ]:
            if value != "":
                self.stdout.write(f"{label + ':':<12} {value}")
        for a in d.attempt_log.all():
            self.stdout.write(
                f"  attempt {a.number} at {a.started_at:%H:%M:%S} ({a.elapsed_ms} ms): "
                f"{a.get_outcome_display()} {a.server_reply or a.error}".rstrip()
            )

    def handle_requeue(self, *, ids: list[str], all_failed: bool, **options: Any) -> None:
        if not ids and not all_failed:
            raise CommandError("Name the deliveries to requeue, or pass --all-failed.")
        failed = Delivery.objects.filter(status=DeliveryStatus.FAILED)
        chosen = failed if all_failed else [self.delivery(i) for i in ids]
        requeued = 0
        for d in chosen:
            refused = requeue(d)
            if refused:
                self.stderr.write(f"{d.pk}: not requeued: {refused}.")
            else:
                requeued += 1
        self.stdout.write(f"Requeued {requeued} deliveries.")

    def handle_recover(self, **options: Any) -> None:
        count = recover()
        self.stdout.write(f"Requeued {count} stranded deliveries.")
