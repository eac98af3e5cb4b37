"""Background work, through Django's task framework."""

from __future__ import annotations

from django.tasks import task


@task
def deliver(delivery_id: str) -> str | None:
    """Make one attempt at a delivery; return its status afterwards (None if another has it)."""
    from .delivery import close_transports, process
    from .service import runs_inline

    try:
        delivery = process(delivery_id)
    finally:
        if runs_inline():
            # In a request or timer thread, a kept connection would outlive its thread's use.
            close_transports()
    return delivery.status if delivery else None
