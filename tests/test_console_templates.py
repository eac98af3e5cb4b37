"""Templates: the grid of usage types by locales, one template's page and preview, a new locale."""

from __future__ import annotations

import pytest
from django.urls import reverse

from connectors import schema
from connectors.models import Template

from .conftest import SMTP_PASSWORD

pytestmark = pytest.mark.django_db


def template_url(connector, usage_type="Generic", locale="default"):
    return reverse("admin:connectors_connector_template", args=[connector.pk, usage_type, locale])


def template_fields(**overrides):
    fields = {
        "subject": "Your code",
        "content": "<p>Code: <b>{{code}}</b></p>",
        "content_type": "text/html",
        "reply_to": "",
        "send_from": "",
    }
    fields.update(overrides)
    return fields


def test_the_grid_shows_which_templates_exist_and_what_the_others_fall_back_to(
    admin_client, smtp_connector
):
    smtp_connector.templates.filter(usage_type="SignIn").update(locale="fr")
    html = admin_client.get(
        reverse("admin:connectors_connector_templates", args=[smtp_connector.pk])
    ).content.decode()
    assert '<th scope="col">fr</th>' in html
    assert html.count('class="exists"') == 4
    assert "uses Generic · default" in html  # e.g. MfaVerification, or SignIn in the default locale
    assert "uses SignIn · fr" not in html  # a French template is never the default's fallback


def test_editing_a_template_saves_it_as_a_new_revision_of_the_config(admin_client, smtp_connector):
    response = admin_client.post(template_url(smtp_connector), template_fields())
    assert response.status_code == 302
    assert response["Location"] == reverse(
        "admin:connectors_connector_templates", args=[smtp_connector.pk]
    )
    generic = smtp_connector.templates.get(usage_type="Generic", locale="")
    assert generic.content_type == "text/html" and generic.subject == "Your code"
    revision = smtp_connector.revisions.order_by("-number").first()
    assert revision.number == 2 and "Generic" in revision.note
    assert smtp_connector.secret_values() == {"auth.pass": SMTP_PASSWORD}  # the rest is kept
    # The JSON editor shows the same stored data.
    generic_item = next(
        t for t in smtp_connector.config()["templates"] if t["usageType"] == "Generic"
    )
    assert generic_item["subject"] == "Your code"


def test_a_missing_template_is_added_from_its_fallback(admin_client, smtp_connector):
    page = admin_client.get(template_url(smtp_connector, "BindMfa"))
    assert (
        page.context["form"].initial["subject"] == "Generic code"
    )  # starts from what is used today
    admin_client.post(
        template_url(smtp_connector, "BindMfa"), template_fields(subject="Bind your MFA")
    )
    assert smtp_connector.templates.get(usage_type="BindMfa").subject == "Bind your MFA"


def test_schema_errors_are_shown_on_their_field(admin_client, smtp_connector):
    response = admin_client.post(
        template_url(smtp_connector),
        template_fields(subject="Two\nlines", reply_to="not an address"),
    )
    assert response.status_code == 200
    form = response.context["form"]
    assert "single line" in form.errors["subject"][0]
    assert "email address" in form.errors["reply_to"][0]
    assert smtp_connector.revisions.count() == 1


def test_a_required_template_cannot_be_deleted_but_an_optional_one_can(
    admin_client, smtp_connector
):
    response = admin_client.post(template_url(smtp_connector), {"_delete": "Delete"}, follow=True)
    assert "Generic" in response.content.decode()
    assert smtp_connector.templates.filter(usage_type="Generic").exists()
    admin_client.post(template_url(smtp_connector, "BindMfa"), template_fields())
    admin_client.post(template_url(smtp_connector, "BindMfa"), {"_delete": "Delete"})
    assert not smtp_connector.templates.filter(usage_type="BindMfa").exists()


def test_adding_a_locale_copies_the_default_templates(admin_client, smtp_connector):
    url = reverse("admin:connectors_connector_templates", args=[smtp_connector.pk])
    response = admin_client.post(url, {"locale": "de-ch"}, follow=True)
    assert "Added 4 templates for de-CH" in response.content.decode()
    copies = Template.objects.filter(connector=smtp_connector, locale="de-CH")
    assert sorted(t.usage_type for t in copies) == sorted(
        ["Register", "SignIn", "ForgotPassword", "Generic"]
    )
    assert copies.get(usage_type="Generic").subject == "Generic code"


@pytest.mark.parametrize(("locale", "message"), [("en_US", "hyphen"), ("", "required")])
def test_a_bad_locale_is_refused(admin_client, smtp_connector, locale, message):
    url = reverse("admin:connectors_connector_templates", args=[smtp_connector.pk])
    response = admin_client.post(url, {"locale": locale})
    assert response.status_code == 200 and message in response.content.decode()
    assert not Template.objects.exclude(locale="").exists()


def test_a_locale_that_exists_is_refused(admin_client, smtp_connector):
    url = reverse("admin:connectors_connector_templates", args=[smtp_connector.pk])
    admin_client.post(url, {"locale": "fr"})
    response = admin_client.post(url, {"locale": "fr"})
    assert "exist already" in response.content.decode()


def test_the_preview_renders_subject_and_plain_text_with_a_sample_payload(
    admin_client, smtp_connector
):
    url = reverse("admin:connectors_connector_template_preview", args=[smtp_connector.pk])
    answer = admin_client.post(
        url, {**template_fields(subject="Code {{code}}"), "usage_type": "Generic", "locale": ""}
    ).json()
    assert answer["ok"] and answer["subject"] == "Code 123456"
    assert answer["text"] == "Code: 123456" and answer["is_html"]
    assert answer["from"] == "Acme <no-reply@example.test>"


def test_the_preview_uses_a_payload_given_to_it(admin_client, smtp_connector):
    url = reverse("admin:connectors_connector_template_preview", args=[smtp_connector.pk])
    answer = admin_client.post(
        url,
        {
            **template_fields(content="Hi {{user.name}}", content_type="text/plain"),
            "payload": '{"user": {"name": "<Zoë>"}}',
        },
    ).json()
    assert answer["text"] == "Hi <Zoë>" and not answer["is_html"]


def test_the_preview_reports_a_template_that_cannot_render(admin_client, smtp_connector):
    url = reverse("admin:connectors_connector_template_preview", args=[smtp_connector.pk])
    answer = admin_client.post(url, template_fields(send_from="nobody")).json()
    assert not answer["ok"] and "not an email address" in answer["error"]["message"]
    answer = admin_client.post(url, {**template_fields(), "payload": "[1]"}).json()
    assert "JSON object" in answer["error"]["message"]


def test_the_html_preview_frame_is_escaped_sandboxed_and_cannot_run_scripts(
    admin_client, smtp_connector
):
    url = reverse("admin:connectors_connector_template_frame", args=[smtp_connector.pk])
    response = admin_client.post(
        url,
        {
            **template_fields(content='<p style="color:red">{{user.name}}</p>'),
            "payload": '{"user": {"name": "<script>alert(1)</script>"}}',
        },
    )
    body = response.content.decode()
    assert body == '<p style="color:red">&lt;script&gt;alert(1)&lt;/script&gt;</p>'
    policy = response["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "sandbox" in policy and "script-src" not in policy
    assert response["X-Frame-Options"] == "SAMEORIGIN"


def test_a_viewer_sees_the_template_form_read_only(client, viewer_user, smtp_connector):
    client.force_login(viewer_user)
    html = client.get(template_url(smtp_connector)).content.decode()
    assert "<fieldset disabled>" in html and 'name="_save"' not in html
    preview = reverse("admin:connectors_connector_template_preview", args=[smtp_connector.pk])
    assert client.post(preview, template_fields()).json()["ok"]  # previews change nothing


def test_an_unknown_usage_type_is_not_found(admin_client, smtp_connector):
    assert admin_client.get(template_url(smtp_connector, "Birthday")).status_code == 404


def test_template_pages_never_show_a_secret(admin_client, smtp_connector):
    for url in (template_url(smtp_connector), template_url(smtp_connector, "BindMfa", "fr")):
        body = admin_client.get(url).content.decode()
        assert SMTP_PASSWORD not in body and schema.MASK not in body
