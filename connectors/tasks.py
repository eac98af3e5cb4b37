"""Background work, through Django's task framework."""

from __future__ import annotations

from django.tasks import task


@task
def deliver(delivery_id: str) -> str | None:
    """Make one attempt at a delivery; return its status afterwards (None if another has it)."""
    from .delivery import process

    delivery = process(delivery_id)
    return delivery.status if delivery else None
