from __future__ import annotations

from django.apps import AppConfig


class HxoSiteConfig(AppConfig):
    """The site's plumbing, shared by both apps: the audit log, refusals and the API's error
    shape, capabilities and roles, authentication, throttles, middleware and the JSON parser.

    It imports neither `blueprints_app` nor `runs_app` (they import it), so it is listed first.
    """

    name = "hxo_site"
    verbose_name = "HXO site"
