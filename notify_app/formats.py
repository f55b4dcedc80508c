"""The bodies a webhook receives, by format: HXO's own JSON, a Slack incoming-webhook message
(`text` + Block Kit `blocks`) or a Microsoft Teams message carrying an Adaptive Card (what
Teams' Workflows "post to a channel when a webhook request is received" accepts; the retired
Office 365 connectors accepted it too).

Shapes from the vendors' documentation: Slack "Sending messages using incoming webhooks" and
Block Kit (`header`, `section` with `fields`, `context`; mrkdwn links `<url|text>`); Teams
"Create Incoming Webhooks" / Adaptive Cards 1.4 (`TextBlock`, `FactSet`, `Action.OpenUrl`).
"""

from __future__ import annotations

import json
from typing import Any

from notify_app.models import Event

TITLES = {
    "run.awaiting_approval": "Dry-run {id} of {plan} is waiting for approval",
    "run.approved": "Dry-run {id} of {plan} was approved",
    "run.rejected": "Dry-run {id} of {plan} was rejected",
    "run.failed": "{mode} {id} of {plan} failed",
    "run.succeeded": "{mode} {id} of {plan} succeeded",
    "slo.breached": "Stage {stage} of run {id} ({plan}) breached its SLO",
}
COLOURS = {  # Teams' container styles / a hint in Slack's emoji
    "run.awaiting_approval": ("warning", ":hourglass:"),
    "run.approved": ("good", ":white_check_mark:"),
    "run.rejected": ("attention", ":no_entry:"),
    "run.failed": ("attention", ":x:"),
    "run.succeeded": ("good", ":white_check_mark:"),
    "slo.breached": ("warning", ":warning:"),
}


def hxo_body(event: Event) -> dict[str, Any]:
    """HXO's JSON: `{"id", "event", "created_at", "data": {"run": {...}, "stage"?: {...}}}`."""
    return {
        "id": str(event.id),
        "event": event.name,
        "created_at": event.created_at.isoformat(),
        "data": event.payload,
    }


def title(event: Event) -> str:
    """One line saying what happened, e.g. "Dry-run 12 of nightly is waiting for approval"."""
    run = event.payload.get("run", {})
    stage = event.payload.get("stage", {})
    mode = "Dry-run" if run.get("mode") == "dry_run" else "Apply"
    template = TITLES.get(event.name, event.name + " (run {id})")
    return template.format(
        id=run.get("id", "?"),
        plan=(run.get("plan") or {}).get("name", "?"),
        mode=mode,
        stage=stage.get("id", "?"),
    )


def facts(event: Event) -> list[tuple[str, str]]:
    """(label, value) pairs shown under the title in every chat format and in the email."""
    run = event.payload.get("run", {})
    out = [
        ("Plan", f"{(run.get('plan') or {}).get('name', '?')} (revision {run.get('revision')})"),
        ("Kinds", ", ".join(run.get("kinds") or []) or "-"),
        ("Requested by", run.get("requested_by") or "-"),
        ("State", str(run.get("state", "?"))),
        ("Digest", str(run.get("digest", ""))[:12] or "-"),
    ]
    if event.name == "run.awaiting_approval":
        out.append(("Approvals needed", str(run.get("required_approvals", 1))))
    decided = [a for a in run.get("approvals") or [] if a.get("decision")]
    if event.name in {"run.approved", "run.rejected"} and decided:
        out.append(("Decided by", ", ".join(a["user"] for a in decided)))
    stage = event.payload.get("stage")
    if stage:
        out.append(("Elapsed", f"{stage.get('elapsed_ms')} ms of {stage.get('slo_ms')} ms"))
    return out


def slack_body(event: Event) -> dict[str, Any]:
    """A Slack incoming-webhook message: `text` (the notification and screen-reader fallback)
    and `blocks` (header, fields, a link to the run)."""
    run = event.payload.get("run", {})
    _, emoji = COLOURS.get(event.name, ("default", ":bell:"))
    heading = title(event)
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": heading[:150]}},
        {
            "type": "section",
            "fields": [
                {"type": "mrkdwn", "text": f"*{label}:*\n{_slack_escape(value)}"}
                for label, value in facts(event)[:10]  # Slack allows 10 fields
            ],
        },
    ]
    if run.get("url"):
        blocks.append(
            {
                "type": "section",
                "text": {"type": "mrkdwn", "text": f"<{run['url']}|Open run {run.get('id')}>"},
            }
        )
    blocks.append(
        {"type": "context", "elements": [{"type": "mrkdwn", "text": f"HXO · `{event.name}`"}]}
    )
    return {"text": f"{emoji} {_slack_escape(heading)}", "blocks": blocks}


def teams_body(event: Event) -> dict[str, Any]:
    """A Teams message with one Adaptive Card attachment: a title, a FactSet, a link button."""
    run = event.payload.get("run", {})
    style, _ = COLOURS.get(event.name, ("default", ""))
    card: dict[str, Any] = {
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "body": [
            {
                "type": "Container",
                "style": style,
                "items": [
                    {
                        "type": "TextBlock",
                        "text": title(event),
                        "weight": "Bolder",
                        "size": "Medium",
                        "wrap": True,
                    }
                ],
            },
            {
                "type": "FactSet",
                "facts": [{"title": label, "value": value} for label, value in facts(event)],
            },
        ],
    }
    if run.get("url"):
        card["actions"] = [{"type": "Action.OpenUrl", "title": "Open run", "url": run["url"]}]
    return {
        "type": "message",
        "summary": title(event),
        "attachments": [
            {
                "contentType": "application/vnd.microsoft.card.adaptive",
                "contentUrl": None,
                "content": card,
            }
        ],
    }


RENDERERS = {"hxo": hxo_body, "slack": slack_body, "teams": teams_body}


def render(event: Event, fmt: str) -> bytes:
    """The UTF-8 JSON body of `event` in format `fmt` (`hxo`, `slack`, `teams`); KeyError on
    another format. Canonical separators: the bytes signed are the bytes sent."""
    body = RENDERERS[fmt](event)
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode()


def _slack_escape(text: str) -> str:
    # Slack's mrkdwn treats &, < and > as control characters.
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
