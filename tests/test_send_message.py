"""send_message() checks every argument and raises a typed error, on every database alike."""

from __future__ import annotations

import pytest

from connectors.models import Delivery
from connectors.service import SendError, send_message

from .test_delivery import connector_for, smtp, worker_mode  # noqa: F401 (fixtures)

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.parametrize(
    ("options", "code", "path"),
    [
        ({"ip": "not-an-ip"}, "invalid_ip", "ip"),
        ({"ip": 1234}, "invalid_ip", "ip"),
        ({"locale": "x" * 50}, "invalid_locale", "locale"),
        ({"locale": "../../etc\r\n"}, "invalid_locale", "locale"),
        ({"payload": {"code": "1", "locale": "fr\nBcc"}}, "invalid_locale", "payload.locale"),
        ({"idempotency_key": "k" * 201}, "invalid_idempotency_key", "idempotency_key"),
        ({"idempotency_key": "line\nbreak"}, "invalid_idempotency_key", "idempotency_key"),
    ],
)
def test_bad_options_are_typed_errors_and_store_nothing(worker_mode, smtp, options, code, path):  # noqa: F811
    connector_for(smtp)
    arguments = {"payload": {"code": "1"}, **options}
    with pytest.raises(SendError) as refused:
        send_message("ada@example.test", "SignIn", **arguments)
    assert (refused.value.code, refused.value.path) == (code, path)
    assert not Delivery.objects.exists()


def test_good_options_are_kept_as_given(worker_mode, smtp):  # noqa: F811
    connector_for(smtp)
    key = "k" * 200
    delivery = send_message(
        "ada@example.test",
        "SignIn",
        {"code": "1", "locale": "zh-Hans-CN"},
        ip="2001:DB8::1",
        idempotency_key=key,
    )
    delivery.refresh_from_db()
    assert (delivery.locale, delivery.ip, delivery.idempotency_key) == (
        "zh-Hans-CN",
        "2001:db8::1",
        key,
    )
