"""`manage.py connectors`: import, export, list, show, as the DESIGN's contract says."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from connectors import schema
from connectors.models import Connector, ConnectorRevision
from connectors.secrets import mask_secrets

from .conftest import SMTP_PASSWORD

pytestmark = pytest.mark.django_db
FIXTURES = sorted((Path(__file__).parent / "fixtures").glob("logto_*.json"))


def run(*args: str, stdin: bytes | None = None, monkeypatch=None) -> tuple[str, str]:
    """Run the connectors command; return (stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
    call_command("connectors", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def write(tmp_path: Path, config: dict | str) -> str:
    path = tmp_path / "config.json"
    path.write_text(config if isinstance(config, str) else json.dumps(config, indent=2))
    return str(path)


@pytest.mark.parametrize("fixture", FIXTURES, ids=[f.stem for f in FIXTURES])
def test_logto_examples_import_and_export_round_trip(tmp_path, fixture):
    kind = "http" if "http" in fixture.stem else "smtp"
    out, _ = run("import", "example", str(fixture))
    assert f"Created {kind} connector example" in out

    exported, _ = run("export", "example")
    expected = schema.validate_config(kind, fixture.read_bytes()).data
    assert json.loads(exported) == mask_secrets(expected, schema.SECRET_PATHS[kind])
    assert list(json.loads(exported)) == list(expected)  # the canonical key order too

    # The export re-imports unchanged, secrets kept through their mask.
    secrets_before = Connector.objects.get(slug="example").secret_values()
    run("import", "example", write(tmp_path, exported))
    again, _ = run("export", "example")
    assert again == exported
    assert Connector.objects.get(slug="example").secret_values() == secrets_before


def test_export_masks_secrets(smtp_connector):
    out, _ = run("export", smtp_connector.slug)
    assert SMTP_PASSWORD not in out
    assert json.loads(out)["auth"]["pass"] == schema.MASK


def test_export_shows_defaults(smtp_connector):
    config = json.loads(run("export", smtp_connector.slug)[0])
    assert config["secure"] is False
    assert config["connectionTimeout"] > 0 and config["socketTimeout"] > 0


def test_import_reads_standard_input(monkeypatch, smtp_config):
    out, _ = run(
        "import", "piped", "-", stdin=json.dumps(smtp_config).encode(), monkeypatch=monkeypatch
    )
    assert "Created smtp connector piped" in out
    assert Connector.objects.get(slug="piped").secret_values() == {"auth.pass": SMTP_PASSWORD}


def test_import_guesses_http_kind(tmp_path, http_config):
    run("import", "hook", write(tmp_path, http_config))
    assert Connector.objects.get(slug="hook").kind == "http"


def test_invalid_import_prints_located_errors_and_changes_nothing(tmp_path, smtp_connector):
    before = (smtp_connector.settings, smtp_connector.secrets, ConnectorRevision.objects.count())
    text = (
        '{\n  "host": "smtp.example.test",\n  "port": "not a port",\n'
        '  "fromEmial": "x@example.test"\n}\n'
    )
    with pytest.raises(CommandError, match="nothing was changed") as caught:
        run("import", smtp_connector.slug, write(tmp_path, text))
    assert caught.value.returncode == 1
    smtp_connector.refresh_from_db()
    assert (
        smtp_connector.settings,
        smtp_connector.secrets,
        ConnectorRevision.objects.count(),
    ) == before


def test_errors_are_printed_as_line_column_path_message(tmp_path, capsys):
    text = '{\n  "host": "smtp.example.test",\n  "port": 587,\n  "fromEmial": "x@example.test"\n}\n'
    err = io.StringIO()
    with pytest.raises(CommandError):
        call_command("connectors", "import", "broken", write(tmp_path, text), stderr=err)
    lines = err.getvalue().splitlines()
    assert any(line.startswith("4:3: fromEmial: ") and "fromEmail" in line for line in lines)
    assert not Connector.objects.filter(slug="broken").exists()


def test_invalid_json_gives_line_and_column(tmp_path):
    err = io.StringIO()
    with pytest.raises(CommandError):
        call_command(
            "connectors", "import", "broken", write(tmp_path, '{\n  "host": ,\n}'), stderr=err
        )
    assert err.getvalue().startswith("2:11: ")


def test_masked_secret_on_a_new_connector_is_a_located_error(tmp_path, smtp_config):
    smtp_config["auth"]["pass"] = schema.MASK
    err = io.StringIO()
    with pytest.raises(CommandError):
        call_command("connectors", "import", "new", write(tmp_path, smtp_config), stderr=err)
    assert ": auth.pass: " in err.getvalue()
    assert not Connector.objects.filter(slug="new").exists()


def test_import_refuses_to_change_kind(tmp_path, smtp_connector, http_config):
    with pytest.raises(CommandError, match="cannot become http"):
        run("import", smtp_connector.slug, write(tmp_path, http_config), "--kind", "http")


def test_unreadable_file_is_a_clear_error():
    with pytest.raises(CommandError, match=r"Cannot read /nonexistent\.json"):
        run("import", "x", "/nonexistent.json")


def test_unknown_slug_names_the_known_ones(smtp_connector):
    with pytest.raises(CommandError, match="known: smtp-main"):
        run("export", "nope")


def test_list_and_show(smtp_connector, http_connector):
    out, _ = run("list")
    assert "smtp-main" in out and "http-hook" in out
    shown, _ = run("show", "smtp-main")
    assert "templates: 4" in shown and SMTP_PASSWORD not in shown


def test_import_records_a_revision(tmp_path, smtp_config):
    run("import", "rev", write(tmp_path, smtp_config))
    run("import", "rev", write(tmp_path, smtp_config))
    numbers = list(Connector.objects.get(slug="rev").revisions.values_list("number", flat=True))
    assert numbers == [2, 1]


def test_a_malformed_encryption_key_is_a_message_not_a_traceback(tmp_path, settings, smtp_config):
    settings.CONNECTOR_ENCRYPTION_KEYS = ["notakey"]
    with pytest.raises(CommandError, match="not a Fernet key"):
        run("import", "mail", write(tmp_path, smtp_config))
    assert not Connector.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_a_failed_test_prints_the_error_and_its_hint_once(caplog):
    from .servers import SmtpServer
    from .test_delivery import connector_for

    err = io.StringIO()
    with SmtpServer() as server:
        connector_for(server)
        server.fail_next("RCPT", 550, "5.7.1 Relaying denied")
        with pytest.raises(CommandError, match="was not sent"):
            call_command("connectors", "test", "sink", "--to", "ada@example.test", stderr=err)

    failed, hint = err.getvalue().splitlines()
    assert not [r for r in caplog.records if r.name == "connectors.delivery"]  # not logged too
    assert failed.startswith("Failed: ") and "5.7.1 Relaying denied" in failed
    assert hint.startswith("Hint: ") and hint[len("Hint: ") :] not in failed
