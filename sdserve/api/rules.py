"""Every bad field at once: a request the schema refuses is also checked against its model's
rules (sizes, samplers) for the fields that did parse, so `width` is not left unreported beside
another field's error. Each dialect says, per submitting route, which model a raw body names and
where its size and sampler fields are."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fastapi import Request

from sdserve.api.context import ApiContext
from sdserve.api.errors import RuleErrors
from sdserve.jobs.requests import FieldNames, rule_problems


@dataclass(frozen=True)
class RawFields:
    """What a refused body holds that its model's rules can still check."""

    model: str
    """The model (endpoint) it names."""
    values: Mapping[str, object]
    """Raw values by canonical name: width, height, scheduler, init_image."""
    fields: FieldNames
    """Canonical names -> the names the client used."""


RawReader = Callable[[Request, object], RawFields | None]
"""A route's reader of its refused body (None: nothing to check)."""


def rule_errors_for(readers: dict[str, RawReader], route_path: Callable[[Any], str]) -> RuleErrors:
    """The model-rule errors of a refused request, for the routes `readers` names (by their
    path template), leaving out the fields the schema already reported."""

    async def rule_errors(
        request: Request, body: object, reported: set[str]
    ) -> list[dict[str, str]]:
        reader = readers.get(route_path(request.scope))
        if reader is None:
            return []
        raw = reader(request, body)
        ctx: ApiContext | None = getattr(request.app.state, "ctx", None)
        if raw is None or ctx is None:
            return []
        spec = ctx.service.registry.resolve(raw.model)
        if spec is None:
            return []
        problems = rule_problems(spec, raw.values, raw.fields)
        return [{"field": p.field, "message": p.rule} for p in problems if p.field not in reported]

    return rule_errors


def pick(body: object, names: Mapping[str, str]) -> dict[str, object]:
    """`body`'s values (a JSON object's) by canonical name, `names` giving each one's wire name."""
    if not isinstance(body, dict):
        return {}
    return {canonical: body[wire] for canonical, wire in names.items() if wire in body}
