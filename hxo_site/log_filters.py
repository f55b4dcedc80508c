"""Logging filters for the site's processes (configured in settings.LOGGING)."""

from __future__ import annotations

import logging

from django.core.signing import BadSignature


class BadSignatureHint(logging.Filter):
    """Turn django-q2's traceback for a task it cannot verify into one error that says why.

    django-q2 signs every queued task with SECRET_KEY; a worker whose key differs from the
    process that queued the task (a CLI run with another SECRET_KEY, a host with a stale
    environment) logs "Failed to push task to queue" with a BadSignature traceback and drops
    the task. This filter rewrites that record in place (level ERROR, no traceback) to name the
    two settings that must agree: SECRET_KEY and HXO_CLUSTER_NAME (the queue's name). Other
    records pass unchanged. Always returns True: it annotates, it never drops.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, BadSignature):
            from django.conf import settings

            cluster = settings.Q_CLUSTER.get("name", "")
            record.msg = (
                "dropped a task that this worker cannot verify (%s): the process that queued it "
                "signs with another SECRET_KEY. Every web server, worker and CLI of cluster "
                "HXO_CLUSTER_NAME=%r must share one SECRET_KEY (in development, the .env that "
                "`make setup` writes)."
            )
            record.args = (exc, cluster)
            record.levelno, record.levelname = logging.ERROR, "ERROR"
            record.exc_info = record.exc_text = None
        return True
