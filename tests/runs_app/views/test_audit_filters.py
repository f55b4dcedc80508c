"""The audit page's filter options (issue 15 §7): each action and object type once."""

from __future__ import annotations

import re

import pytest

from hxo_site.models import AuditEvent

pytestmark = pytest.mark.django_db


def test_the_audit_filters_list_each_action_and_object_type_once(client_for, viewer) -> None:
    for i in range(30):
        AuditEvent.objects.create(
            actor_name="olivia",
            action=("run.apply", "run.abort", "plan.create")[i % 3],
            object_type=("run", "plan")[i % 2],
            object_id=str(i),
        )

    response = client_for(viewer).get("/audit/")

    assert response.status_code == 200
    html = response.content.decode()
    action_select = re.search(r'<select name="action".*?</select>', html, re.S).group(0)
    type_select = re.search(r'<select name="object_type".*?</select>', html, re.S).group(0)
    actions = re.findall(r'<option value="([^"]+)"', action_select)
    types = re.findall(r'<option value="([^"]+)"', type_select)
    assert actions == ["plan.create", "run.abort", "run.apply"]
    assert types == ["plan", "run"]
