"""Accepting a message: what the accept path keeps between messages never hides a change."""

from __future__ import annotations

from typing import Any

import pytest
from django.db.models.signals import post_save

from connectors.models import Connector, Delivery, Template
from connectors.service import SendError, send_message

from .conftest import REQUIRED, make_connector, templates

pytestmark = pytest.mark.django_db


@pytest.fixture
def connector(settings: Any, smtp_config: dict[str, Any]) -> Connector:
    # No sending here: the dummy backend keeps what was accepted queued.
    settings.TASKS = {"default": {"BACKEND": "django.tasks.backends.dummy.DummyBackend"}}
    return make_connector("main", "smtp", smtp_config)


def test_a_connector_disabled_elsewhere_refuses_the_next_message(connector: Connector) -> None:
    send_message("ada@example.test", "SignIn", {"code": "1"})
    # As another process would: a bare UPDATE, no signal, no new updated_at.
    Connector.objects.filter(pk=connector.pk).update(enabled=False)
    with pytest.raises(SendError) as refused:
        send_message("ada@example.test", "SignIn", {"code": "2"})
    assert refused.value.code == "connector_disabled"


def test_a_template_removed_elsewhere_is_missed_at_once(connector: Connector) -> None:
    send_message("ada@example.test", "SignIn", {"code": "1"})
    Template.objects.filter(connector=connector).exclude(usage_type="Register").delete()
    with pytest.raises(SendError) as refused:
        send_message("ada@example.test", "SignIn", {"code": "2"})
    assert refused.value.code == "no_template"


def test_a_new_default_connector_takes_the_next_message(
    connector: Connector, smtp_config: dict[str, Any]
) -> None:
    assert send_message("ada@example.test", "SignIn").connector_slug == "main"
    other = make_connector("other", "smtp", {**smtp_config, "templates": templates(*REQUIRED)})
    other.set_default()
    assert send_message("ada@example.test", "SignIn").connector_slug == "other"
    other.delete()
    Connector.objects.filter(pk=connector.pk).update(is_default=True)
    assert send_message("ada@example.test", "SignIn").connector_slug == "main"


def test_the_recipient_limit_counts_across_letter_case(connector: Connector, settings: Any) -> None:
    settings.CONNECTORS_RECIPIENT_RATE_LIMIT = (2, 600)
    send_message("Ada@Example.test", "SignIn")
    send_message("ada@example.test", "SignIn")
    with pytest.raises(SendError) as refused:
        send_message("ADA@EXAMPLE.TEST", "SignIn")
    assert refused.value.code == "rate_limited" and refused.value.retry_after


@pytest.mark.parametrize("warm", [False, True], ids=["first message", "known connector"])
def test_insert_stores_what_save_would(connector: Connector, warm: bool) -> None:
    if warm:
        send_message("grace@example.test", "SignIn")  # this process now knows the connector
    inserted = send_message(
        "ada@example.test", "SignIn", {"code": "1", "user": {"name": "Ada"}}, ip="203.0.113.7"
    )
    stored = Delivery.objects.get(pk=inserted.pk)
    for field in Delivery._meta.concrete_fields:
        assert getattr(stored, field.attname) == getattr(inserted, field.attname), field.name
    assert not inserted._state.adding


def test_a_message_through_a_known_connector_is_one_statement(
    connector: Connector, django_assert_num_queries: Any
) -> None:
    send_message("ada@example.test", "SignIn", connector="main")
    send_message("ada@example.test", "SignIn")  # the default: "main" too
    with django_assert_num_queries(1):
        send_message("grace@example.test", "SignIn", {"code": "2"}, connector="main")
    with django_assert_num_queries(1):
        send_message("grace@example.test", "SignIn", {"code": "3"})


def test_a_renamed_connector_is_not_found_under_its_old_slug(connector: Connector) -> None:
    send_message("ada@example.test", "SignIn", connector="main")
    Connector.objects.filter(pk=connector.pk).update(slug="renamed")
    with pytest.raises(SendError) as refused:
        send_message("ada@example.test", "SignIn", connector="main")
    assert refused.value.code == "unknown_connector"


def test_insert_is_a_save_while_a_save_signal_has_a_receiver(connector: Connector) -> None:
    seen: list[Delivery] = []

    def receiver(sender: type[Delivery], instance: Delivery, **kwargs: Any) -> None:
        seen.append(instance)

    post_save.connect(receiver, sender=Delivery)
    try:
        delivery = send_message("ada@example.test", "SignIn")
    finally:
        post_save.disconnect(receiver, sender=Delivery)
    assert seen == [delivery]


@pytest.mark.parametrize("warm", [False, True], ids=["first message", "known connector"])
def test_the_recipient_limit_holds_for_capital_non_ascii_letters(
    connector: Connector, settings: Any, warm: bool
) -> None:
    # SQLite's LOWER() folds ASCII letters only: the address must still match itself.
    settings.CONNECTORS_RECIPIENT_RATE_LIMIT = (3, 600)
    if warm:
        send_message("someone@example.test", "SignIn")
    for _ in range(3):
        send_message("ada@ÄCME.test", "SignIn", {"code": "1"})
    with pytest.raises(SendError) as refused:
        send_message("ada@ÄCME.test", "SignIn", {"code": "1"})
    assert refused.value.code == "rate_limited" and refused.value.retry_after < 600
