"""Create the demo administrator and a demo connector, and print how to log in."""

from __future__ import annotations

import secrets
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from connectors import schema
from connectors.models import Connector

DEMO_USERNAME = "admin"


class Command(BaseCommand):
    help = "Create a demo administrator (password printed) and a demo SMTP connector, once."

    def handle(self, *args: Any, **options: Any) -> None:
        password_file = settings.LOCAL_DIR / "demo-admin-password"
        User = get_user_model()
        user = User.objects.filter(username=DEMO_USERNAME).first()
        if user is None:
            password = secrets.token_urlsafe(12)
            user = User.objects.create_superuser(DEMO_USERNAME, "admin@example.test", password)
            settings.LOCAL_DIR.mkdir(exist_ok=True)
            password_file.write_text(password + "\n")
            password_file.chmod(0o600)
        if not Connector.objects.filter(slug="demo").exists():
            config = schema.example_config("smtp")
            config.update(
                host="127.0.0.1",
                port=1025,
                secure=False,
                ignoreTLS=True,
                fromEmail="Connector Console <no-reply@example.test>",
            )
            for key in ("auth", "requireTLS", "tls", "servername", "localAddress"):
                config.pop(key, None)
            result = schema.validate_config_data("smtp", config)
            if result.ok and result.data is not None:
                demo = Connector(slug="demo", name="Demo (local mail catcher)", kind="smtp")
                demo.apply_config(result.data, user=user, note="demo data")
        if password_file.exists():
            credentials = f"user {DEMO_USERNAME!r}, password {password_file.read_text().strip()!r}"
        else:
            credentials = (
                f"user {DEMO_USERNAME!r} (its password was set elsewhere; reset it with "
                f"`python manage.py changepassword {DEMO_USERNAME}`)"
            )
        self.stdout.write(f"Demo administrator: {credentials}")
