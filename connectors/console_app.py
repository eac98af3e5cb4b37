"""The admin app configured so that its default site is the console (`connectors.site`)."""

from __future__ import annotations

from django.contrib.admin.apps import AdminConfig
from django.db.models.signals import post_migrate


class ConsoleAdminConfig(AdminConfig):
    # Everything registered on `admin.site` (ours, auth's, django-tasks-db's) lands on the console.
    default_site = "connectors.site.ConsoleSite"

    def ready(self) -> None:
        super().ready()
        from .roles import create_roles

        post_migrate.connect(create_roles, dispatch_uid="connectors.roles.create_roles")
