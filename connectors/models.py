"""Connectors, their templates and the history of their configs."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from django.conf import settings as conf
from django.db import connections, models, router, transaction
from django.db.models import F
from django.db.models.functions import Lower
from django.db.models.signals import post_delete, post_save, pre_save
from django.dispatch import receiver
from django.utils import timezone

from . import schema
from .secrets import (
    MASK,
    decrypt_secrets,
    encrypt_secrets,
    mask_secrets,
    merge_secrets,
    split_secrets,
)


class MissingSecretError(ValueError):
    """A config keeps a masked secret that the connector does not have stored."""

    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(
            f'{path} is "{MASK}" but no secret is stored for it yet: enter the real value.'
        )


# (database alias, conditional) -> the INSERT statement of Delivery.insert().
_insert_statements: dict[tuple[str, bool], str] = {}
TEXT_FIELDS = frozenset({"CharField", "TextField"})


def placeholders(fields: Sequence[models.Field[Any, Any]], conn: Any, *, cast: bool) -> str:
    """Return the `%s, %s, …` placeholders for a row of values of these fields.

    With `cast`, on PostgreSQL, each non-text value is cast to its column's type: outside an
    INSERT's own VALUES (INSERT … SELECT, a VALUES list in a query) it would be read as text.
    Character columns take text as it is, and keep their length check.
    """
    return ", ".join(
        "%s"
        if not cast or conn.vendor != "postgresql" or f.get_internal_type() in TEXT_FIELDS
        else f"CAST(%s AS {f.cast_db_type(conn)})"
        for f in fields
    )


# Connector pk -> ((pk, updated_at), templates): every template change touches updated_at.
_template_cache: dict[int, tuple[tuple[int, Any], list[dict[str, Any]]]] = {}


class ConnectorKind(models.TextChoices):
    SMTP = "smtp", "SMTP"
    HTTP = "http", "HTTP email"


class UsageType(models.TextChoices):
    # Labelled with Logto's own names, as they appear in configs, templates and API calls.
    REGISTER = "Register", "Register"
    SIGN_IN = "SignIn", "SignIn"
    FORGOT_PASSWORD = "ForgotPassword", "ForgotPassword"
    GENERIC = "Generic", "Generic"
    ORGANIZATION_INVITATION = "OrganizationInvitation", "OrganizationInvitation"
    USER_PERMISSION_VALIDATION = "UserPermissionValidation", "UserPermissionValidation"
    BIND_NEW_IDENTIFIER = "BindNewIdentifier", "BindNewIdentifier"
    MFA_VERIFICATION = "MfaVerification", "MfaVerification"
    BIND_MFA = "BindMfa", "BindMfa"

    @classmethod
    def parse(cls, value: str) -> UsageType:
        """Return the usage type named by value, reading the legacy `Test` as Generic."""
        return cls.GENERIC if value == "Test" else cls(value)


class ContentType(models.TextChoices):
    PLAIN = "text/plain"
    HTML = "text/html"


class ConnectorQuerySet(models.QuerySet["Connector"]):
    def default(self) -> Connector | None:
        """Return the default connector, if any connector exists."""
        return self.filter(is_default=True).first()

    def promote_default(self) -> None:
        """Make a connector the default when none is (enabled ones first, then the oldest)."""
        with transaction.atomic():
            if self.filter(is_default=True).exists():
                return
            successor = self.order_by("-enabled", "created_at", "pk").first()
            if successor is not None:
                self.filter(pk=successor.pk).update(is_default=True)


class Connector(models.Model):
    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=100, unique=True, help_text="How applications pick it.")
    kind = models.CharField(max_length=10, choices=ConnectorKind.choices)
    settings = models.JSONField(
        default=dict, blank=True, help_text="The config without its secrets and templates."
    )
    secrets = models.TextField(blank=True, default="", help_text="Fernet token; never shown.")
    secret_paths_stored = models.JSONField(
        default=list, blank=True, editable=False, help_text="Which secrets are set (names only)."
    )
    enabled = models.BooleanField(default=True)
    is_default = models.BooleanField(default=False, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    updated_by = models.ForeignKey(
        conf.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    last_test_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_test_ok = models.BooleanField(null=True, editable=False)
    last_test_summary = models.CharField(max_length=300, blank=True, default="", editable=False)

    objects = ConnectorQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(
                fields=["is_default"],
                condition=models.Q(is_default=True),
                name="connectors_single_default",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.slug})"

    def __repr__(self) -> str:
        # The default repr is fine too, but this one is sure never to grow a secret.
        return f"<Connector {self.slug!r} kind={self.kind!r}>"

    def save(self, *args: Any, **kwargs: Any) -> None:
        with transaction.atomic():
            if self._state.adding and not Connector.objects.filter(is_default=True).exists():
                self.is_default = True
            super().save(*args, **kwargs)

    def touch(self) -> None:
        """Mark the config as changed, so workers drop what they cached of it."""
        self.updated_at = timezone.now()
        Connector.objects.filter(pk=self.pk).update(updated_at=self.updated_at)

    @transaction.atomic
    def set_default(self) -> None:
        """Make this the one default connector."""
        Connector.objects.filter(is_default=True).exclude(pk=self.pk).update(is_default=False)
        Connector.objects.filter(pk=self.pk).update(is_default=True)
        self.is_default = True

    @property
    def secret_paths(self) -> tuple[str, ...]:
        return schema.SECRET_PATHS[self.kind]

    def template_configs(self) -> list[dict[str, Any]]:
        """Return the templates as config items, cached per config version in this process."""
        key = (self.pk, self.updated_at)
        cached = _template_cache.get(self.pk)
        if cached is None or cached[0] != key:
            cached = (key, [t.as_config() for t in self.templates.all()])
            _template_cache[self.pk] = cached
        return cached[1]

    def secret_values(self) -> dict[str, Any]:
        """Return the decrypted secrets, keyed by path (raises DecryptionError)."""
        return decrypt_secrets(self.secrets)

    def config(self, *, reveal: bool = False) -> dict[str, Any]:
        """Return the connector's Logto-format config; secrets masked unless reveal is set."""
        if reveal:
            public = merge_secrets(self.settings, self.secret_values())
        else:
            # Masking needs no key: a placeholder for every secret that is stored.
            public = merge_secrets(self.settings, dict.fromkeys(self.secret_paths_stored, MASK))
        public["templates"] = [t.as_config() for t in self.templates.all()]
        normalised = schema.validate_config_data(self.kind, public)
        # Re-normalising restores the canonical key order that PostgreSQL's jsonb does not keep.
        return normalised.data if normalised.data is not None else public

    def masked_config(self) -> dict[str, Any]:
        """Return the config as shown anywhere: every secret masked."""
        return self.config()

    def store_access_token(self, access_token: str, expires: int | None) -> None:
        """Keep an OAuth2 access token the transport renewed, without making a new revision."""
        with transaction.atomic():
            fresh = Connector.objects.select_for_update().get(pk=self.pk)
            secret_values = fresh.secret_values()
            secret_values["auth.accessToken"] = access_token
            settings = dict(fresh.settings)
            auth = dict(settings.get("auth") or {})
            if expires:
                auth["expires"] = expires
            settings["auth"] = auth
            # updated_at stays: the config is the same one, only its token is newer.
            Connector.objects.filter(pk=self.pk).update(
                secrets=encrypt_secrets(secret_values),
                secret_paths_stored=sorted(secret_values),
                settings=settings,
            )

    def resolve_masks(self, data: dict[str, Any]) -> dict[str, Any]:
        """Return data with every masked secret replaced by the stored one."""
        stored = self.secret_values() if self.pk else {}
        public, submitted = split_secrets(data, self.secret_paths)
        for path, value in submitted.items():
            if value == MASK:
                if path not in stored:
                    raise MissingSecretError(path)
                submitted[path] = stored[path]
        return merge_secrets(public, submitted)

    @transaction.atomic
    def apply_config(self, data: dict[str, Any], *, user: Any = None, note: str = "") -> None:
        """Store a validated config: settings, encrypted secrets, templates and a revision."""
        data = self.resolve_masks(data)
        public, secret_values = split_secrets(data, self.secret_paths)
        secret_values = {k: v for k, v in secret_values.items() if v not in (None, "")}
        templates = public.pop("templates", []) or []
        self.settings = public
        self.secret_paths_stored = sorted(secret_values)
        self.secrets = encrypt_secrets(secret_values)
        self.updated_by = user if getattr(user, "pk", None) else None
        self.save()
        self._replace_templates(templates)
        ConnectorRevision.objects.create(
            connector=self,
            number=self.revisions.count() + 1,
            config=mask_secrets(data, self.secret_paths),
            created_by=self.updated_by,
            note=note,
        )

    def _replace_templates(self, templates: list[dict[str, Any]]) -> None:
        keep = []
        for position, item in enumerate(templates):
            template, _ = Template.objects.update_or_create(
                connector=self,
                usage_type=UsageType.parse(item["usageType"]),
                locale=item.get("locale") or "",
                defaults={
                    "subject": item["subject"],
                    "content": item["content"],
                    "content_type": item["contentType"],
                    "reply_to": item.get("replyTo") or "",
                    "send_from": item.get("sendFrom") or "",
                    "position": position,
                },
            )
            keep.append(template.pk)
        self.templates.exclude(pk__in=keep).delete()


@receiver(post_delete, sender=Connector)
def _keep_a_default(sender: type[Connector], instance: Connector, **kwargs: Any) -> None:
    if instance.is_default:
        transaction.on_commit(Connector.objects.promote_default)


class Template(models.Model):
    connector = models.ForeignKey(Connector, on_delete=models.CASCADE, related_name="templates")
    usage_type = models.CharField(max_length=40, choices=UsageType.choices)
    locale = models.CharField(
        max_length=35,
        blank=True,
        default="",
        help_text='BCP 47 tag such as "fr-CA"; blank = default.',
    )
    subject = models.CharField(max_length=998)
    content = models.TextField()
    content_type = models.CharField(
        max_length=20, choices=ContentType.choices, default=ContentType.PLAIN
    )
    reply_to = models.CharField(max_length=320, blank=True, default="")
    send_from = models.CharField(max_length=320, blank=True, default="")
    position = models.PositiveIntegerField(default=0, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["position", "pk"]
        constraints = [
            models.UniqueConstraint(
                fields=["connector", "usage_type", "locale"], name="connectors_template_unique"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.usage_type} ({self.locale or 'default'})"

    def save(self, *args: Any, **kwargs: Any) -> None:
        super().save(*args, **kwargs)
        self.connector.touch()

    def as_config(self) -> dict[str, Any]:
        """Return the template as an item of a Logto config's `templates`."""
        item: dict[str, Any] = {
            "usageType": self.usage_type,
            "contentType": self.content_type,
            "subject": self.subject,
            "content": self.content,
        }
        for key, value in (
            ("replyTo", self.reply_to),
            ("sendFrom", self.send_from),
            ("locale", self.locale),
        ):
            if value:
                item[key] = value
        return item


@receiver(post_delete, sender=Template)
def _template_deleted(sender: type[Template], instance: Template, **kwargs: Any) -> None:
    # Bulk deletes too: caches keyed on the connector's updated_at must see the change.
    Connector.objects.filter(pk=instance.connector_id).update(updated_at=timezone.now())


class ConnectorRevision(models.Model):
    connector = models.ForeignKey(Connector, on_delete=models.CASCADE, related_name="revisions")
    number = models.PositiveIntegerField()
    config = models.JSONField(help_text="The saved config, secrets masked.")
    created_by = models.ForeignKey(
        conf.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    note = models.CharField(max_length=200, blank=True, default="")

    class Meta:
        ordering = ["connector", "-number"]
        constraints = [
            models.UniqueConstraint(
                fields=["connector", "number"], name="connectors_revision_unique"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.connector.slug} r{self.number}"


class DeliveryStatus(models.TextChoices):
    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"


class DeliverySource(models.TextChoices):
    PYTHON = "python", "Python API"
    MAIL = "mail", "Django mail backend"
    API = "api", "HTTP API"
    TEST = "test", "Send test"


class DeliveryQuerySet(models.QuerySet["Delivery"]):
    def due(self, now: Any) -> DeliveryQuerySet:
        """Return deliveries ready for an attempt: queued and due, or sending past its lease.

        A test past its lease is not: it is sent once, while someone waits, and `recover()`
        marks it failed.
        """
        return self.filter(
            models.Q(status=DeliveryStatus.QUEUED, next_attempt_at__lte=now)
            | (
                models.Q(status=DeliveryStatus.SENDING, lease_expires_at__lt=now)
                & ~models.Q(source=DeliverySource.TEST)
            )
        )

    def pending(self) -> DeliveryQuerySet:
        return self.filter(status__in=[DeliveryStatus.QUEUED, DeliveryStatus.SENDING])


class Delivery(models.Model):
    """One message accepted for sending: the outbox row while pending, the log entry after."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    connector = models.ForeignKey(
        Connector, null=True, on_delete=models.SET_NULL, related_name="deliveries"
    )
    connector_slug = models.CharField(max_length=100, help_text="Kept when the connector goes.")
    to = models.CharField(max_length=320)
    usage_type = models.CharField(max_length=40, choices=UsageType.choices)
    locale = models.CharField(max_length=35, blank=True, default="")
    payload = models.JSONField(default=dict, blank=True, help_text="One-time values redacted.")
    sealed = models.TextField(
        blank=True, default="", help_text="Encrypted full payload while pending; empty after."
    )
    status = models.CharField(
        max_length=10, choices=DeliveryStatus.choices, default=DeliveryStatus.QUEUED
    )
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    lease_owner = models.CharField(max_length=64, blank=True, default="")
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    idempotency_key = models.CharField(max_length=200, blank=True, default="")
    source = models.CharField(max_length=10, choices=DeliverySource.choices)
    source_detail = models.CharField(max_length=200, blank=True, default="")
    api_token = models.ForeignKey(
        "ApiToken", null=True, blank=True, on_delete=models.SET_NULL, related_name="deliveries"
    )
    ip = models.GenericIPAddressField(null=True, blank=True)
    error = models.TextField(blank=True, default="")
    hint = models.TextField(blank=True, default="")
    error_code = models.IntegerField(null=True, blank=True)
    server_reply = models.TextField(blank=True, default="")
    message_id = models.CharField(max_length=300, blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    objects = DeliveryQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "deliveries"
        indexes = [
            models.Index(fields=["status", "next_attempt_at"], name="delivery_due"),
            # The per-recipient rate limit counts case-insensitively.
            models.Index(Lower("to"), F("created_at"), name="delivery_recipient"),
            # The HTTP API finds an Idempotency-Key's delivery whatever the connector, to answer
            # 409 when the same key comes with another body (connectors/api.py).
            models.Index(
                fields=["idempotency_key"],
                condition=~models.Q(idempotency_key=""),
                name="delivery_idempotency_lookup",
            ),
        ]
        constraints = [
            # Two concurrent requests with one key cannot both insert; see Delivery.objects.
            models.UniqueConstraint(
                fields=["connector_slug", "idempotency_key"],
                condition=~models.Q(idempotency_key=""),
                name="delivery_idempotency_key",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.usage_type} to {self.to} ({self.status})"

    def insert(self, *, only_if: str = "", params: Sequence[Any] = ()) -> bool:
        """Store this new delivery with one INSERT, as save(force_insert=True) would.

        The statement is built once per database rather than on every message, which is most
        of what save() costs on the accept path. With `only_if` (SQL with `params`), the row is
        stored only if that condition holds, in the same statement; return whether it was.
        While anything listens to Delivery's save signals, or a field needs SQL of its own,
        this is save(force_insert=True) itself, and a conditional insert stores nothing.
        """
        using = router.db_for_write(Delivery, instance=self)
        fields = Delivery._meta.local_concrete_fields
        if (
            pre_save.has_listeners(Delivery)
            or post_save.has_listeners(Delivery)
            or any(hasattr(f, "get_placeholder_sql") for f in fields)
        ):
            if only_if:
                return False
            self.save(force_insert=True, using=using)
            return True
        conn = connections[using]
        key = (using, bool(only_if))
        sql = _insert_statements.get(key)
        if sql is None:
            table = conn.ops.quote_name(Delivery._meta.db_table)
            columns = ", ".join(conn.ops.quote_name(f.column) for f in fields)
            values = placeholders(fields, conn, cast=bool(only_if))
            sql = _insert_statements[key] = (
                f"INSERT INTO {table} ({columns}) SELECT {values} WHERE "
                if only_if
                else f"INSERT INTO {table} ({columns}) VALUES ({values})"  # noqa: S608 (our names)
            )
        values = [f.get_db_prep_save(f.pre_save(self, True), conn) for f in fields]
        with transaction.mark_for_rollback_on_error(using), conn.cursor() as cursor:
            if only_if:
                cursor.execute(sql + only_if, [*values, *params])
                if cursor.rowcount != 1:
                    return False
            else:
                cursor.execute(sql, values)
        self._state.adding = False
        self._state.db = using
        return True

    @property
    def is_final(self) -> bool:
        return self.status in (DeliveryStatus.SENT, DeliveryStatus.FAILED)


class DeliveryAttempt(models.Model):
    class Outcome(models.TextChoices):
        SENT = "sent"
        RETRY = "retry", "transient failure"
        FAILED = "failed", "permanent failure"

    delivery = models.ForeignKey(Delivery, on_delete=models.CASCADE, related_name="attempt_log")
    number = models.PositiveIntegerField()
    started_at = models.DateTimeField()
    elapsed_ms = models.PositiveIntegerField(default=0)
    outcome = models.CharField(max_length=10, choices=Outcome.choices)
    error = models.TextField(blank=True, default="")
    hint = models.TextField(blank=True, default="")
    code = models.IntegerField(null=True, blank=True)
    server_reply = models.TextField(blank=True, default="")
    worker = models.CharField(max_length=64, blank=True, default="")

    class Meta:
        ordering = ["delivery", "number"]

    def __str__(self) -> str:
        return f"attempt {self.number}: {self.outcome}"


class ApiTokenQuerySet(models.QuerySet["ApiToken"]):
    def active(self) -> ApiTokenQuerySet:
        return self.filter(revoked_at__isnull=True)


class ApiToken(models.Model):
    """A credential for the HTTP API. Only a hash of the token is kept."""

    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, db_index=True, help_text="Shown to tell tokens apart.")
    token_hash = models.CharField(max_length=128, unique=True)
    connectors = models.ManyToManyField(
        Connector,
        blank=True,
        related_name="api_tokens",
        help_text="The connectors it may send through; none means all.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(
        conf.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    # The HTTP API's per-token rate limit: requests counted in the current fixed window.
    rate_window = models.BigIntegerField(default=0, editable=False)
    rate_count = models.PositiveIntegerField(default=0, editable=False)

    objects = ApiTokenQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        verbose_name = "API token"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"
