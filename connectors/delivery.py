"""The delivery state machine: claiming with leases, attempts, retries with back-off, recovery.

A Delivery row is the outbox. Whoever runs `process()` (the in-process runner right after commit,
or a task worker) first *claims* the row with a lease, then sends, then records the outcome only
if it still holds the lease. So:

1. two workers never send one delivery at once (the claim is one conditional UPDATE);
2. a worker that dies mid-send strands nothing: its lease lapses and `recover()` or any worker
   claims the row again (the one window for a second copy: the server accepted the message and
   the worker died before recording it, which a worker does every few messages);
3. transient failures go back to `queued` with a later `next_attempt_at`; permanent ones, or
   retries past the configured attempts or age, end in `failed`.
"""

from __future__ import annotations

import json
import logging
import os
import random
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from . import outbox_sql
from .models import Connector, Delivery, DeliveryAttempt, DeliverySource, DeliveryStatus
from .rendering import RenderedMessage, RenderError, choose_template, render_message
from .secrets import DecryptionError, decrypt_secrets
from .transports import SmtpTransport, get_transport
from .transports.base import SendResult, Transport, TransportError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int
    max_age: timedelta
    base_delay: float
    max_delay: float
    lease: timedelta

    @classmethod
    def from_settings(cls) -> RetryPolicy:
        """Return the policy the CONNECTORS_* settings describe."""
        return cls(
            max_attempts=getattr(settings, "CONNECTORS_MAX_ATTEMPTS", 8),
            max_age=timedelta(seconds=getattr(settings, "CONNECTORS_MAX_AGE", 3600)),
            base_delay=getattr(settings, "CONNECTORS_RETRY_BASE_DELAY", 5.0),
            max_delay=getattr(settings, "CONNECTORS_RETRY_MAX_DELAY", 600.0),
            lease=timedelta(seconds=getattr(settings, "CONNECTORS_LEASE_SECONDS", 300)),
        )

    def delay(self, attempt: int) -> float:
        """Return the wait before the next attempt: exponential, capped, with full jitter."""
        ceiling = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
        return random.uniform(ceiling / 2, ceiling)  # noqa: S311 (jitter, not cryptography)


def worker_name() -> str:
    """Return a name for this process and thread, shown in the log and held in leases."""
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident() % 100000}"


# ---------------------------------------------------------------------------------------------
# Connection reuse: one open transport per connector and config version, per thread.

_local = threading.local()
IDLE_SECONDS = 30.0


def _transports() -> dict[tuple[int, str], tuple[Transport, float]]:
    if not hasattr(_local, "transports"):
        _local.transports = {}
    return _local.transports


def stored_config(connector: Connector) -> dict[str, Any]:
    """Return the connector's decrypted config, cached per config version for this thread."""
    if not hasattr(_local, "configs"):
        _local.configs = {}
    key = (connector.pk, connector.updated_at.isoformat())
    if key not in _local.configs:
        _local.configs = {k: v for k, v in _local.configs.items() if k[0] != connector.pk}
        _local.configs[key] = connector.config(reveal=True)
    return _local.configs[key]


def transport_for(connector: Connector, config: dict[str, Any]) -> Transport:
    """Return this thread's open transport for the connector's current config."""
    pool = _transports()
    now = time.monotonic()
    close_idle_transports()
    for key, (transport, _) in list(pool.items()):
        if key[0] == connector.pk and key[1] != connector.updated_at.isoformat():
            close_quietly(transport)  # an older version of this connector's config
            del pool[key]
    key = (connector.pk, connector.updated_at.isoformat())
    transport = pool[key][0] if key in pool else new_transport(connector.kind, config)
    pool[key] = (transport, now)
    return transport


def new_transport(kind: str, config: dict[str, Any]) -> Transport:
    """Return a transport whose sends end within CONNECTORS_SEND_TIMEOUT, whatever the config.

    A send must end well within its lease, or another worker could claim the delivery while it
    is still being sent.
    """
    return get_transport(kind, config, send_timeout=send_timeout())


def send_timeout() -> float:
    """Return the longest one send may take, in seconds (CONNECTORS_SEND_TIMEOUT)."""
    return float(getattr(settings, "CONNECTORS_SEND_TIMEOUT", 60))


def close_idle_transports(idle_seconds: float = IDLE_SECONDS) -> None:
    """Close this thread's transports that have not been used for a while."""
    pool = _transports()
    now = time.monotonic()
    for key, (transport, last_used) in list(pool.items()):
        if now - last_used > idle_seconds:
            close_quietly(transport)
            del pool[key]


def close_transports() -> None:
    """Close every transport this thread holds open."""
    pool = _transports()
    for transport, _ in pool.values():
        close_quietly(transport)
    pool.clear()


def close_quietly(transport: Transport) -> None:
    try:
        transport.close()
    except Exception:
        logger.debug("closing a transport failed", exc_info=True)


# ---------------------------------------------------------------------------------------------
# Claim, send, record.


def claim(delivery_id: Any, worker: str, policy: RetryPolicy) -> tuple[Delivery, str] | None:
    """Take the lease on a due delivery; return it with the lease token, or None."""
    now = timezone.now()
    token = f"{worker}:{uuid.uuid4().hex[:8]}"[-64:]
    claimed = (
        Delivery.objects.due(now)
        .filter(pk=delivery_id)
        .update(
            status=DeliveryStatus.SENDING,
            lease_owner=token,
            lease_expires_at=now + policy.lease,
            attempts=F("attempts") + 1,
        )
    )
    if not claimed:
        return None
    return Delivery.objects.select_related("connector").get(pk=delivery_id), token


def claim_batch(worker: str, policy: RetryPolicy, limit: int) -> tuple[list[Delivery], str]:
    """Take the lease on up to `limit` due deliveries, oldest first; return them and the token."""
    now = timezone.now()
    token = f"{worker}:{uuid.uuid4().hex[:8]}"[-64:]
    claimed = outbox_sql.claim_due(token, now, now + policy.lease, limit)
    attach_connectors(claimed)
    return claimed, token


def attach_connectors(deliveries: list[Delivery]) -> None:
    """Give each claimed delivery its connector: this thread's copy, if still that version.

    A copy is kept per thread, as the transports are, and replaced when the row's version
    (updated_at, enabled; read by the claim) has changed: any save, anywhere, is seen on the
    next claim. What it spares is loading and decoding the connector with every batch.
    """
    if not hasattr(_local, "connectors"):
        _local.connectors = {}
    kept: dict[Any, tuple[Any, Connector]] = _local.connectors
    stale = {
        d.connector_id
        for d in deliveries
        if d.connector_version is not None
        and kept.get(d.connector_id, (None,))[0] != d.connector_version
    }
    if stale:
        for pk in stale:
            kept.pop(pk, None)  # gone, should the connector have been deleted since the claim
        for connector in Connector.objects.filter(pk__in=stale):
            kept[connector.pk] = ((connector.updated_at, connector.enabled), connector)
    for delivery in deliveries:
        entry = kept.get(delivery.connector_id) if delivery.connector_version else None
        delivery.connector = entry[1] if entry else None


def renew_leases(deliveries: list[Delivery], token: str, policy: RetryPolicy) -> None:
    """Extend this worker's lease on deliveries it holds and has yet to send."""
    Delivery.objects.filter(pk__in=[d.pk for d in deliveries], lease_owner=token).update(
        lease_expires_at=timezone.now() + policy.lease
    )


def release(deliveries: list[Delivery], token: str, when: Any) -> None:
    """Put claimed deliveries back in the queue, untried: due at `when`, the claim not counted."""
    ids = [d.pk for d in deliveries]
    Delivery.objects.filter(pk__in=ids, lease_owner=token).update(
        status=DeliveryStatus.QUEUED,
        lease_owner="",
        lease_expires_at=None,
        next_attempt_at=when,
        attempts=F("attempts") - 1,
    )
    for delivery_id in ids:
        schedule(delivery_id, when)


@dataclass
class AttemptOutcome:
    """What one attempt did: the delivery, the transport's full answer, and what to record."""

    delivery: Delivery
    result: SendResult | None = None
    error: Exception | None = None
    outcome: str = DeliveryAttempt.Outcome.SENT
    started: Any = None
    elapsed_ms: int = 0


def process(
    delivery_id: Any, *, policy: RetryPolicy | None = None, config: dict[str, Any] | None = None
) -> Delivery | None:
    """Make one attempt at a delivery if it is due; return it, or None if another has it."""
    outcome = process_with_details(delivery_id, policy=policy, config=config)
    return outcome.delivery if outcome else None


def process_with_details(
    delivery_id: Any, *, policy: RetryPolicy | None = None, config: dict[str, Any] | None = None
) -> AttemptOutcome | None:
    """Make one attempt, as process() does; keep the transport's result or error too.

    `config` replaces the connector's stored config (Send test of unsaved edits); the
    connection for it is not pooled.
    """
    policy = policy or RetryPolicy.from_settings()
    worker = worker_name()
    claimed = claim(delivery_id, worker, policy)
    if claimed is None:
        return None
    delivery, token = claimed
    details = run_attempt(delivery, policy, config)
    record([details], token, worker, policy)
    delivery.refresh_from_db()
    return details


def run_attempt(
    delivery: Delivery, policy: RetryPolicy, config: dict[str, Any] | None = None
) -> AttemptOutcome:
    """Attempt a claimed delivery and classify the outcome; write nothing."""
    details = AttemptOutcome(delivery, started=timezone.now())
    clock = time.monotonic()
    try:
        details.result = attempt(delivery, config)
    except TransportError as exc:
        details.error = exc
        details.outcome = failure_outcome(delivery, exc.permanent, policy)
    except (RenderError, DecryptionError, ConfigurationError) as exc:
        details.error = exc
        details.outcome = DeliveryAttempt.Outcome.FAILED
    details.elapsed_ms = int((time.monotonic() - clock) * 1000)
    return details


class ConfigurationError(Exception):
    """The delivery's connector is gone, disabled or unusable."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint


def attempt(delivery: Delivery, config: dict[str, Any] | None = None) -> SendResult:
    """Render the delivery's message and hand it to its connector's transport."""
    connector = delivery.connector
    if config is None:
        if connector is None:
            raise ConfigurationError(
                f"Connector {delivery.connector_slug!r} was deleted before the message was sent."
            )
        if not connector.enabled and delivery.source != DeliverySource.TEST:
            raise ConfigurationError(
                f"Connector {connector.slug!r} is disabled.",
                hint="Enable it, then retry the delivery.",
            )
        kind, config, pooled = connector.kind, stored_config(connector), True
    else:
        kind = connector.kind if connector else ("http" if "endpoint" in config else "smtp")
        pooled = False
    sealed = decrypt_secrets(delivery.sealed) if delivery.sealed else {}
    payload = sealed.get("payload", delivery.payload)
    if "message" in sealed:
        message = RenderedMessage(**sealed["message"])
    elif kind == "smtp" or config.get("templates"):
        template = choose_template(
            config.get("templates", []), delivery.usage_type, delivery.locale
        )
        message = render_message(config, template, delivery.to, payload)
    else:  # an HTTP endpoint renders for itself: it gets the type and payload
        message = RenderedMessage(to=delivery.to, subject="", text="", html=None, from_email="")
    if not pooled or connector is None:
        with new_transport(kind, config) as transport:
            return transport.send(
                message, to_type=delivery.usage_type, payload=payload, ip=delivery.ip
            )
    transport = transport_for(connector, config)
    try:
        result = transport.send(
            message, to_type=delivery.usage_type, payload=payload, ip=delivery.ip
        )
        if isinstance(transport, SmtpTransport) and transport.refreshed_token is not None:
            renewed, transport.refreshed_token = transport.refreshed_token, None
            connector.store_access_token(renewed.access_token, renewed.expires)
        return result
    except TransportError:
        # A failed connection is not worth keeping; the next attempt starts afresh.
        close_quietly(transport)
        _transports().pop((connector.pk, connector.updated_at.isoformat()), None)
        raise


def failure_outcome(delivery: Delivery, permanent: bool, policy: RetryPolicy) -> str:
    """Return RETRY for a transient failure with attempts and age to spare, else FAILED."""
    too_old = timezone.now() - delivery.created_at >= policy.max_age
    if permanent or delivery.attempts >= policy.max_attempts or too_old:
        return DeliveryAttempt.Outcome.FAILED
    return DeliveryAttempt.Outcome.RETRY


def record(outcomes: list[AttemptOutcome], token: str, worker: str, policy: RetryPolicy) -> None:
    """Write the attempts and the deliveries' new states, for those whose lease is still ours.

    One statement (PostgreSQL) or transaction (SQLite) for the lot: a worker flushes its
    outcomes every few messages, which is what lets it keep up with a fast server (see
    docs/decisions.md on the duplicate window).
    """
    if not outcomes:
        return
    now = timezone.now()
    for o in outcomes:
        apply_outcome(o.delivery, o, policy, now)
    owned = outbox_sql.record_outcomes(
        [o.delivery for o in outcomes], OUTCOME_FIELDS, token, attempt_rows(outcomes, worker)
    )
    kept = [o for o in outcomes if o.delivery.pk in owned]
    for o in outcomes:
        if o.delivery.pk not in owned:
            logger.warning("lost the lease on delivery %s before recording it", o.delivery.pk)
    for o in kept:
        if o.outcome == DeliveryAttempt.Outcome.RETRY:
            schedule(o.delivery.pk, o.delivery.next_attempt_at)
    for o in outcomes:
        logger.info(
            "delivery %s: attempt %s %s%s",
            o.delivery.pk,
            o.delivery.attempts,
            o.outcome,
            f" ({o.delivery.error})" if o.delivery.error else "",
        )


def attempt_rows(outcomes: list[AttemptOutcome], worker: str) -> list[DeliveryAttempt]:
    """Return the log entry of each attempt."""
    return [
        DeliveryAttempt(
            delivery=o.delivery,
            number=o.delivery.attempts,
            started_at=o.started,
            elapsed_ms=o.elapsed_ms,
            outcome=o.outcome,
            error=o.delivery.error,
            hint=o.delivery.hint,
            code=o.delivery.error_code,
            server_reply=o.delivery.server_reply[:2000],
            worker=worker[:64],
        )
        for o in outcomes
    ]


OUTCOME_FIELDS = [
    "status",
    "lease_owner",
    "lease_expires_at",
    "error",
    "hint",
    "error_code",
    "server_reply",
    "next_attempt_at",
    "sealed",
    "finished_at",
    "sent_at",
    "message_id",
]


def apply_outcome(d: Delivery, o: AttemptOutcome, policy: RetryPolicy, now: Any) -> None:
    """Set the delivery's fields for the attempt's outcome."""
    d.lease_owner, d.lease_expires_at = "", None
    error = o.error
    # The hint has a field of its own: the error says what failed and what the server said.
    d.error = error.summary if isinstance(error, TransportError) else str(error or "")
    d.hint = getattr(error, "hint", "") or ""
    d.error_code = getattr(error, "code", None) if isinstance(error, TransportError) else None
    if isinstance(error, TransportError):
        d.server_reply = error.server_text
    else:
        d.server_reply = o.result.server_reply if o.result else ""
    if o.outcome == DeliveryAttempt.Outcome.RETRY:
        d.status = DeliveryStatus.QUEUED
        d.next_attempt_at = now + timedelta(seconds=policy.delay(d.attempts))
        return
    # A final state: the one-time values have done their job and are scrubbed.
    d.sealed, d.finished_at, d.next_attempt_at = "", now, None
    if o.outcome == DeliveryAttempt.Outcome.SENT:
        d.status, d.sent_at = DeliveryStatus.SENT, now
        d.message_id = ((o.result.message_id if o.result else "") or "")[:300]
    else:
        d.status = DeliveryStatus.FAILED


# ---------------------------------------------------------------------------------------------
# Scheduling through Django's task framework.


def queued_in_rows() -> bool:
    """Tell whether the task backend is the outbox, whose queue is the Delivery table itself."""
    from django.tasks import task_backends

    from .outbox import OutboxBackend

    return isinstance(task_backends["default"], OutboxBackend)


def schedule(delivery_id: Any, when: Any = None) -> None:
    """Ask the task backend to process the delivery now, or at `when`."""
    from django.tasks import default_task_backend

    from .tasks import deliver

    if queued_in_rows():
        return  # the row is the task: its status and next_attempt_at say when it is due
    if when is not None and when > timezone.now():
        if default_task_backend.supports_defer:
            deliver.using(run_after=when).enqueue(str(delivery_id))
        else:
            # No worker to defer to (the embedded default): wait in a background thread. If the
            # process ends first, `recover()` at the next start picks the delivery up.
            delay = (when - timezone.now()).total_seconds()
            timer = threading.Timer(delay, deliver.enqueue, args=[str(delivery_id)])
            timer.daemon = True
            timer.start()
        return
    deliver.enqueue(str(delivery_id))


def requeue(delivery: Delivery) -> str:
    """Queue a failed (or waiting) delivery for another attempt now; return "" or why not."""
    if delivery.status == DeliveryStatus.SENT:
        return "it was sent already"
    if delivery.status == DeliveryStatus.SENDING:
        return "it is being sent right now"
    if delivery.source == DeliverySource.TEST:
        return "Send tests are not retried: run Send test again"
    redacted = "[redacted]" in json.dumps(delivery.payload)
    if not delivery.sealed and (delivery.source == DeliverySource.MAIL or redacted):
        # The one-time values (or the written message) were scrubbed when the delivery ended:
        # a retry would send "[redacted]" where the code was.
        return (
            "its content was scrubbed when it failed (one-time codes are not kept), so it "
            "cannot be sent again: the application must send a new message"
        )
    with transaction.atomic():
        updated = Delivery.objects.filter(
            pk=delivery.pk, status__in=[DeliveryStatus.QUEUED, DeliveryStatus.FAILED]
        ).update(status=DeliveryStatus.QUEUED, next_attempt_at=timezone.now(), finished_at=None)
        if not updated:
            return "its status changed meanwhile"
        transaction.on_commit(lambda: schedule(delivery.pk))
    return ""


def recover(*, now: Any = None, grace: timedelta = timedelta(seconds=60)) -> int:
    """Requeue deliveries whose lease lapsed or whose task was lost; return how many."""
    now = now or timezone.now()
    lapsed = Delivery.objects.filter(status=DeliveryStatus.SENDING, lease_expires_at__lt=now)
    # A test is sent once, while someone waits for it; it is never sent later by a worker.
    lapsed.filter(source=DeliverySource.TEST).update(
        status=DeliveryStatus.FAILED,
        lease_owner="",
        lease_expires_at=None,
        next_attempt_at=None,
        finished_at=now,
        sealed="",
        error="The test was interrupted before its outcome was recorded.",
    )
    lapsed_ids = set(lapsed.values_list("pk", flat=True))
    lapsed.filter(pk__in=lapsed_ids).update(
        status=DeliveryStatus.QUEUED, lease_owner="", lease_expires_at=None, next_attempt_at=now
    )
    # Queued and overdue by more than the grace period: its task was lost (a crash between commit
    # and enqueue, or a retry timer in a process that ended). A duplicate task finds nothing to
    # claim, so enqueueing again is always safe.
    overdue_ids = set(
        Delivery.objects.filter(
            status=DeliveryStatus.QUEUED, next_attempt_at__lt=now - grace
        ).values_list("pk", flat=True)
    )
    for delivery_id in lapsed_ids | overdue_ids:
        schedule(delivery_id)
    return len(lapsed_ids | overdue_ids)
