"""A stuck SMTP server: sends are cut off, leases outlast them, and other connectors go on."""

from __future__ import annotations

import threading
import time

import pytest
from django.db import connection
from django.utils import timezone

from connectors.delivery import recover
from connectors.models import Delivery, DeliveryAttempt, DeliverySource, DeliveryStatus
from connectors.outbox import SendWorker
from connectors.service import send_message

from .servers import SmtpServer, stuck_smtp_server
from .test_delivery import connector_for, smtp, worker_mode  # noqa: F401 (fixtures)

pytestmark = pytest.mark.django_db(transaction=True)


def stuck_connector(slug: str, address: tuple[str, int], healthy):
    host, port = address
    return connector_for(healthy, slug, host=host, port=port, socketTimeout=600000)


def test_one_stuck_server_holds_a_worker_up_for_one_send(worker_mode, settings, smtp):  # noqa: F811
    settings.CONNECTORS_SEND_TIMEOUT = 0.5
    connector_for(smtp, "healthy")
    with stuck_smtp_server() as address:
        stuck_connector("stuck", address, smtp)
        for n in range(3):
            send_message(f"s{n}@example.test", "SignIn", {"code": "1"}, connector="stuck")
            send_message(f"h{n}@example.test", "SignIn", {"code": "1"}, connector="healthy")
        started = time.monotonic()
        SendWorker(batch_size=10).run(max_idle=0.2)
        elapsed = time.monotonic() - started

    assert elapsed < 3  # one cut-off send, not three, and not socketTimeout's ten minutes
    assert sorted(m.rcpt_tos[0] for m in smtp.messages) == [f"h{n}@example.test" for n in range(3)]
    stuck = list(Delivery.objects.filter(connector_slug="stuck").order_by("-attempts"))
    assert [d.status for d in stuck] == [DeliveryStatus.QUEUED] * 3
    assert [d.attempts for d in stuck] == [1, 0, 0]  # the two untried are not counted
    assert "time limit" in stuck[0].error
    assert {d.next_attempt_at for d in stuck} == {stuck[0].next_attempt_at}  # retried together


def test_leases_are_renewed_so_a_slow_batch_loses_none(worker_mode, settings, smtp):  # noqa: F811
    settings.CONNECTORS_SEND_TIMEOUT = 0.4
    settings.CONNECTORS_LEASE_SECONDS = 1
    with stuck_smtp_server() as address:
        for n in range(4):  # four connectors, so that each delivery is tried
            stuck_connector(f"stuck-{n}", address, smtp)
            send_message("ada@example.test", "SignIn", {"code": "1"}, connector=f"stuck-{n}")
        # Another worker's recovery runs all along, ready to take any lease that lapses.
        done = threading.Event()

        def recover_meanwhile() -> None:
            while not done.wait(0.1):
                recover()
            connection.close()

        other = threading.Thread(target=recover_meanwhile)
        other.start()
        try:
            SendWorker(batch_size=10, recover_every=3600).run(max_idle=0.2)
        finally:
            done.set()
            other.join()

    # Each attempt was recorded by the worker that made it: no lease lapsed mid-batch.
    assert DeliveryAttempt.objects.count() == 4
    assert set(Delivery.objects.values_list("attempts", "status")) == {(1, DeliveryStatus.QUEUED)}


def interrupted_test(server: SmtpServer) -> Delivery:
    """A test delivery whose sender went away mid-send: its lease has lapsed."""
    connector_for(server)
    delivery = send_message("ada@example.test", "Generic", {"code": "1"}, connector="sink")
    Delivery.objects.filter(pk=delivery.pk).update(
        source=DeliverySource.TEST,
        status=DeliveryStatus.SENDING,
        lease_owner="gone",
        lease_expires_at=delivery.created_at,
        attempts=1,
    )
    return delivery


def test_an_interrupted_test_is_failed_not_sent_later(worker_mode, smtp):  # noqa: F811
    delivery = interrupted_test(smtp)

    recover()

    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.FAILED and "interrupted" in delivery.error
    assert not delivery.sealed


def test_a_worker_does_not_take_a_test_whose_lease_lapsed(worker_mode, smtp):  # noqa: F811
    delivery = interrupted_test(smtp)

    assert not Delivery.objects.due(timezone.now()).exists()  # nothing for a worker to claim
    SendWorker(batch_size=10).run(max_idle=0.2)

    assert not smtp.messages
    assert Delivery.objects.get(pk=delivery.pk).status == DeliveryStatus.FAILED
