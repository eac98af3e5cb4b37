"""The console's roles: Viewer and Editor groups (superusers hold every permission already)."""

from __future__ import annotations

from typing import Any

from django.apps import apps as global_apps
from django.db import DEFAULT_DB_ALIAS

VIEWER = "Viewer"
EDITOR = "Editor"

# Codenames in the connectors app. Templates and revisions are parts of a connector's config, so
# the console checks the connector's permissions for them; the template ones are granted to match.
VIEWER_PERMISSIONS = (
    "view_connector",
    "view_template",
    "view_connectorrevision",
    "view_delivery",
    "view_deliveryattempt",
)
EDITOR_PERMISSIONS = (
    *VIEWER_PERMISSIONS,
    "add_connector",
    "change_connector",
    "delete_connector",
    "add_template",
    "change_template",
    "delete_template",
    "change_delivery",  # retry a delivery
)
ROLES = {VIEWER: VIEWER_PERMISSIONS, EDITOR: EDITOR_PERMISSIONS}


def create_roles(
    sender: Any = None, *, using: str = DEFAULT_DB_ALIAS, apps: Any = global_apps, **kwargs: Any
) -> None:
    """Create or update the Viewer and Editor groups with exactly their permissions."""
    if getattr(sender, "name", "connectors") != "connectors":
        return  # post_migrate fires once per app; the connectors app's turn is the one we need
    from django.contrib.auth.management import create_permissions
    from django.contrib.contenttypes.management import create_contenttypes

    try:
        Group = apps.get_model("auth", "Group")
        Permission = apps.get_model("auth", "Permission")
    except LookupError:
        return  # migrating to a state without these apps (e.g. zero)
    connectors_app = sender or global_apps.get_app_config("connectors")
    # The auth app makes permissions in its own post_migrate handler, which may run after this one.
    create_contenttypes(connectors_app, verbosity=0, using=using, apps=apps)
    create_permissions(connectors_app, verbosity=0, using=using, apps=apps)
    for name, codenames in ROLES.items():
        group, _ = Group.objects.using(using).get_or_create(name=name)
        permissions = Permission.objects.using(using).filter(
            content_type__app_label="connectors", codename__in=codenames
        )
        group.permissions.set(permissions)
