"""Notifications: outgoing webhooks (HXO JSON, Slack, Microsoft Teams) and email, sent from a
transactional outbox. Knows nothing of runs: `runs_app.notifications` builds the payloads and
calls `notify_app.outbox.emit` inside the transaction that moves a run."""
