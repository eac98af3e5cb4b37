from django.apps import AppConfig


class ConnectorsConfig(AppConfig):
    name = "connectors"
    verbose_name = "Email connectors"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the system checks)
