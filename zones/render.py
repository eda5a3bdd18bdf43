"""Renderers: zones as BIND zone-file snippets, octoDNS YAML, or JSON.

BIND and octoDNS text comes from the jinja2 templates in `zones/templates/`; JSON
is the same records as data. `files` names one file per zone (and one per MTA-STS
policy) for `mailplan dns -o DIR`.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import jinja2

from mailplan.zones.records import Mx, Record, Srv, Zone

Format = Literal["bind", "octodns", "json"]
FORMATS: tuple[Format, ...] = ("bind", "octodns", "json")
SUFFIX = {"bind": "zone", "octodns": "yaml", "json": "json"}

_templates = jinja2.Environment(
    loader=jinja2.PackageLoader("mailplan.zones", "templates"),
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
    undefined=jinja2.StrictUndefined,
    autoescape=False,
)


def render(zone: Zone, form: Format) -> str:
    """One zone in `form`."""
    if form == "bind":
        return _templates.get_template("bind.zone.j2").render(zone=zone)
    if form == "octodns":
        return _templates.get_template("octodns.yaml.j2").render(zone=zone, owners=_octodns(zone))
    return json.dumps(_json(zone), indent=2) + "\n"


def render_all(zones: tuple[Zone, ...], form: Format) -> str:
    """Every zone in `form`, for standard output (JSON: one document with a list of zones)."""
    if form == "json":
        return json.dumps({"zones": [_json(zone) for zone in zones]}, indent=2) + "\n"
    return "\n".join(render(zone, form) for zone in zones)


def files(zones: tuple[Zone, ...], form: Format) -> dict[str, str]:
    """File name -> text: `NAME.zone|yaml|json` per zone, `mta-sts.NAME.txt` per policy."""
    found = {f"{zone.name}.{SUFFIX[form]}": render(zone, form) for zone in zones}
    for zone in zones:
        if zone.mta_sts_policy is not None:
            found[f"mta-sts.{zone.name}.txt"] = zone.mta_sts_policy
    return found


def policies(zones: tuple[Zone, ...]) -> str:
    """Every MTA-STS policy file, each after the URL it must be served at."""
    return "\n".join(
        f"# https://mta-sts.{zone.name}/.well-known/mta-sts.txt\n{zone.mta_sts_policy}"
        for zone in zones
        if zone.mta_sts_policy is not None
    )


def _octodns(zone: Zone) -> list[tuple[str, list[dict[str, Any]]]]:
    """Records grouped as octoDNS's YAML provider wants them: owner -> one entry per type."""
    owners: dict[str, dict[str, dict[str, Any]]] = {}
    for record in zone.records:
        name = "" if record.name == "@" else record.name
        types = owners.setdefault(name, {})
        entry = types.setdefault(record.type, {"type": record.type, "ttl": record.ttl})
        entry.setdefault("values", []).append(_octodns_value(record))
    return [(name, list(types.values())) for name, types in sorted(owners.items())]


def _octodns_value(record: Record) -> Any:
    value = record.value
    if isinstance(value, Mx):
        return {"exchange": value.host, "preference": value.priority}
    if isinstance(value, Srv):
        return {
            "port": value.port,
            "priority": value.priority,
            "target": value.target,
            "weight": value.weight,
        }
    if record.type == "TXT":
        return value.replace(";", "\\;")  # octoDNS wants ; escaped in TXT values
    return value


def _json(zone: Zone) -> dict[str, Any]:
    records = []
    for record in zone.records:
        entry: dict[str, Any] = {"name": record.name, "type": record.type, "ttl": record.ttl}
        value = record.value
        if isinstance(value, Mx):
            entry |= {"priority": value.priority, "host": value.host}
        elif isinstance(value, Srv):
            entry |= {
                "priority": value.priority,
                "weight": value.weight,
                "port": value.port,
                "target": value.target,
            }
        else:
            entry["value"] = value
        entry["rdata"] = record.rdata()
        entry["why"] = record.why
        records.append(entry)
    return {
        "zone": zone.name,
        "domain": zone.domain,
        "records": records,
        "mta_sts_policy": zone.mta_sts_policy,
    }
