"""The status loop of a running search: poll its controller, mirror the reply into ``NASSearch.status``, size
the pools. One daemon per search (kopf), until the search reaches a terminal phase.

An unreachable controller (not started yet, restarting, deleted, wrong address) sets ``ControllerReachable=False``
once, and the poll interval doubles from ``poll_interval_s`` up to ``poll_backoff_max_s``: no hot loop against the
controller, and no API request at all while nothing changes (the status writer sends only changed parts).

A Failed search is resumed by a new value of its annotation :data:`RESUME_ANNOTATION` (:func:`resume`): the operator
calls the controller's ``ResumeSearch`` with that value (done once per value, however often it is delivered) and
writes the phase it answers into the status, which starts this loop again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Mapping

import kopf

from gpunet.rpc import phase_name
from gpunet.rpc.client import ControllerUnavailable

from . import FAILED, GROUP, PENDING, SUCCEEDED, TERMINAL_PHASES, scaling
from .context import OperatorContext, meta_of
from .spec import with_defaults
from .status import mirror, ready_condition, set_condition
from .status_writer import MIRROR, MIRROR_CONDITIONS, mirror_part, owned_conditions


#: The annotation whose new value resumes a Failed search: ``kubectl annotate nassearch NAME nas.gpunet.dev/resume=2``.
RESUME_ANNOTATION = f"{GROUP}/resume"


@dataclass
class PoolState:
    """What this process last applied to one search's pools (a cache: after a restart everything is applied once)."""

    replicas: dict[str, int] = field(default_factory=dict)
    busy: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class Poll:
    """The outcome of one poll: the phase seen and whether the controller answered."""

    phase: str
    reachable: bool


def next_delay(previous: float, reachable: bool, interval: float, backoff_max: float) -> float:
    """Seconds to the next poll: ``interval`` after an answer; doubling (from ``interval``) up to ``backoff_max``
    while the controller does not answer."""
    return interval if reachable else min(max(2.0 * previous, interval), backoff_max)


async def poll_once(ctx: OperatorContext, body: Mapping[str, Any], pools: PoolState, logger: logging.Logger) -> Poll:
    """Poll the controller once: write the mirror part of the status, size the pools."""
    meta = meta_of(body)
    status = dict(body.get("status") or {})
    generation = body["metadata"].get("generation")
    last = ctx.status.last(meta["uid"], MIRROR)
    if last is None:
        last = mirror_part(status)
    conditions = owned_conditions(last, MIRROR_CONDITIONS)
    client = await ctx.controller(meta["namespace"], meta["name"])
    if client is None:
        return Poll(status.get("phase") or PENDING, reachable=False)
    try:
        reply = await client.status(ctx.settings.max_candidates)
    except ControllerUnavailable as exc:
        message = (f"the search controller at {client.address} does not answer ({exc.code}); retrying with exponential "
                   f"backoff up to {ctx.settings.poll_backoff_max_s:.0f}s")
        conditions = set_condition(conditions, "ControllerReachable", False, "Unavailable", message, generation)
        await ctx.status.apply(meta, MIRROR, {**last, "conditions": conditions})
        return Poll(last.get("phase") or PENDING, reachable=False)
    phase = phase_name(reply.phase) or PENDING
    conditions = set_condition(conditions, "ControllerReachable", True, "Reachable", f"polled {client.address}", generation)
    spec = with_defaults(dict(body.get("spec") or {}))
    tiers = [float(t) for t in spec.get("latency", {}).get("tiers") or []]
    new = mirror(reply, tiers, conditions=conditions, budget_bytes=ctx.settings.status_budget_bytes, generation=generation)
    table = reply.latency_table
    want = scaling.desired_scale(phase, spec, queued=reply.candidates.queued, running=reply.candidates.running,
                                 table_complete=table.layers_needed > 0 and table.layers_measured >= table.layers_needed)
    terminal = phase in TERMINAL_PHASES
    if not terminal:
        await ctx.status.apply(meta, MIRROR, new)  # first: what users and the tests read
    await scaling.apply_scale(ctx, meta["name"], meta["namespace"], want, pools.replicas)
    busy = {r.worker_id for r in reply.records if r.state == "running" and r.worker_id}
    await scaling.protect_busy_trainers(ctx, meta["namespace"], busy, pools.busy)
    if phase != last.get("phase"):
        logger.info("phase %s -> %s", last.get("phase"), phase)
        if terminal:
            kopf.event(dict(body), type="Normal" if phase == SUCCEEDED else "Warning", reason=f"Search{phase}",
                       message=reply.message or f"search {phase.lower()}")
    if terminal:
        # Last: a terminal phase in the status ends this daemon (its ``when`` filter), and a restarted operator
        # starts no daemon for it; so the scale-down to 0 goes first, and a crash in between is redone.
        await ctx.status.apply(meta, MIRROR, new)
    return Poll(phase, reachable=True)


async def run(ctx: OperatorContext, body: Mapping[str, Any], stopped: Any, logger: logging.Logger) -> None:
    """Poll until the search ends or the daemon is stopped (``stopped``: kopf's DaemonStopped)."""
    settings = ctx.settings
    pools = PoolState()
    delay = settings.poll_interval_s
    while not stopped:
        try:
            poll = await poll_once(ctx, body, pools, logger)
        except Exception as exc:  # noqa: BLE001 - an API error must not end the daemon; the next poll retries
            logger.warning("status poll failed: %s", exc)
            poll = Poll("", reachable=True)  # the API server's trouble, not the controller's: no backoff
        if poll.phase in TERMINAL_PHASES:
            return
        delay = next_delay(delay, poll.reachable, settings.poll_interval_s, settings.poll_backoff_max_s)
        await stopped.wait(delay)


async def resume(ctx: OperatorContext, body: Mapping[str, Any], value: Any, logger: logging.Logger) -> bool:
    """The annotation :data:`RESUME_ANNOTATION` of a search changed to ``value``: resume it if it is Failed.

    Calls the controller's ``ResumeSearch(resume_id=value)``, which resumes a Failed search once per value, and
    writes the phase it answers into the status (the mirror part), so that the status loop starts again and sizes
    the pools. Returns whether the search was resumed.

    Raises:
        kopf.TemporaryError: the controller has no token yet or does not answer (kopf retries the handler).
    """
    if not value or (body.get("status") or {}).get("phase") != FAILED:
        return False
    meta = meta_of(body)
    client = await ctx.controller(meta["namespace"], meta["name"])
    if client is None:
        raise kopf.TemporaryError("the search has no token yet", delay=10)
    try:
        reply = await client.resume(str(value))
    except ControllerUnavailable as exc:
        raise kopf.TemporaryError(f"cannot resume: the controller does not answer ({exc.code})", delay=10) from exc
    phase = phase_name(reply.phase) or PENDING
    if phase in TERMINAL_PHASES:
        logger.info("resume %r: %s", value, reply.message)
        return False
    if reply.resumed:
        logger.info("resumed the failed search (%s=%r) in phase %s", RESUME_ANNOTATION, value, phase)
        kopf.event(dict(body), type="Normal", reason="SearchResumed", message=reply.message)
    # Also when it was resumed already (a redelivered annotation after a lost status write): the status says Failed
    # but the controller runs again, so the status loop must start.
    last = ctx.status.last(meta["uid"], MIRROR)
    if last is None:
        last = mirror_part(dict(body.get("status") or {}))
    generation = body["metadata"].get("generation")
    conditions = set_condition(owned_conditions(last, MIRROR_CONDITIONS), "Ready", *ready_condition(phase, reply.message),
                               generation)
    await ctx.status.apply(meta, MIRROR, {**last, "phase": phase, "message": reply.message, "conditions": conditions})
    return reply.resumed
