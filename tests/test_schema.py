"""The connector config schema: what it accepts, how it normalises, and how it reports errors."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from textwrap import dedent
from typing import Any

import pytest

from connectors import schema
from connectors.schema import (
    MASK,
    PRESETS,
    REQUIRED_USAGE_TYPES,
    SECRET_PATHS,
    USAGE_TYPES,
    ConfigError,
    dump_config,
    example_config,
    example_config_text,
    json_schema,
    validate_config,
    validate_config_data,
)

FIXTURES = Path(__file__).parent / "fixtures"
LOGTO_FIXTURES = sorted(FIXTURES.glob("logto_*.json"))


def kind_of(fixture: Path) -> str:
    return "http" if fixture.name.startswith("logto_http") else "smtp"


def template(usage: str, **fields: Any) -> dict[str, Any]:
    return {
        "usageType": usage,
        "contentType": "text/plain",
        "subject": f"{usage} subject",
        "content": f"{usage}: your code is {{{{code}}}}",
        **fields,
    }


def smtp_config(**fields: Any) -> dict[str, Any]:
    """Return a small valid SMTP config, with some fields replaced."""
    config: dict[str, Any] = {
        "host": "smtp.example.com",
        "port": 587,
        "auth": {"user": "no-reply@example.com", "pass": "s3cret-pass"},
        "fromEmail": "no-reply@example.com",
        "templates": [template(usage) for usage in REQUIRED_USAGE_TYPES],
    }
    config.update(fields)
    return config


def messages(result: schema.ValidationResult) -> list[str]:
    return [error.message for error in result.errors]


def the_error(result: schema.ValidationResult) -> ConfigError:
    assert len(result.errors) == 1, result.errors
    return result.errors[0]


def assert_round_trips(kind: str, data: dict[str, Any]) -> None:
    again = validate_config(kind, dump_config(data))
    assert again.ok, again.errors
    assert again.data == data


# Logto configs paste in unchanged ------------------------------------------------------------


@pytest.mark.parametrize("fixture", LOGTO_FIXTURES, ids=lambda p: p.stem)
def test_logto_example_configs_validate_and_round_trip(fixture: Path) -> None:
    result = validate_config(kind_of(fixture), fixture.read_bytes())

    assert result.ok, result.errors
    assert result.data is not None
    assert_round_trips(kind_of(fixture), result.data)


def test_older_username_password_form_is_moved_into_auth() -> None:
    result = validate_config("smtp", (FIXTURES / "logto_smtp_gmail_older.json").read_text())

    assert result.data is not None
    assert result.data["auth"] == {
        "user": "acme.notifications@gmail.com",
        "pass": "abcdefghijklmnop",
    }
    assert "username" not in result.data and "password" not in result.data
    assert any(
        "`username`/`password`" in n and "`auth.user`/`auth.pass`" in n for n in result.notices
    )


def test_port_given_as_a_numeric_string_is_read_as_a_number() -> None:
    result = validate_config("smtp", (FIXTURES / "logto_smtp_gmail_older.json").read_text())

    assert result.data is not None
    assert result.data["port"] == 587


def test_older_usage_type_test_is_read_as_generic() -> None:
    result = validate_config("smtp", (FIXTURES / "logto_smtp_gmail_older.json").read_text())

    assert result.data is not None
    assert [t["usageType"] for t in result.data["templates"]][-1] == "Generic"
    assert "templates[3].usageType `Test` (Logto's older name) is read as `Generic`" in (
        result.notices
    )


def test_generic_and_test_together_are_duplicates() -> None:
    templates = [template(u) for u in REQUIRED_USAGE_TYPES] + [template("Test")]
    result = validate_config_data("smtp", smtp_config(templates=templates))

    assert the_error(result).path == "templates[4].usageType"
    assert "duplicate template: templates[3] is already the Generic template" in messages(result)[0]


def test_older_example_on_port_465_without_secure_gets_a_notice() -> None:
    result = validate_config("smtp", (FIXTURES / "logto_smtp_aliyun_older.json").read_text())

    assert result.ok
    assert any(n.startswith("port 465 expects TLS from the start") for n in result.notices)


def test_port_587_with_secure_gets_a_notice() -> None:
    result = validate_config_data("smtp", smtp_config(secure=True))

    assert result.ok
    assert any(n.startswith("port 587 expects STARTTLS") for n in result.notices)


def test_auth_and_top_level_username_password_together_are_an_error() -> None:
    text = dedent(
        """\
        {
          "host": "smtp.example.com",
          "port": 587,
          "auth": {"user": "a@example.com", "pass": "one"},
          "username": "a@example.com",
          "password": "two",
          "fromEmail": "a@example.com",
          "templates": []
        }
        """
    )
    result = validate_config("smtp", text)

    username, password = (e for e in result.errors if e.path in ("username", "password"))
    assert (username.line, username.column) == (5, 3)
    assert (password.line, password.column) == (6, 3)
    assert "either `auth` or the older top-level `username`/`password`" in username.message


def test_older_form_errors_point_at_username_and_password() -> None:
    text = '{"host": "h.example", "port": 25, "username": 7, "fromEmail": "a@b.example",\n'
    text += ' "templates": []}'
    result = validate_config("smtp", text)

    errors = {e.path: e for e in result.errors}
    assert errors["username"].message == "expected a string (got a number)"
    assert (errors["username"].line, errors["username"].column) == (1, 47)
    assert errors["password"].message == "required"


def test_http_email_config_needs_only_an_endpoint() -> None:
    result = validate_config("http", '{"endpoint": "https://mailer.example.com/send"}')

    assert result.ok
    assert result.data == {"endpoint": "https://mailer.example.com/send"}


@pytest.mark.parametrize(
    "endpoint",
    ["ftp://mailer.example.com", "mailer.example.com/send", "https://", "https://a b.example/"],
)
def test_http_endpoint_must_be_an_http_url_with_a_host(endpoint: str) -> None:
    result = validate_config_data("http", {"endpoint": endpoint})

    assert the_error(result).path == "endpoint"
    assert "URL" in the_error(result).message


def test_http_templates_are_optional_but_checked_when_present() -> None:
    endpoint = "https://mailer.example.com/send"
    without = validate_config_data("http", {"endpoint": endpoint, "templates": []})
    incomplete = validate_config_data(
        "http", {"endpoint": endpoint, "templates": [template("SignIn")]}
    )

    assert without.ok and without.data == {"endpoint": endpoint}
    assert messages(incomplete) == [
        "templates is missing the usage types Register, ForgotPassword, Generic"
    ]


# Normalised output ---------------------------------------------------------------------------


def test_defaults_are_visible_in_the_normalised_config() -> None:
    result = validate_config_data("smtp", smtp_config())

    assert result.data is not None
    assert result.data["secure"] is False
    assert result.data["connectionTimeout"] == 120000
    assert result.data["greetingTimeout"] == 30000
    assert result.data["socketTimeout"] == 600000
    assert result.data["dnsTimeout"] == 30000


def test_normalised_config_has_the_canonical_key_order_with_templates_last() -> None:
    shuffled = dict(reversed(list(smtp_config(replyTo="help@example.com").items())))
    result = validate_config_data("smtp", shuffled)

    assert result.data is not None
    assert list(result.data) == [
        "host",
        "port",
        "secure",
        "auth",
        "fromEmail",
        "replyTo",
        "connectionTimeout",
        "greetingTimeout",
        "socketTimeout",
        "dnsTimeout",
        "templates",
    ]
    assert list(result.data["templates"][0]) == ["usageType", "contentType", "subject", "content"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("replyTo", ""),
        ("replyTo", None),
        ("tls", None),
        ("tls", {}),
        ("auth", None),
        ("auth", ""),
        ("name", ""),
        ("servername", None),
        ("localAddress", ""),
        ("requireTLS", None),
        ("customHeaders", {}),
        ("secure", None),
    ],
)
def test_empty_optional_values_mean_not_set(field: str, value: Any) -> None:
    result = validate_config_data("smtp", smtp_config(**{field: value}))

    assert result.ok, result.errors
    assert result.data is not None
    assert field not in result.data or (field == "secure" and result.data[field] is False)


@pytest.mark.parametrize("field", ["locale", "replyTo", "sendFrom"])
def test_empty_optional_template_fields_mean_not_set(field: str) -> None:
    templates = [template(u, **{field: ""}) for u in REQUIRED_USAGE_TYPES]
    result = validate_config_data("smtp", smtp_config(templates=templates))

    assert result.ok, result.errors
    assert result.data is not None
    assert all(field not in t for t in result.data["templates"])


def test_empty_tls_options_are_dropped_so_the_output_round_trips() -> None:
    result = validate_config_data("smtp", smtp_config(tls={"servername": "", "minVersion": None}))

    assert result.data is not None
    assert "tls" not in result.data


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("host", "", "must not be empty"),
        ("host", None, "required: must not be null"),
        ("fromEmail", "", "must not be empty"),
        ("templates", None, "required: must not be null"),
    ],
)
def test_required_fields_empty_are_errors(field: str, value: Any, message: str) -> None:
    result = validate_config_data("smtp", smtp_config(**{field: value}))

    assert (the_error(result).path, the_error(result).message) == (field, message)


def test_required_template_fields_empty_are_errors() -> None:
    templates = [template(u) for u in REQUIRED_USAGE_TYPES]
    templates[1]["subject"] = ""
    result = validate_config_data("smtp", smtp_config(templates=templates))

    assert (the_error(result).path, the_error(result).message) == (
        "templates[1].subject",
        "must not be empty",
    )


@pytest.mark.parametrize(
    ("given", "normalised"),
    [("LOGIN", "login"), ("Login", "login"), ("login", "login")],
)
def test_login_type_is_read_in_any_case(given: str, normalised: str) -> None:
    auth = {"type": given, "user": "a@example.com", "pass": "p"}
    result = validate_config_data("smtp", smtp_config(auth=auth))

    assert result.data is not None
    assert result.data["auth"]["type"] == normalised


def test_login_type_must_be_login_or_oauth2() -> None:
    auth = {"type": "plain", "user": "a@example.com", "pass": "p"}
    result = validate_config_data("smtp", smtp_config(auth=auth))

    assert the_error(result).path == "auth.type"
    assert the_error(result).message == (
        'must be "login" for a password, or "OAuth2" for OAuth2 authentication'
    )


def test_locales_are_put_in_canonical_case() -> None:
    templates = [template(u) for u in REQUIRED_USAGE_TYPES]
    templates += [template("SignIn", locale="en-us"), template("SignIn", locale="zh-hans-cn")]
    result = validate_config_data("smtp", smtp_config(templates=templates))

    assert result.data is not None
    assert [t.get("locale") for t in result.data["templates"]][-2:] == ["en-US", "zh-Hans-CN"]


@pytest.mark.parametrize("locale", ["english", "en_US", "e", "fr-CA-"])
def test_locale_must_be_a_language_tag(locale: str) -> None:
    templates = [template(u) for u in REQUIRED_USAGE_TYPES] + [template("SignIn", locale=locale)]
    result = validate_config_data("smtp", smtp_config(templates=templates))

    assert the_error(result).path == "templates[4].locale"
    assert the_error(result).message.startswith("must be a language tag such as en, fr-CA")


# Where errors are reported -------------------------------------------------------------------

MISSPELT = dedent(
    """\
    {
      "host": "smtp.example.com",
      "port": 587,
      "fromemail": "no-reply@example.com",
      "templates": []
    }
    """
)


def test_unknown_key_is_located_at_the_key_with_a_suggestion() -> None:
    result = validate_config("smtp", MISSPELT)

    error = next(e for e in result.errors if e.path == "fromemail")
    assert (error.line, error.column) == (4, 3)
    assert error.message == "unknown key; did you mean `fromEmail`?"


@pytest.mark.parametrize(
    ("key", "suggestion"),
    [("fromemail", "fromEmail"), ("from_email", "fromEmail"), ("replyto", "replyTo"),
     ("conectionTimeout", "connectionTimeout"), ("requireTls", "requireTLS")],
)  # fmt: skip
def test_unknown_key_suggestion_ignores_case_and_small_typos(key: str, suggestion: str) -> None:
    result = validate_config_data("smtp", smtp_config(**{key: "x"}))

    assert f"unknown key; did you mean `{suggestion}`?" in messages(result)


def test_unknown_key_without_a_close_name_lists_the_allowed_keys() -> None:
    result = validate_config_data("smtp", smtp_config(tls={"flavour": "strong"}))

    assert the_error(result).path == "tls.flavour"
    assert the_error(result).message == (
        "unknown key; the keys allowed here are rejectUnauthorized, servername, minVersion, "
        "maxVersion, ciphers, ca"
    )


@pytest.mark.parametrize(
    ("option", "reason"),
    [
        ("pool", "connection reuse is built into the send service"),
        ("maxConnections", "the send service manages connections itself"),
        ("maxMessages", "the send service manages connections itself"),
        ("rateDelta", "delivery queue"),
        ("rateLimit", "delivery queue"),
        ("dkim", "DKIM"),
        ("proxy", "connects to `host` directly"),
        ("service", "set `host`, `port` and `secure`"),
        ("url", "as separate keys"),
        ("transport", "connector kind"),
        ("secured", "did you mean `secure`?"),
        ("authMethod", "the server offers"),
        ("opportunisticTLS", "`ignoreTLS`"),
    ],
)
def test_unsupported_nodemailer_options_say_why(option: str, reason: str) -> None:
    result = validate_config_data("smtp", smtp_config(**{option: True}))

    error = the_error(result)
    assert error.path == option
    assert error.message.startswith(f"`{option}` is a nodemailer option that is not supported here")
    assert reason in error.message


def test_oauth2_keys_in_a_login_auth_say_how_to_switch() -> None:
    auth = {"user": "a@example.com", "pass": "p", "refreshToken": "r"}
    result = validate_config_data("smtp", smtp_config(auth=auth))

    assert the_error(result).path == "auth.refreshToken"
    assert 'set `type` to "OAuth2"' in the_error(result).message


def test_type_error_is_located_at_the_value() -> None:
    text = dedent(
        """\
        {
          "host": "smtp.example.com",
          "port": "five-eight-seven",
          "fromEmail": "no-reply@example.com",
          "templates": []
        }
        """
    )
    result = validate_config("smtp", text)

    error = next(e for e in result.errors if e.path == "port")
    assert (error.line, error.column) == (3, 11)
    assert error.message == "expected a port number from 1 to 65535"


@pytest.mark.parametrize(
    ("port", "message"),
    [
        (0, "must be a port number from 1 to 65535"),
        (65536, "must be a port number from 1 to 65535"),
        ("99999", "must be a port number from 1 to 65535"),
        ("5 87", "expected a port number from 1 to 65535"),
        (True, "expected a port number from 1 to 65535 (got a boolean)"),
        (587.5, "expected a port number from 1 to 65535 (got a number)"),
        ([587], "expected a port number from 1 to 65535 (got a list)"),
    ],
)
def test_port_must_be_a_port_number(port: Any, message: str) -> None:
    result = validate_config_data("smtp", smtp_config(port=port))

    assert (the_error(result).path, the_error(result).message) == ("port", message)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("connectionTimeout", 0, "must be from 1 to 2147483647 milliseconds (about 24 days)"),
        ("socketTimeout", 2**31, "must be from 1 to 2147483647 milliseconds (about 24 days)"),
        ("dnsTimeout", 1.5, "expected an integer (got a number)"),
        ("dnsTimeout", "30000", "expected an integer (got a string)"),
        ("secure", "false", "expected true or false (got a string)"),
        ("logger", 1, "expected true or false (got a number)"),
        ("tls", [1], "expected an object of TLS options (got a list)"),
        (
            "auth",
            "user:pass",
            'expected an object such as {"user": "…", "pass": "…"} (got a string)',
        ),
        ("templates", {}, "expected a list of templates (got an object)"),
    ],
)
def test_wrong_types_say_what_was_expected(field: str, value: Any, message: str) -> None:
    result = validate_config_data("smtp", smtp_config(**{field: value}))

    assert (the_error(result).path, the_error(result).message) == (field, message)


def test_missing_key_is_located_at_the_enclosing_object() -> None:
    text = dedent(
        """\
        {
          "host": "smtp.example.com",
          "port": 587,
          "fromEmail": "no-reply@example.com",
          "templates": [
            {"usageType": "Register", "contentType": "text/plain", "subject": "s", "content": "c"},
            {"usageType": "SignIn", "contentType": "text/plain", "content": "c"}
          ]
        }
        """
    )
    result = validate_config("smtp", text)

    error = next(e for e in result.errors if e.path == "templates[1].subject")
    assert (error.line, error.column, error.message) == (7, 5, "required")


def test_missing_top_level_key_is_located_at_the_root_object() -> None:
    result = validate_config(
        "smtp", '\n  {"host": "smtp.example.com", "fromEmail": "a@example.com"}'
    )

    errors = {e.path: e for e in result.errors}
    assert (errors["port"].line, errors["port"].column) == (2, 3)
    assert errors["port"].message.startswith("required")


def test_missing_required_templates_are_named() -> None:
    templates = [template("Register"), template("ForgotPassword")]
    result = validate_config_data("smtp", smtp_config(templates=templates))

    assert the_error(result).path == "templates"
    assert the_error(result).message == "templates is missing the usage types SignIn, Generic"


def test_a_localised_template_does_not_stand_in_for_the_default_one() -> None:
    templates = [template(u) for u in ("Register", "SignIn", "ForgotPassword")]
    templates.append(template("Generic", locale="fr"))
    result = validate_config_data("smtp", smtp_config(templates=templates))

    assert the_error(result).message.startswith("templates is missing the usage type Generic (")


def test_duplicate_template_is_located_at_the_duplicate() -> None:
    text = dedent(
        """\
        {"host": "smtp.example.com", "port": 587, "fromEmail": "a@example.com", "templates": [
          {"usageType":"Register","contentType":"text/plain","subject":"s","content":"c"},
          {"usageType":"SignIn","contentType":"text/plain","subject":"s","content":"c"},
          {"usageType":"ForgotPassword","contentType":"text/plain","subject":"s","content":"c"},
          {"usageType":"Generic","contentType":"text/plain","subject":"s","content":"c"},
          {"usageType":"SignIn","locale":"fr","contentType":"text/plain","subject":"s","content":"c"},
          {"contentType":"text/html","usageType":"SignIn","subject":"s","content":"c"}
        ]}
        """
    )
    result = validate_config("smtp", text)

    error = the_error(result)
    assert (error.path, error.line, error.column) == ("templates[5].usageType", 7, 42)
    assert error.message == (
        "duplicate template: templates[1] is already the SignIn template for the default locale"
    )


def test_unknown_usage_type_lists_the_valid_ones() -> None:
    templates = [template(u) for u in REQUIRED_USAGE_TYPES] + [template("PasswordReset")]
    result = validate_config_data("smtp", smtp_config(templates=templates))

    assert the_error(result).path == "templates[4].usageType"
    assert the_error(result).message == "unknown usage type; must be one of: " + ", ".join(
        USAGE_TYPES
    )


def test_usage_type_in_the_wrong_case_gets_a_suggestion() -> None:
    templates = [template(u) for u in REQUIRED_USAGE_TYPES] + [template("bindmfa")]
    result = validate_config_data("smtp", smtp_config(templates=templates))

    assert the_error(result).message.endswith("(did you mean `BindMfa`?)")


def test_content_type_must_be_plain_text_or_html() -> None:
    templates = [template(u) for u in REQUIRED_USAGE_TYPES]
    templates[0]["contentType"] = "text/markdown"
    result = validate_config_data("smtp", smtp_config(templates=templates))

    assert the_error(result).message == "must be one of: text/plain, text/html"


def test_duplicate_json_key_is_an_error_at_the_second_key() -> None:
    text = '{\n  "host": "a.example.com",\n  "port": 587,\n  "host": "b.example.com"\n}'
    result = validate_config("smtp", text)

    error = next(e for e in result.errors if e.message.startswith("duplicate key"))
    assert (error.path, error.line, error.column) == ("host", 4, 3)
    assert result.data is None


@pytest.mark.parametrize(
    ("text", "line", "column", "message"),
    [
        ('{\n  "host": "a"\n  "port": 587\n}', 3, 3, "expected `,` or `}` after the value"),
        ('{\n  "host": "a",\n}', 2, 14, "a comma before `}` is not allowed in JSON: remove it"),
        ('{\n  "templates": [1, 2,]\n}', 2, 21, "a comma before `]` is not allowed in JSON"),
        ("{'host': 'a'}", 1, 2, "keys need double quotes in JSON, not single quotes"),
        ('{"host": "a', 1, 10, "unterminated string: a closing double quote is missing"),
        ('{"host" "a"}', 1, 9, "expected `:` after the key"),
        ('{"port": 587', 1, 13, "expected `,` or `}` after the value"),
        ('{"port": }', 1, 10, "expected a value"),
        ('{"port": 58 7}', 1, 13, "expected `,` or `}` after the value"),
        ('{"a": "tab\there"}', 1, 11, "a control character"),
        ('{"a": "\\q"}', 1, 8, "invalid escape sequence"),
        ('{"a": 1}\n{"b": 2}', 2, 1, "unexpected text after the end of the JSON document"),
        ("", 1, 1, "the text is empty: expected a JSON object"),
        ("  \n  ", 2, 3, "the text is empty: expected a JSON object"),
        ('{"port": NaN}', 1, 10, "NaN is not allowed in JSON"),
        ('{"port": Infinity}', 1, 10, "Infinity is not allowed in JSON"),
        ('{"port": -Infinity}', 1, 10, "-Infinity is not allowed in JSON"),
        ('{"port": 1e400}', 1, 10, "this number is too large"),
        ('{"port": ' + "9" * 5000 + "}", 1, 10, "this number has too many digits"),
    ],
)
def test_invalid_json_is_reported_at_its_line_and_column(
    text: str, line: int, column: int, message: str
) -> None:
    result = validate_config("smtp", text)

    error = the_error(result)
    assert (error.line, error.column) == (line, column)
    assert error.message.startswith(message)
    assert result.data is None


@pytest.mark.parametrize(
    ("text", "found"),
    [("[]", "a list"), ('"smtp"', "a string"), ("null", "null"), ("42", "a number")],
)
def test_the_config_must_be_a_json_object(text: str, found: str) -> None:
    assert the_error(validate_config("smtp", text)).message == (
        f"the config must be a JSON object, not {found}"
    )


def test_nesting_too_deep_is_an_error_not_a_crash() -> None:
    text = '{"tls": ' + "[" * 100_000 + "]" * 100_000 + "}"
    error = the_error(validate_config("smtp", text))

    assert error.message.startswith("nesting too deep")
    assert (error.line, error.column) == (1, 72)


def test_nul_characters_and_unpaired_surrogates_are_refused() -> None:
    text = '{"host": "smtp\\u0000.example.com", "name": "\\ud800", "port": 25}'
    result = validate_config("smtp", text)

    nul = next(e for e in result.errors if e.message.startswith("contains a NUL character"))
    surrogate = next(e for e in result.errors if e.message.startswith("contains an unpaired"))
    assert (nul.path, nul.line, nul.column) == ("host", 1, 10)
    assert (surrogate.path, surrogate.line, surrogate.column) == ("name", 1, 44)


def test_invalid_utf8_is_located() -> None:
    error = the_error(validate_config("smtp", b'{\n  "host": "caf\xe9"\n}'))

    assert (error.line, error.column, error.message) == (2, 15, "the text is not valid UTF-8")


def test_utf8_byte_order_mark_and_utf16_text_are_read() -> None:
    text = dump_config(smtp_config())

    assert validate_config("smtp", b"\xef\xbb\xbf" + text.encode()).ok
    assert validate_config("smtp", "\ufeff" + text).ok
    assert validate_config("smtp", text.encode("utf-16")).ok


def test_oversized_text_is_refused_with_a_clear_error() -> None:
    text = dump_config(smtp_config(name="a" * (schema.MAX_CONFIG_BYTES + 1)))

    assert the_error(validate_config("smtp", text)).message == (
        "the config is larger than 1024 KiB, the most accepted (a config is a few KiB)"
    )
    assert the_error(validate_config("smtp", text.encode())).message.startswith("the config is")


def test_unknown_connector_kind_is_an_error() -> None:
    error = the_error(validate_config("sms", "{}"))

    assert error.message == "unknown connector kind; must be one of: smtp, http"


def test_text_of_another_type_is_an_error() -> None:
    assert the_error(validate_config("smtp", 42)).message == "expected the config as text"  # type: ignore[arg-type]


MANY_MISTAKES = dedent(
    """\
    {
      "templates": [],
      "port": "x",
      "hots": "smtp.example.com",
      "fromEmail": "nobody"
    }
    """
)


def test_errors_are_listed_in_text_order() -> None:
    result = validate_config("smtp", MANY_MISTAKES)

    positions = [(e.line, e.column) for e in result.errors]
    assert positions == sorted(positions)
    assert [e.path for e in result.errors] == ["host", "templates", "port", "hots", "fromEmail"]


# What values are accepted -------------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "no-reply@example.com",
        "Acme <no-reply@acme.test>",
        '"Acme, Inc." <no-reply@acme.test>',
        "<no-reply@acme.test>",
        "Ünïcode Nàme <info@bücher.example>",
        "test@localhost",
    ],
)
def test_from_email_may_carry_a_display_name(address: str) -> None:
    assert validate_config_data("smtp", smtp_config(fromEmail=address)).ok


@pytest.mark.parametrize(
    "address",
    ["no-reply", "Acme", "a@b@c", "Acme <no-reply>", "a..b@example.com", "a@example..com", "<>"],
)
def test_from_email_must_be_an_address(address: str) -> None:
    result = validate_config_data("smtp", smtp_config(fromEmail=address))

    assert the_error(result).path == "fromEmail"
    assert the_error(result).message.startswith("must be an email address")


@pytest.mark.parametrize(
    ("host", "message"),
    [
        ("smtp://smtp.example.com", "give the host name alone, without a scheme such as smtp://"),
        ("smtp.example.com:587", "give the port in `port`, not after the host name"),
        ("smtp example com", "must be a host name such as smtp.example.com, or an IP address"),
        ("-bad-.example.com", "must be a host name such as smtp.example.com, or an IP address"),
    ],
)
def test_host_must_be_a_host_name(host: str, message: str) -> None:
    result = validate_config_data("smtp", smtp_config(host=host))

    assert (the_error(result).path, the_error(result).message) == ("host", message)


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "::1", "mail.example.com", "localhost", "mx1.bücher.example"]
)
def test_host_may_be_a_name_or_an_ip_address(host: str) -> None:
    assert validate_config_data("smtp", smtp_config(host=host)).ok


def test_local_address_must_be_an_ip_address() -> None:
    result = validate_config_data("smtp", smtp_config(localAddress="eth0"))

    assert the_error(result).message.startswith("must be an IP address of this machine")


def test_require_tls_and_ignore_tls_together_are_an_error() -> None:
    result = validate_config_data("smtp", smtp_config(requireTLS=True, ignoreTLS=True))

    assert the_error(result).path == "ignoreTLS"
    assert the_error(result).message.startswith("cannot be true together with `requireTLS`")


def test_require_tls_with_ignore_tls_false_is_fine() -> None:
    assert validate_config_data("smtp", smtp_config(requireTLS=True, ignoreTLS=False)).ok


PEM = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUExample\n-----END CERTIFICATE-----\n"


def test_tls_options_are_checked() -> None:
    good = {"rejectUnauthorized": False, "minVersion": "TLSv1.2", "maxVersion": "TLSv1.3",
            "ciphers": "HIGH:!aNULL", "servername": "smtp.example.com", "ca": [PEM]}  # fmt: skip
    result = validate_config_data("smtp", smtp_config(tls=good))

    assert result.ok, result.errors
    assert any("certificate is not checked" in n for n in result.notices)
    assert messages(validate_config_data("smtp", smtp_config(tls={"minVersion": "tlsv1.2"}))) == [
        "must be one of: TLSv1, TLSv1.1, TLSv1.2, TLSv1.3 (did you mean `TLSv1.2`?)"
    ]
    assert messages(validate_config_data("smtp", smtp_config(tls={"minVersion": "TLSv1.0"}))) == [
        "must be one of: TLSv1, TLSv1.1, TLSv1.2, TLSv1.3"
    ]
    assert messages(
        validate_config_data(
            "smtp", smtp_config(tls={"minVersion": "TLSv1.3", "maxVersion": "TLSv1.2"})
        )
    ) == ["is older than `minVersion`"]
    assert messages(validate_config_data("smtp", smtp_config(tls={"ca": "not a certificate"}))) == [
        "must be a PEM certificate: the text from -----BEGIN CERTIFICATE----- to -----END …"
    ]
    assert messages(validate_config_data("smtp", smtp_config(tls={"cert": PEM}))) == [
        "client certificates are not supported: remove this key"
    ]


def test_custom_headers_take_strings_or_lists_of_strings() -> None:
    headers = {"X-Campaign": "signup", "X-Tag": ["one", "two"]}
    result = validate_config_data("smtp", smtp_config(customHeaders=headers))

    assert result.data is not None
    assert result.data["customHeaders"] == headers


@pytest.mark.parametrize(
    ("headers", "path", "message"),
    [
        ({"X-Tag": "a\r\nBcc: victim@example.com"}, "customHeaders.X-Tag", "must be a single line"),
        ({"X-Tag": ["ok", "a\nb"]}, "customHeaders.X-Tag", "must be a single line"),
        ({"X-Tag\r\nBcc": "x"}, "customHeaders.X-Tag\r\nBcc", "must be a single line"),
        ({"X Tag": "x"}, "customHeaders.X Tag", "a header name is letters, digits and -"),
        ({"Subject": "x"}, "customHeaders.Subject", "this header is written by the console"),
        ({"X-Tag": 3}, "customHeaders.X-Tag", "expected a string, or a list of strings"),
    ],
)
def test_custom_headers_refuse_header_injection(
    headers: dict[str, Any], path: str, message: str
) -> None:
    result = validate_config_data("smtp", smtp_config(customHeaders=headers))

    assert the_error(result).path == path
    assert the_error(result).message.startswith(message)


def test_header_name_errors_point_at_the_name() -> None:
    text = '{"customHeaders": {\n  "Bad Name": "x"\n}}'
    error = next(e for e in validate_config("smtp", text).errors if e.path.startswith("custom"))

    assert (error.line, error.column) == (2, 3)


@pytest.mark.parametrize("field", ["subject", "replyTo", "sendFrom"])
def test_template_header_fields_refuse_line_breaks(field: str) -> None:
    templates = [template(u) for u in REQUIRED_USAGE_TYPES]
    templates[2][field] = "Hello <a@example.com>\r\nBcc: victim@example.com"
    result = validate_config_data("smtp", smtp_config(templates=templates))

    assert the_error(result).path == f"templates[2].{field}"
    assert the_error(result).message.startswith("must be a single line")


def test_http_authorization_refuses_line_breaks() -> None:
    config = {"endpoint": "https://mailer.example.com", "authorization": "Bearer x\r\nX-Evil: 1"}
    result = validate_config_data("http", config)

    assert the_error(result).path == "authorization"
    assert the_error(result).message.startswith("must be a single line")


def test_oauth2_with_tokens_is_accepted_and_type_normalised() -> None:
    auth = {"type": "oauth2", "user": "a@example.com", "accessToken": "ya29.token"}
    result = validate_config_data("smtp", smtp_config(auth=auth))

    assert result.data is not None
    assert result.data["auth"] == {
        "type": "OAuth2",
        "user": "a@example.com",
        "accessToken": "ya29.token",
    }


def test_oauth2_needs_a_token_or_a_way_to_get_one() -> None:
    auth = {"type": "OAuth2", "user": "a@example.com", "refreshToken": "r"}
    result = validate_config_data("smtp", smtp_config(auth=auth))

    assert the_error(result).path == "auth"
    assert the_error(result).message.startswith("OAuth2 needs `accessToken`, or `refreshToken`")


@pytest.mark.parametrize(
    "private_key", ["-----BEGIN PRIVATE KEY-----\n…", {"key": "-----BEGIN …", "passphrase": "p"}]
)
def test_oauth2_with_a_service_account_is_accepted(private_key: Any) -> None:
    auth = {"type": "OAuth2", "user": "a@example.com", "privateKey": private_key,
            "serviceClient": "113600000000000000000"}  # fmt: skip
    result = validate_config_data("smtp", smtp_config(auth=auth))

    assert result.data is not None
    assert result.data["auth"]["privateKey"] == private_key


@pytest.mark.parametrize(
    "auth",
    [
        {"user": "a@example.com", "privateKey": "-----BEGIN PRIVATE KEY-----\n…",
         "serviceClient": "113600000000000000000"},
        {"user": "a@example.com", "clientId": "id", "clientSecret": "s", "refreshToken": "r"},
    ],
    ids=["service-account", "tokens"],
)  # fmt: skip
def test_oauth2_without_type_is_read_from_its_keys_as_logto_does(auth: dict[str, Any]) -> None:
    result = validate_config_data("smtp", smtp_config(auth=auth))

    assert result.data is not None, result.errors
    assert result.data["auth"] == {"type": "OAuth2", **auth}  # the type is made explicit


def test_oauth2_service_account_errors_are_located_inside_the_key() -> None:
    auth = {
        "type": "OAuth2",
        "user": "a@example.com",
        "privateKey": {"key": "k"},
        "serviceClient": "1",
    }
    result = validate_config_data("smtp", smtp_config(auth=auth))

    assert (the_error(result).path, the_error(result).message) == (
        "auth.privateKey.passphrase",
        "required",
    )


# Secrets -------------------------------------------------------------------------------------

SECRET = "Zebra-Secret-9137"
BAD_SECRET_VALUES = [
    SECRET + "\r\nX-Evil: 1",
    [SECRET],
    {"value": SECRET},
    {SECRET: SECRET},
    12345,
]


def with_secret(path: str, value: Any) -> tuple[str, dict[str, Any]]:
    if path == "authorization":
        return "http", {"endpoint": "https://mailer.example.com", "authorization": value}
    auth: dict[str, Any] = {"type": "OAuth2", "user": "a@example.com", "accessToken": "t"}
    if path == "auth.pass":
        auth = {"user": "a@example.com", "pass": value}
    elif path == "auth.privateKey":
        auth = {"type": "OAuth2", "user": "a@example.com", "serviceClient": "1"}
    auth[path.split(".")[1]] = value
    return "smtp", smtp_config(auth=auth, port="x", fromEmail=SECRET)


@pytest.mark.parametrize("path", [p for paths in SECRET_PATHS.values() for p in paths])
@pytest.mark.parametrize("value", BAD_SECRET_VALUES, ids=range(len(BAD_SECRET_VALUES)))
def test_secret_values_never_appear_in_errors(path: str, value: Any) -> None:
    kind, config = with_secret(path, value)
    result = validate_config_data(kind, config)

    shown = " ".join([*map(str, result.errors), *result.notices, repr(result)])
    assert result.errors
    assert SECRET not in shown.replace(f"{SECRET}\r\nX-Evil", "")  # (fromEmail is no secret)
    assert "Evil" not in shown and "12345" not in shown


def test_secret_values_never_appear_in_reprs() -> None:
    result = validate_config_data(
        "smtp", smtp_config(auth={"user": "a@example.com", "pass": SECRET})
    )
    model = schema.SmtpConfig.model_validate(result.data)

    assert SECRET not in repr(result)
    assert SECRET not in repr(model)


def test_masked_secrets_are_ordinary_valid_values() -> None:
    tokens = {"type": "OAuth2", "user": "a@example.com", "clientId": "id", "clientSecret": MASK,
              "refreshToken": MASK, "accessToken": MASK}  # fmt: skip
    service = {"type": "OAuth2", "user": "a@example.com", "privateKey": MASK, "serviceClient": "1"}

    assert validate_config_data("smtp", smtp_config(auth={"user": "u", "pass": MASK})).ok
    assert validate_config_data("smtp", smtp_config(auth=tokens)).ok
    assert validate_config_data("smtp", smtp_config(auth=service)).ok
    assert validate_config_data("http", {"endpoint": "https://x.example", "authorization": MASK}).ok


JARGON = re.compile(
    r"Input should|type=|pydantic|validation error|Value error|\[key\]|literal_error"
)


def test_messages_are_free_of_pydantic_jargon() -> None:
    broken = smtp_config(
        port="x", host=5, secure="yes", auth={"type": "x", "user": 1},
        tls={"minVersion": 3, "x": 1}, customHeaders={"a b": [1]}, connectionTimeout=-1,
        replyTo="nobody", templates=[{"x": 1}, 5],
    )  # fmt: skip
    result = validate_config_data("smtp", broken)

    assert len(result.errors) > 10
    for error in result.errors:
        assert not JARGON.search(error.message), error


# Positions and results -----------------------------------------------------------------------


def test_locate_finds_a_path_or_its_nearest_parent() -> None:
    text = (
        '{\n  "auth": {\n    "user": "u",\n    "pass": "p"\n  },\n  "templates": [\n    {}\n  ]\n}'
    )
    result = validate_config("smtp", text)

    assert result.locate("auth.pass") == (4, 5)
    assert result.locate("auth") == (2, 3)
    assert result.locate("templates[0]") == (7, 5)
    assert result.locate("templates[0].subject") == (7, 5)
    assert result.locate("tls.ca") == (1, 1)
    assert result.locate("") == (1, 1)


def test_locate_finds_secrets_where_the_older_form_has_them() -> None:
    result = validate_config("smtp", (FIXTURES / "logto_smtp_gmail_older.json").read_text())

    assert result.locate("auth.pass") == (5, 3)
    assert result.locate("auth.user") == (4, 3)


def test_locate_without_a_text_is_the_start() -> None:
    assert validate_config("smtp", b"\xff\xfe\xfd").locate("host") == (1, 1)


def test_validate_config_data_locates_in_the_indented_dump() -> None:
    config = smtp_config(port="x")
    result = validate_config_data("smtp", config)

    lines = json.dumps(config, indent=2).splitlines()
    error = the_error(result)
    assert lines[error.line - 1][error.column - 1 :].startswith('"x"')


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"host": {1, 2}}, "the config is not JSON: it holds a value that is not JSON"),
        ({"port": float("nan")}, "the config is not JSON: it holds NaN or Infinity"),
        ({"port": 10**5000}, "the config is not JSON: it holds a number with too many digits"),
    ],
)
def test_validate_config_data_refuses_values_that_are_not_json(data: Any, message: str) -> None:
    assert the_error(validate_config_data("smtp", data)).message.startswith(message)


def test_validate_config_data_survives_a_circular_structure() -> None:
    data: dict[str, Any] = {}
    data["self"] = data

    assert the_error(validate_config_data("smtp", data)).message == (
        "the config is not JSON: it refers to itself (a circular reference)"
    )


def test_config_error_reads_as_line_column_path_message() -> None:
    error = ConfigError("tls.minVersion", 4, 7, "must be one of: TLSv1.2")

    assert str(error) == "4:7: tls.minVersion: must be one of: TLSv1.2"
    assert str(ConfigError("", 1, 1, "oops")) == "1:1: (root): oops"
    assert error.as_dict() == {
        "path": "tls.minVersion",
        "line": 4,
        "column": 7,
        "message": "must be one of: TLSv1.2",
    }


def test_result_is_ok_only_without_errors() -> None:
    assert validate_config_data("smtp", smtp_config()).ok
    assert not validate_config_data("smtp", smtp_config(port=0)).ok
    assert validate_config_data("smtp", smtp_config(port=0)).data is None


def test_dump_config_is_indented_json_with_a_final_newline() -> None:
    text = dump_config({"fromEmail": "Zoë <zoe@example.com>"})

    assert text == '{\n  "fromEmail": "Zoë <zoe@example.com>"\n}\n'


# Examples and presets ------------------------------------------------------------------------

CASES = [("smtp", None), ("http", None), *(("smtp", key) for key in PRESETS)]


@pytest.mark.parametrize(("kind", "preset"), CASES)
def test_example_configs_are_valid_unchanged(kind: str, preset: str | None) -> None:
    example = example_config(kind, preset)
    result = validate_config_data(kind, copy.deepcopy(example))

    assert result.ok, result.errors
    assert result.notices == []
    assert result.data is not None
    assert_round_trips(kind, result.data)


def schema_fields(node: dict[str, Any], defs: dict[str, Any], prefix: str = "") -> set[str]:
    """Return the dotted names of every field a JSON Schema describes, through its refs."""
    fields: set[str] = set()
    for name, prop in node.get("properties", {}).items():
        fields.add(prefix + name)
        for ref in refs(prop):
            fields |= schema_fields(defs[ref.split("/")[-1]], defs, f"{prefix}{name}.")
    return fields


def refs(prop: dict[str, Any]) -> list[str]:
    """Return the `$ref`s a property schema points to, through anyOf, oneOf and items."""
    found = [prop["$ref"]] if "$ref" in prop else []
    items = [prop["items"]] if isinstance(prop.get("items"), dict) else []
    for branch in [*prop.get("anyOf", []), *prop.get("oneOf", []), *items]:
        found += refs(branch)
    return found


def example_fields(value: Any, prefix: str = "") -> set[str]:
    fields: set[str] = set()
    if isinstance(value, dict):
        for key, item in value.items():
            fields.add(prefix + key)
            if key != "customHeaders":
                fields |= example_fields(item, f"{prefix}{key}.")
    elif isinstance(value, list):
        for item in value:
            fields |= example_fields(item, prefix)
    return fields


# The example shows a password login; the OAuth2 forms and these TLS options have no safe
# example value (a `ca` would replace the trusted authorities).
NOT_IN_EXAMPLE = {"tls.ca", "tls.ciphers", "auth.clientId", "auth.clientSecret",
                  "auth.refreshToken", "auth.accessToken", "auth.expires", "auth.accessUrl",
                  "auth.privateKey", "auth.serviceClient", "auth.privateKey.key",
                  "auth.privateKey.passphrase"}  # fmt: skip


@pytest.mark.parametrize("kind", ["smtp", "http"])
def test_example_config_shows_every_field(kind: str) -> None:
    described = json_schema(kind)
    every = schema_fields(described, described.get("$defs", {}))

    assert every - NOT_IN_EXAMPLE == example_fields(example_config(kind))


@pytest.mark.parametrize("kind", ["smtp", "http"])
def test_examples_have_all_nine_usage_types_in_text_and_html(kind: str) -> None:
    templates = example_config(kind)["templates"]
    default = [t for t in templates if not t.get("locale")]

    assert [t["usageType"] for t in default] == list(USAGE_TYPES)
    assert {t["contentType"] for t in default} == {"text/plain", "text/html"}
    assert all("{{code}}" in t["content"] or "{{link}}" in t["content"] for t in templates)
    assert any("{{link}}" in t["content"] for t in templates)


def test_example_config_text_is_the_indented_example() -> None:
    text = example_config_text("smtp", "gmail")

    assert text.endswith("}\n")
    assert json.loads(text) == example_config("smtp", "gmail")
    assert validate_config("smtp", text).ok


def test_example_with_a_preset_uses_its_server_settings() -> None:
    example = example_config("smtp", "aliyun")

    assert (example["host"], example["port"], example["secure"]) == ("smtpdm.aliyun.com", 465, True)
    assert example["tls"]["servername"] == "smtpdm.aliyun.com"
    assert example_config("smtp", "sendgrid")["auth"]["user"] == "apikey"


def test_example_returns_a_fresh_copy() -> None:
    example_config("smtp")["templates"].clear()

    assert len(example_config("smtp")["templates"]) == 10


@pytest.mark.parametrize(("kind", "preset"), [("sms", None), ("smtp", "yahoo"), ("http", "gmail")])
def test_unknown_kind_or_preset_is_a_value_error(kind: str, preset: str | None) -> None:
    with pytest.raises(ValueError, match=r"unknown preset|unknown connector kind|presets are"):
        example_config(kind, preset)


@pytest.mark.parametrize(
    ("key", "host", "port", "secure", "require_tls", "username"),
    [
        ("gmail", "smtp.gmail.com", 587, False, True, "your full Gmail address"),
        ("sendgrid", "smtp.sendgrid.net", 587, False, True, "apikey"),
        ("aliyun", "smtpdm.aliyun.com", 465, True, False, "the sender address"),
        ("microsoft365", "smtp.office365.com", 587, False, True, "the mailbox's full address"),
        ("ses", "email-smtp.us-east-1.amazonaws.com", 587, False, True, "SES SMTP user name"),
        ("mailgun", "smtp.mailgun.org", 587, False, True, "postmaster@"),
    ],
)
def test_presets_hold_each_providers_settings(
    key: str, host: str, port: int, secure: bool, require_tls: bool, username: str
) -> None:
    preset = PRESETS[key]

    assert (preset.key, preset.host, preset.port, preset.secure) == (key, host, port, secure)
    assert preset.require_tls is require_tls
    assert username in preset.username
    assert preset.label and preset.from_hint
    assert preset.docs_url.startswith("https://")
    assert 2 <= len(re.findall(r"[.!?](?:\s|$)", preset.notes)) <= 4


def test_presets_mention_what_trips_people_up() -> None:
    assert "app password" in PRESETS["gmail"].notes
    assert "Mail Send" in PRESETS["sendgrid"].notes
    assert "smtpdm-ap-southeast-1.aliyun.com" in PRESETS["aliyun"].notes
    assert "OAuth2" in PRESETS["microsoft365"].notes
    assert "sandbox" in PRESETS["ses"].notes and "IAM" in PRESETS["ses"].notes
    assert "smtp.eu.mailgun.org" in PRESETS["mailgun"].notes


# JSON Schema ---------------------------------------------------------------------------------


def model_fields(model: type[Any], prefix: str = "") -> set[str]:
    """Return the dotted Logto names of every field of a model and the models inside it."""
    fields: set[str] = set()
    for name, info in model.model_fields.items():
        alias = info.alias or name
        fields.add(prefix + alias)
        for nested in nested_models(info.annotation):
            fields |= model_fields(nested, f"{prefix}{alias}.")
    return fields


def nested_models(annotation: Any) -> list[type[Any]]:
    from typing import get_args

    from pydantic import BaseModel

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in get_args(annotation) for m in nested_models(arg)]


@pytest.mark.parametrize(
    ("kind", "model"), [("smtp", schema.SmtpConfig), ("http", schema.HttpConfig)]
)
def test_json_schema_describes_every_field(kind: str, model: type[Any]) -> None:
    described = json_schema(kind)

    assert described["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema_fields(described, described.get("$defs", {})) == model_fields(model)
    json.dumps(described)  # it goes to the browser as is


def test_json_schema_has_descriptions_enums_and_defaults() -> None:
    described = json_schema("smtp")
    props, defs = described["properties"], described["$defs"]

    assert all(prop.get("description") for prop in props.values())
    assert all(p.get("description") for d in defs.values() for p in d["properties"].values())
    assert props["connectionTimeout"]["default"] == 120000
    assert props["secure"]["default"] is False
    assert defs["Template"]["properties"]["contentType"]["enum"] == ["text/plain", "text/html"]
    assert defs["Template"]["properties"]["usageType"]["anyOf"][0]["enum"] == list(USAGE_TYPES)
    assert described["required"] == ["host", "port", "fromEmail", "templates"]
    assert described["additionalProperties"] is False


def test_json_schema_allows_the_port_as_a_numeric_string() -> None:
    port = json_schema("smtp")["properties"]["port"]

    assert {"type": "integer", "minimum": 1, "maximum": 65535} in port["anyOf"]
    assert any(branch.get("type") == "string" for branch in port["anyOf"])


def test_json_schema_lets_optional_strings_be_empty() -> None:
    reply_to = json_schema("smtp")["properties"]["replyTo"]

    assert all("minLength" not in branch for branch in reply_to["anyOf"])
    assert json_schema("smtp")["properties"]["host"]["minLength"] == 1
