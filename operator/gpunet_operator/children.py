"""The children of a ``NASSearch``: validated, built (:mod:`.builders`), adopted and server-side applied.

Applying is idempotent, so the same function serves a new search, an operator restart (kopf's resume) and a
live spec change: the API server merges what changed and leaves the rest (and its own defaults) alone. The
Deployments are applied without ``spec.replicas``, which the scaler owns (:mod:`.scaling`); only when a
Deployment is created does it get its first size, so that no pod starts before the scaler has spoken.
"""

from __future__ import annotations

import copy
import logging
import secrets
from typing import Any, Mapping

import kopf

from . import ACTIVE_PHASES, FAILED, PENDING, builders, certs, scaling
from .api import MANAGER
from .context import OperatorContext, meta_of
from .spec import InvalidSpec, validate
from .status import set_condition
from .status_writer import SPEC, START, owned_conditions

#: ``Ready`` reason of a search refused for its spec.
INVALID_SPEC = "InvalidSpec"


def failed_for_spec(status: Mapping[str, Any]) -> bool:
    """True when the search ended Failed because of its spec (a fix of a live field may start it)."""
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
    return status.get("phase") == FAILED and bool(ready and ready.get("reason") == INVALID_SPEC)


async def ensure(ctx: OperatorContext, body: Mapping[str, Any], logger: logging.Logger) -> dict[str, Any]:
    """Validate the search and apply all its children (creating the missing ones). Returns the spec with defaults.

    Raises:
        kopf.PermanentError: the spec is invalid; the status says Failed with a Ready=False condition naming the
            field, and nothing is created (kopf does not retry; a change of the spec calls this again).
    """
    meta, status = meta_of(body), dict(body.get("status") or {})
    generation = body["metadata"].get("generation")
    try:
        full = validate(meta["name"], meta["namespace"], dict(body.get("spec") or {}))
    except InvalidSpec as exc:
        conditions = set_condition(owned_conditions(status, ("Ready",)), "Ready", False, INVALID_SPEC, str(exc), generation)
        await ctx.status.apply(meta, START, {"phase": FAILED, "message": str(exc), "conditions": conditions})
        raise kopf.PermanentError(f"invalid NASSearch: {exc}") from exc
    token = await ctx.token(meta["namespace"], meta["name"]) or secrets.token_urlsafe(32)
    material = None
    if ctx.settings.tls_mode == "self-signed":  # made once, then read back: a new CA would lock the pods out
        material = await ctx.tls_material(meta["namespace"], meta["name"]) or certs.issue(meta["name"], meta["namespace"])
    created = []
    for child in builders.build_children(meta["name"], meta["namespace"], full, ctx.settings, token, material):
        kopf.adopt(child, owner=dict(body))
        if await _apply_child(ctx, child):
            created.append(f"{child['kind']}/{child['metadata']['name']}")
    if created:
        logger.info("created %s", ", ".join(created))
    if not status.get("phase") or failed_for_spec(status):
        message = "waiting for the search controller"
        conditions = set_condition(owned_conditions(status, ("Ready",)), "Ready", False, "Starting", message, generation)
        await ctx.status.apply(meta, START, {"phase": PENDING, "message": message, "tiers": len(full["latency"].get("tiers") or []),
                                             "conditions": conditions})
    conditions = set_condition(owned_conditions(status, ("SpecAccepted",)), "SpecAccepted", True, "Accepted",
                               "the spec is valid and applied", generation)
    await ctx.status.apply(meta, SPEC, {"conditions": conditions})
    return full


async def _apply_child(ctx: OperatorContext, child: dict[str, Any]) -> bool:
    """Apply one child; a Deployment's replicas only on creation. Returns True when the child was created."""
    if child["kind"] != "Deployment":
        existed = await ctx.api.get(child["apiVersion"], child["kind"], child["metadata"]["namespace"], child["metadata"]["name"])
        await ctx.api.apply(child, MANAGER)
        return existed is None
    meta = child["metadata"]
    if await ctx.api.get("apps/v1", "Deployment", meta["namespace"], meta["name"]) is None:
        await ctx.api.apply(child, MANAGER)
        await scaling.apply_replicas(ctx, meta["namespace"], meta["name"], child["spec"]["replicas"])
        return True
    unsized = copy.deepcopy(child)
    del unsized["spec"]["replicas"]
    await ctx.api.apply(unsized, MANAGER)
    return False


async def refuse_live_change(ctx: OperatorContext, body: Mapping[str, Any], exc: InvalidSpec) -> None:
    """A live change that the schema let through but the operator cannot apply: SpecAccepted=False."""
    status = dict(body.get("status") or {})
    conditions = set_condition(owned_conditions(status, ("SpecAccepted",)), "SpecAccepted", False, INVALID_SPEC, str(exc),
                               body["metadata"].get("generation"))
    await ctx.status.apply(meta_of(body), SPEC, {"conditions": conditions})


async def on_spec_change(ctx: OperatorContext, body: Mapping[str, Any], logger: logging.Logger) -> None:
    """A change of the live sections (the frozen ones cannot change: the API server refuses it). A running search
    gets the new pod templates; an invalid change is refused with SpecAccepted=False and the search goes on as
    it was; a search that failed for its spec starts when the fix makes it valid."""
    status = dict(body.get("status") or {})
    if failed_for_spec(status):
        await ensure(ctx, body, logger)
        return
    if status.get("phase") not in ACTIVE_PHASES:
        return  # a finished search needs no pods
    try:
        validate(body["metadata"]["name"], body["metadata"]["namespace"], dict(body.get("spec") or {}))
    except InvalidSpec as exc:
        await refuse_live_change(ctx, body, exc)
        raise kopf.PermanentError(f"invalid live change: {exc}") from exc
    await ensure(ctx, body, logger)
    logger.info("applied the live sections of the spec")
