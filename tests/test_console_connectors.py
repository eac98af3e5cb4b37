"""The connector list, its actions, and adding and editing a connector in the JSON editor."""

from __future__ import annotations

import json

import pytest
from django.urls import reverse

from connectors import schema
from connectors.models import Connector, Delivery
from connectors.views.editor import editor_schema, field_reference

from .conftest import HTTP_AUTHORIZATION, SMTP_PASSWORD, make_connector

pytestmark = pytest.mark.django_db

LIST = "admin:connectors_connector_changelist"


def editor_data(response):
    """Return the JSON the page hands to its editor script."""
    html = response.content.decode()
    start = html.index('<script id="editor-data" type="application/json">') + len(
        '<script id="editor-data" type="application/json">'
    )
    return json.loads(html[start : html.index("</script>", start)])


def post_connector(client, url, config, **fields):
    data = {
        "name": "Main",
        "slug": "main",
        "kind": "smtp",
        "enabled": "on",
        "_save": "Save and Done",
    }
    data.update(fields)
    data["config"] = config if isinstance(config, str) else json.dumps(config, indent=2)
    return client.post(url, data)


# The list -------------------------------------------------------------------------------------


def test_the_list_shows_kind_default_last_test_last_delivery_and_template_counts(
    admin_client, smtp_connector, http_connector
):
    Connector.objects.filter(pk=smtp_connector.pk).update(
        last_test_at="2026-01-01T00:00:00Z",
        last_test_ok=False,
        last_test_summary="535 5.7.8 Authentication failed",
    )
    Delivery.objects.create(
        connector=smtp_connector,
        connector_slug="smtp-main",
        to="a@example.test",
        usage_type="Generic",
        source="python",
        status="sent",
    )
    html = admin_client.get(reverse(LIST)).content.decode()
    assert "smtp-main" in html and "http-hook" in html
    assert "badge-default" in html  # the first connector became the default
    assert "535 5.7.8 Authentication failed" in html and "badge-failed" in html
    assert "badge-sent" in html
    assert "4 templates · 1 locale" in html  # the SMTP connector: four default templates
    assert "never" in html  # the HTTP connector was never tested


def run_action(client, action, *connectors):
    return client.post(
        reverse(LIST),
        {"action": action, "_selected_action": [c.pk for c in connectors]},
        follow=True,
    )


def test_set_default_makes_exactly_one_default(admin_client, smtp_connector, http_connector):
    run_action(admin_client, "make_default", http_connector)
    assert list(Connector.objects.filter(is_default=True)) == [http_connector]


def test_set_default_needs_exactly_one_connector(admin_client, smtp_connector, http_connector):
    response = run_action(admin_client, "make_default", smtp_connector, http_connector)
    assert "Select exactly one connector" in response.content.decode()
    assert Connector.objects.get(is_default=True) == smtp_connector


def test_disable_and_enable(admin_client, smtp_connector, http_connector):
    run_action(admin_client, "disable", smtp_connector, http_connector)
    assert not Connector.objects.filter(enabled=True).exists()
    run_action(admin_client, "enable", smtp_connector)
    assert list(Connector.objects.filter(enabled=True)) == [smtp_connector]


def test_duplicate_copies_config_templates_and_secrets(admin_client, smtp_connector):
    response = run_action(admin_client, "duplicate", smtp_connector)
    copy = Connector.objects.get(slug="smtp-main-copy")
    assert "Duplicated" in response.content.decode()
    assert copy.config() == smtp_connector.config()
    assert copy.secret_values() == {"auth.pass": SMTP_PASSWORD}
    assert copy.templates.count() == 4 and not copy.is_default
    assert copy.revisions.get().note == "duplicated from smtp-main"
    run_action(admin_client, "duplicate", smtp_connector)
    assert Connector.objects.filter(slug="smtp-main-copy-2").exists()


def test_export_of_one_connector_is_its_masked_config(admin_client, smtp_connector):
    response = run_action(admin_client, "export_json", smtp_connector)
    assert response["Content-Disposition"] == 'attachment; filename="smtp-main.json"'
    exported = json.loads(response.content)
    assert exported["auth"]["pass"] == schema.MASK
    assert schema.validate_config_data("smtp", exported).ok


def test_export_of_several_connectors_keys_them_by_slug(
    admin_client, smtp_connector, http_connector
):
    response = run_action(admin_client, "export_json", smtp_connector, http_connector)
    exported = json.loads(response.content)
    assert set(exported) == {"smtp-main", "http-hook"}
    assert exported["http-hook"]["config"]["authorization"] == schema.MASK
    assert HTTP_AUTHORIZATION not in response.content.decode()


# Add and edit -----------------------------------------------------------------------------------


def test_a_new_connector_starts_from_the_full_example(admin_client):
    response = admin_client.get(reverse("admin:connectors_connector_add"))
    textarea = response.context["adminform"].form["config"].value()
    config = json.loads(textarea)
    assert config == schema.example_config("smtp")
    assert {t["usageType"] for t in config["templates"]} == set(schema.USAGE_TYPES)
    data = editor_data(response)
    assert data["isNew"] and data["kind"] == "smtp"
    assert set(data["examples"]["smtp"]) == {"", *schema.PRESETS}
    assert data["schemas"]["smtp"] == editor_schema(schema.json_schema("smtp"))


def test_a_preset_fills_in_the_providers_values_and_shows_its_notes(admin_client):
    response = admin_client.get(
        reverse("admin:connectors_connector_add") + "?kind=smtp&preset=sendgrid"
    )
    config = json.loads(response.context["adminform"].form["config"].value())
    assert config["host"] == "smtp.sendgrid.net" and config["auth"]["user"] == "apikey"
    html = response.content.decode()
    assert 'data-preset="sendgrid">' in html  # shown; the other presets' notes are hidden
    assert 'data-preset="gmail" hidden' in html


def test_the_http_kind_starts_from_the_http_example(admin_client):
    response = admin_client.get(reverse("admin:connectors_connector_add") + "?kind=http")
    assert json.loads(
        response.context["adminform"].form["config"].value()
    ) == schema.example_config("http")


def test_the_field_reference_documents_every_key_from_the_schema(admin_client):
    paths = {entry.path for entry in field_reference("smtp")}
    assert {
        "host",
        "port",
        "auth.user",
        "auth.pass",
        "tls.minVersion",
        "templates[].usageType",
        "templates[].locale",
        "connectionTimeout",
    } <= paths
    port = next(e for e in field_reference("smtp") if e.path == "auth.pass")
    assert port.secret and "encrypted" in port.description
    html = admin_client.get(reverse("admin:connectors_connector_add")).content.decode()
    assert "<code>templates[].contentType</code>" in html and "text/plain, text/html" in html
    # It scrolls on its own, so the keyboard must be able to reach it.
    assert '<div class="reference" data-kind="smtp" tabindex="0" role="region"' in html
    assert 'aria-label="Field reference: SMTP"' in html


def test_save_and_done_saves_encrypts_records_a_revision_and_returns_to_the_list(
    admin_client, smtp_config
):
    response = post_connector(admin_client, reverse("admin:connectors_connector_add"), smtp_config)
    assert response.status_code == 302 and response["Location"] == reverse(LIST)
    connector = Connector.objects.get(slug="main")
    assert connector.secret_values() == {"auth.pass": SMTP_PASSWORD}
    assert SMTP_PASSWORD not in json.dumps(connector.settings)
    assert connector.revisions.get().created_by.username == "root"
    page = admin_client.get(response["Location"]).content.decode()
    assert "Main (main)" in page and "was added successfully" in page


def test_plain_save_keeps_editing(admin_client, smtp_connector):
    url = reverse("admin:connectors_connector_change", args=[smtp_connector.pk])
    config = smtp_connector.config()
    config["host"] = "smtp2.example.test"
    response = post_connector(
        admin_client, url, config, name="Main", slug="smtp-main", _save="", _continue="Save"
    )
    assert response.status_code == 302 and response["Location"] == url
    smtp_connector.refresh_from_db()
    assert smtp_connector.settings["host"] == "smtp2.example.test"


def test_a_masked_secret_keeps_the_stored_one(admin_client, smtp_connector):
    url = reverse("admin:connectors_connector_change", args=[smtp_connector.pk])
    config = smtp_connector.config()
    assert config["auth"]["pass"] == schema.MASK
    post_connector(admin_client, url, config, slug="smtp-main")
    smtp_connector.refresh_from_db()
    assert smtp_connector.secret_values() == {"auth.pass": SMTP_PASSWORD}
    assert smtp_connector.revisions.count() == 2


def test_errors_stay_on_the_page_located_at_their_line(admin_client, smtp_config):
    smtp_config["fromEmial"] = smtp_config.pop("fromEmail")
    text = json.dumps(smtp_config, indent=2)
    response = post_connector(admin_client, reverse("admin:connectors_connector_add"), text)
    assert response.status_code == 200
    errors = editor_data(response)["errors"]
    line = next(i for i, t in enumerate(text.splitlines(), 1) if "fromEmial" in t)
    assert {
        "path": "fromEmial",
        "line": line,
        "column": 3,
        "message": "unknown key; did you mean `fromEmail`?",
    } in errors
    assert any(e["path"] == "fromEmail" for e in errors)  # and the required one is missing
    html = response.content.decode()
    assert f"Line {line}, column 3" in html
    assert not Connector.objects.exists()


def test_invalid_json_is_located_too(admin_client):
    response = post_connector(
        admin_client,
        reverse("admin:connectors_connector_add"),
        '{\n  "host": "x",\n  "port": 25,,\n}',
    )
    errors = editor_data(response)["errors"]
    assert errors and errors[0]["line"] == 3


def test_a_mask_without_a_stored_secret_is_an_error_at_its_line(admin_client, smtp_config):
    smtp_config["auth"]["pass"] = schema.MASK
    response = post_connector(admin_client, reverse("admin:connectors_connector_add"), smtp_config)
    assert response.status_code == 200
    (error,) = editor_data(response)["errors"]
    assert error["path"] == "auth.pass" and "enter the real value" in error["message"]
    assert not Connector.objects.exists()


def test_the_kind_of_a_saved_connector_cannot_change(admin_client, smtp_connector):
    url = reverse("admin:connectors_connector_change", args=[smtp_connector.pk])
    post_connector(admin_client, url, smtp_connector.config(), slug="smtp-main", kind="http")
    smtp_connector.refresh_from_db()
    assert smtp_connector.kind == "smtp"


def test_a_duplicate_slug_is_refused(admin_client, smtp_connector, smtp_config):
    response = post_connector(
        admin_client, reverse("admin:connectors_connector_add"), smtp_config, slug="smtp-main"
    )
    assert response.status_code == 200
    assert Connector.objects.count() == 1


def test_no_connector_page_ever_shows_a_secret(admin_client, smtp_connector, http_connector):
    pages = [reverse(LIST)]
    for connector in (smtp_connector, http_connector):
        pk = connector.pk
        pages += [
            reverse("admin:connectors_connector_change", args=[pk]),
            reverse("admin:connectors_connector_templates", args=[pk]),
            reverse("admin:connectors_connector_history", args=[pk]),
            reverse("admin:connectors_connector_history_diff", args=[pk]),
            reverse("admin:connectors_connector_export", args=[pk]),
        ]
    for url in pages:
        body = admin_client.get(url).content.decode()
        for secret in (
            SMTP_PASSWORD,
            HTTP_AUTHORIZATION,
            smtp_connector.secrets,
            http_connector.secrets,
        ):
            assert secret not in body, url


def test_an_oauth2_connectors_secrets_are_all_masked(admin_client):
    config = schema.example_config("smtp")
    config["auth"] = {
        "type": "OAuth2",
        "user": "me@example.test",
        "clientId": "client-1",
        "clientSecret": "client-s3cret-1",
        "refreshToken": "refresh-s3cret-1",
        "accessToken": "access-s3cret-1",
    }
    connector = make_connector("oauth", "smtp", config)
    body = admin_client.get(
        reverse("admin:connectors_connector_change", args=[connector.pk])
    ).content.decode()
    for secret in ("client-s3cret-1", "refresh-s3cret-1", "access-s3cret-1"):
        assert secret not in body
    assert body.count(schema.MASK) >= 3


@pytest.mark.parametrize("kind", schema.KINDS)
def test_the_editors_schema_accepts_and_refuses_what_the_schema_does(kind):
    jsonschema = pytest.importorskip("jsonschema")
    original, for_editor = schema.json_schema(kind), editor_schema(schema.json_schema(kind))
    if kind == "smtp":
        assert for_editor["properties"]["tls"]["type"] == ["object", "null"]
    example = schema.example_config(kind)
    template = example["templates"][0]
    variants = [
        example,
        {**example, "replyTo": None},
        {**example, "replyTo": 5},
        {**example, "templates": []},
        {**example, "templates": [{**template, "usageType": "Test"}]},
        {**example, "templates": [{**template, "usageType": "Nope"}]},
        {**example, "templates": [{**template, "locale": 7}]},
    ]
    if kind == "smtp":
        variants += [
            {**example, "port": "587"},
            {**example, "port": "five"},
            {**example, "port": 99999},
            {**example, "port": 0},
            {**example, "port": True},
            {**example, "tls": {**example["tls"], "ca": ["-----BEGIN CERTIFICATE-----"]}},
            {**example, "tls": {**example["tls"], "ca": 7}},
            {**example, "customHeaders": {"X-A": ["a", "b"]}},
            {**example, "customHeaders": {"X-A": 3}},
            {**example, "tls": None},
            {**example, "tls": {**example["tls"], "minVersion": None}},
            {**example, "tls": {**example["tls"], "minVersion": "SSLv3"}},
            {**example, "tls": {**example["tls"], "color": "red"}},
            {**example, "tls": "yes"},
        ]
    for config in variants:
        expected = jsonschema.Draft202012Validator(original).is_valid(config)
        assert jsonschema.Draft202012Validator(for_editor).is_valid(config) == expected, config


@pytest.mark.parametrize("kind", schema.KINDS)
def test_the_editors_schema_has_no_anyof_it_can_say_more_simply(kind):
    """An `anyOf` makes the editor's live check say "does not match any schema of [JSON]"."""
    found = []

    def walk(node, path):
        if isinstance(node, dict):
            if "anyOf" in node:
                found.append(path)
            for key, value in node.items():
                walk(value, f"{path}/{key}")
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(value, f"{path}/{index}")

    for_editor = editor_schema(schema.json_schema(kind))
    walk(for_editor, "")
    # Only the SMTP login (one of three forms of object, or nothing) is left as it is.
    assert found == (["/properties/auth"] if kind == "smtp" else [])
    if kind == "smtp":
        port = for_editor["properties"]["port"]
        assert port["type"] == ["integer", "string"] and port["maximum"] == 65535


def test_a_secret_typed_into_a_refused_config_is_not_sent_back(admin_client, smtp_config):
    smtp_config["fromEmial"] = smtp_config.pop("fromEmail")
    text = json.dumps(smtp_config, indent=2)
    response = post_connector(admin_client, reverse("admin:connectors_connector_add"), text)
    assert response.status_code == 200
    assert SMTP_PASSWORD not in response.content.decode()
    shown = json.loads(response.context["adminform"].form["config"].value())
    assert shown["auth"]["pass"] == "" and shown["fromEmial"] == smtp_config["fromEmial"]
    line = next(i for i, t in enumerate(text.splitlines(), 1) if '"pass"' in t)
    (withheld,) = [e for e in editor_data(response)["errors"] if e["path"] == "auth.pass"]
    assert withheld["line"] == line and "enter this secret again" in withheld["message"]


def test_a_secret_in_text_that_does_not_parse_is_not_sent_back_either(admin_client):
    text = (
        '{\n  "host": "smtp.example.test",\n  "auth": {"user": "u", "pass": "' + SMTP_PASSWORD + '"'
    )
    response = post_connector(admin_client, reverse("admin:connectors_connector_add"), text)
    assert SMTP_PASSWORD not in response.content.decode()


def test_a_masked_secret_in_a_refused_config_stays_masked(admin_client, smtp_connector):
    config = smtp_connector.config()
    config["prot"] = 1
    url = reverse("admin:connectors_connector_change", args=[smtp_connector.pk])
    response = post_connector(admin_client, url, config, slug="smtp-main")
    shown = json.loads(response.context["adminform"].form["config"].value())
    assert shown["auth"]["pass"] == schema.MASK
    assert not [e for e in editor_data(response)["errors"] if e["path"] == "auth.pass"]
