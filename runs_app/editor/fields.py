"""JSON Schema → the editor's form fields: one `Field` per property of a partitioner's params
schema, its widget chosen from the property's type and `x-hxo-widget`, its value the stage's."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from django.conf import settings

from blueprints_app.validation import Issue


def slug(path: str) -> str:
    """A DOM id fragment for a field path (`stages[0].params.x` → `stages-0-params-x`)."""
    return re.sub(r"[^A-Za-z0-9_]+", "-", path).strip("-")


@dataclasses.dataclass
class Field:
    """One input of the editor (or a fieldset of them: `children`), with the issues placed
    at its path."""

    path: str
    type: str  # the posted suffix: how the value is parsed back
    widget: str  # text, textarea, number, select, checkbox, checkboxes, fieldset
    label: str
    help: str = ""
    value: Any = ""
    options: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    required: bool = False
    placeholder: str = ""
    minimum: Any = None
    maximum: Any = None
    step: str = ""
    rows: int = 3
    children: list[Field] = dataclasses.field(default_factory=list)
    errors: list[Issue] = dataclasses.field(default_factory=list)
    warnings: list[Issue] = dataclasses.field(default_factory=list)
    css: str = ""

    @property
    def name(self) -> str:
        return f"{self.path}:{self.type}"

    @property
    def dom_id(self) -> str:
        return "f-" + slug(self.path)

    @property
    def err_id(self) -> str:
        return "err-" + slug(self.path)

    @property
    def help_id(self) -> str:
        return "help-" + slug(self.path)

    def walk(self) -> Iterable[Field]:
        yield self
        for child in self.children:
            yield from child.walk()


def _label(name: str, prop: Mapping[str, Any]) -> str:
    return str(prop.get("title") or name.replace("_", " ").capitalize())


def display(value: Any) -> str:
    """A value as an input shows it: JSON for objects and lists, `true`/`false`, "" for None."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value, indent=2)
    return str(value)


def _choices(names: Iterable[str], current: Any, default: Any) -> list[tuple[str, str]]:
    options = [("", f"Default ({default})" if default not in (None, "") else "— choose —")]
    names = list(names)
    options += [(n, n) for n in names]
    if current not in (None, "") and str(current) not in names:
        options.append((str(current), f"{current} (not registered)"))
    return options


def _constraints(prop: Mapping[str, Any]) -> str:
    bits = []
    if "minimum" in prop and "maximum" in prop:
        bits.append(f"{prop['minimum']} to {prop['maximum']}")
    elif "minimum" in prop:
        bits.append(f"at least {prop['minimum']}")
    elif "maximum" in prop:
        bits.append(f"at most {prop['maximum']}")
    if "default" in prop and not isinstance(prop["default"], (dict, list)):
        bits.append(f"default {display(prop['default'])}")
    return "; ".join(bits)


def schema_fields(schema: Mapping[str, Any], values: Mapping[str, Any], prefix: str) -> list[Field]:
    """Form fields for the properties of a JSON Schema object, values filled in."""
    required = set(schema.get("required") or [])
    fields = []
    for name, prop in (schema.get("properties") or {}).items():
        if not isinstance(prop, dict):
            continue
        path = f"{prefix}.{name}"
        value = values.get(name)
        default = prop.get("default")
        description = str(prop.get("description") or "").strip()
        limits = _constraints(prop)
        help_text = f"{description} ({limits})" if description and limits else description or limits
        base = {
            "path": path,
            "label": _label(name, prop),
            "help": help_text,
            "required": name in required,
        }
        widget = prop.get("x-hxo-widget")
        typ = prop.get("type")
        if widget in ("workspace", "target"):
            names = (
                settings.HXO_WORKSPACES if widget == "workspace" else settings.HXO_DATABASE_TARGETS
            )
            fields.append(
                Field(
                    **base,
                    type="string",
                    widget="select",
                    value=display(value),
                    options=_choices(sorted(names), value, default),
                )
            )
        elif "enum" in prop and typ in (None, "string", "integer"):
            fields.append(
                Field(
                    **base,
                    type="integer" if typ == "integer" else "string",
                    widget="select",
                    value=display(value),
                    options=_choices([str(e) for e in prop["enum"]], value, default),
                )
            )
        elif typ == "boolean":
            checked = value if isinstance(value, bool) else bool(default)
            fields.append(Field(**base, type="boolean", widget="checkbox", value=checked))
        elif typ in ("integer", "number"):
            fields.append(
                Field(
                    **base,
                    type=typ,
                    widget="number",
                    value=display(value),
                    placeholder=display(default),
                    minimum=prop.get("minimum"),
                    maximum=prop.get("maximum"),
                    step="1" if typ == "integer" else "any",
                )
            )
        elif typ == "string" and widget == "sql":
            fields.append(
                Field(
                    **base, type="raw", widget="textarea", value=display(value), rows=4, css="mono"
                )
            )
        elif typ == "string":
            fields.append(
                Field(
                    **base,
                    type="string",
                    widget="text",
                    value=display(value),
                    placeholder=display(default),
                )
            )
        elif typ == "array" and (prop.get("items") or {}).get("type") == "string":
            blocks = widget == "sql-list"
            items = value if isinstance(value, list) else []
            joiner = "\n\n" if blocks else "\n"
            shown = (
                joiner.join(str(v) for v in items) if isinstance(value, list) else display(value)
            )
            hint = (
                "One statement per paragraph: separate statements with a blank line."
                if blocks
                else "One per line."
            )
            fields.append(
                Field(
                    **{**base, "help": f"{base['help']} {hint}".strip()},
                    type="blocks" if blocks else "lines",
                    widget="textarea",
                    value=shown,
                    rows=min(max(shown.count("\n") + 2, 6 if blocks else 3), 16),
                    css="mono",
                )
            )
        elif typ == "object" and isinstance(prop.get("properties"), dict):
            inner = value if isinstance(value, dict) else {}
            fields.append(
                Field(
                    **base,
                    type="object",
                    widget="fieldset",
                    children=schema_fields(prop, inner, path),
                )
            )
        else:
            fields.append(
                Field(
                    **{**base, "help": f"{base['help']} As JSON.".strip()},
                    type="json",
                    widget="textarea",
                    value=display(value),
                    css="mono",
                )
            )
    return fields
