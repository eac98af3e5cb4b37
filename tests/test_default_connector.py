"""Exactly one default connector is kept whenever any exist."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command
from django.db import IntegrityError, transaction

from connectors.models import Connector

from .conftest import make_connector

pytestmark = pytest.mark.django_db(transaction=True)


def defaults() -> list[str]:
    return list(Connector.objects.filter(is_default=True).values_list("slug", flat=True))


def test_the_first_connector_becomes_the_default(smtp_config, http_config):
    make_connector("first", "smtp", smtp_config)
    make_connector("second", "http", http_config)
    assert defaults() == ["first"]


def test_set_default_moves_the_flag(smtp_config, http_config):
    make_connector("first", "smtp", smtp_config)
    second = make_connector("second", "http", http_config)
    second.set_default()
    assert defaults() == ["second"]


def test_deleting_the_default_promotes_another(smtp_config, http_config):
    first = make_connector("first", "smtp", smtp_config)
    make_connector("second", "http", http_config, enabled=False)
    make_connector("third", "smtp", smtp_config)
    first.delete()
    assert defaults() == ["third"]  # enabled connectors are preferred


def test_bulk_delete_keeps_a_default(smtp_config):
    for slug in ("a", "b", "c"):
        make_connector(slug, "smtp", smtp_config)
    Connector.objects.filter(slug__in=["a", "b"]).delete()
    assert defaults() == ["c"]


def test_deleting_the_last_connector_leaves_none(smtp_config):
    make_connector("only", "smtp", smtp_config).delete()
    assert defaults() == []


def test_the_database_refuses_two_defaults(smtp_config):
    make_connector("first", "smtp", smtp_config)
    second = make_connector("second", "smtp", smtp_config)
    with pytest.raises(IntegrityError), transaction.atomic():
        Connector.objects.filter(pk=second.pk).update(is_default=True)


def test_cli_set_default_and_delete(smtp_config):
    make_connector("first", "smtp", smtp_config)
    make_connector("second", "smtp", smtp_config)
    out = StringIO()
    call_command("connectors", "set-default", "second", stdout=out)
    assert defaults() == ["second"]
    call_command("connectors", "delete", "second", stdout=out)
    assert defaults() == ["first"]
    assert "first is now the default" in out.getvalue()
