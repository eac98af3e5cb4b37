from django.contrib import admin
from django.urls import include, path

from connectors import api

urlpatterns = [
    # Before the console, which is mounted at the root and would answer these paths with HTML.
    path("api/", include("connectors.api")),
    path("healthz", api.healthz, name="healthz"),
    path("", admin.site.urls),
]

# Errors raised before a view runs (a bad Host header, a failing middleware): JSON under /api/
# and /healthz, Django's usual pages elsewhere.
handler400 = "connectors.api.bad_request"
handler500 = "connectors.api.server_error"
