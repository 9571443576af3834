"""The kopf handlers of the gpunet-nas operator. They are thin: the work is in the pure modules.

Handler ids are pinned (``id=``) because kopf keeps its progress under them. State kept here:

    children        on create and on resume: validate, then create (or find) and adopt the children
    spec-change     on spec updates: apply live fields, refuse search-defining ones with a condition
    status          a daemon per running search: poll the controller, patch ``status``, scale the pools
    trainer-pods    trainer pod events: a preempted/evicted pod's lease is released at once; a failed one
                    is released as a failed attempt
    nodes           node taints and deletions (cluster-wide installs): release the trainers on that node
"""

from __future__ import annotations

import asyncio
import base64
import collections
import logging
import secrets
from typing import Any, Mapping

import kopf
import yaml

from . import API_VERSION, GROUP, PLURAL, VERSION, builders, kube, preemption, scaling
from .controller import ControllerClients, ControllerUnavailable
from .settings import Settings
from .spec import SEARCH_DEFINING, InvalidSpec, frozen_changes, validate, with_defaults
from .status import mirror, set_condition

#: Phases in which a search's controller is polled.
ACTIVE_PHASES = ("Pending", "Profiling", "Stratifying", "Searching")
#: Attempts (and seconds between them) to release a lost pod's lease before giving up to the lease expiry.
RELEASE_ATTEMPTS, RELEASE_BACKOFF_S = 5, 1.0
#: Pod ends remembered for deduplication (repeated watch events about the same end).
SEEN_LIMIT = 10_000


class _State:
    """Process-wide state: settings, the API layer, gRPC channels, deduplication and failure counts."""

    def __init__(self) -> None:
        self.settings = Settings.from_env()
        self.kube = kube.KubeHolder()
        self.controllers = ControllerClients()
        self.seen: collections.OrderedDict[str, None] = collections.OrderedDict()
        self.pod_failures: collections.Counter[tuple[str, str]] = collections.Counter()

    def first_time(self, key: str) -> bool:
        """True once per ``key`` (a pod end), False for repeats."""
        if key in self.seen:
            return False
        self.seen[key] = None
        while len(self.seen) > SEEN_LIMIT:
            self.seen.popitem(last=False)
        return True


STATE = _State()


# --- operator lifecycle -------------------------------------------------------------------------------------


@kopf.on.startup(id="configure")
async def configure(settings: kopf.OperatorSettings, logger: logging.Logger, **_: Any) -> None:
    STATE.settings = Settings.from_env()
    # kopf's progress and diff-base go to annotations of our group, not into .status.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP, key="last-handled-configuration")
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    settings.scanning.disabled = not STATE.settings.scanning
    logger.info("gpunet operator settings: %s", STATE.settings)


@kopf.on.login(id="kubernetes-client")
async def login(**_: Any) -> kopf.ConnectionInfo:
    """kopf and the handlers use the kubernetes client's configuration (in-cluster or kubeconfig). Loaded afresh
    on every call: kopf calls again when its credentials stop working (rotated service-account tokens)."""
    return kube.connection_info(await kube.load_configuration())


@kopf.on.cleanup(id="close")
async def close(**_: Any) -> None:
    STATE.controllers.close()
    await STATE.kube.close()


# --- children -----------------------------------------------------------------------------------------------


def _fail(patch: kopf.Patch, conditions: list[dict[str, Any]], exc: InvalidSpec, generation: int | None) -> None:
    patch.status["phase"] = "Failed"
    patch.status["message"] = str(exc)
    patch.status["conditions"] = set_condition(conditions, "Ready", False, "InvalidSpec", str(exc), generation)


async def _token(kube_: kube.Kube, name: str, namespace: str) -> str | None:
    try:
        secret = await kube_.get("v1", "secrets", namespace, builders.child_name(name, "token"))
    except kube.ApiError as exc:
        if exc.status == 404:
            return None
        raise
    data = (secret.get("data") or {}).get(builders.TOKEN_KEY)
    return base64.b64decode(data).decode() if data else None


async def _start(name: str, namespace: str, spec: Mapping[str, Any], body: kopf.Body, patch: kopf.Patch,
                 current: Mapping[str, Any], memo: Any, logger: logging.Logger) -> None:
    conditions = list(current.get("conditions") or [])
    generation = body.get("metadata", {}).get("generation")
    try:
        full = validate(name, namespace, spec)
    except InvalidSpec as exc:
        _fail(patch, conditions, exc, generation)
        raise kopf.PermanentError(f"invalid NASSearch: {exc}") from exc
    kube_ = await STATE.kube.get()
    token = await _token(kube_, name, namespace) or secrets.token_urlsafe(32)
    created = []
    for child in builders.build_children(name, namespace, full, STATE.settings, token):
        kopf.adopt(child, owner=body)
        try:
            _, new = await kube_.ensure(child)
        except kube.ApiError as exc:
            raise kopf.TemporaryError(f"cannot create {child['kind']} {child['metadata']['name']}: {exc}", delay=10) from exc
        if new:
            created.append(f"{child['kind']}/{child['metadata']['name']}")
    if created:
        logger.info("created %s", ", ".join(created))
    if current.get("phase") in (None, "", "Failed"):
        patch.status["phase"] = "Pending"
        patch.status["message"] = "waiting for the search controller"
        patch.status["tiers"] = len(full["latency"].get("tiers") or [])
        conditions = set_condition(conditions, "Ready", False, "Starting", "waiting for the search controller", generation)
    memo.spec_condition = (True, "Accepted", "the spec is valid")
    patch.status["conditions"] = set_condition(conditions, "SpecAccepted", *memo.spec_condition, generation)


@kopf.on.resume(GROUP, VERSION, PLURAL, id="children")
@kopf.on.create(GROUP, VERSION, PLURAL, id="children")
async def create_children(name: str, namespace: str, spec: kopf.Spec, body: kopf.Body, status: kopf.Status,
                          patch: kopf.Patch, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    """Validate the search and create (or find, on resume) its children, owned by it.

    An invalid spec ends as phase Failed with a Ready=False condition naming the field; nothing is created
    and kopf does not retry (PermanentError). A later spec fix is picked up by ``spec-change``.
    """
    if status.get("phase") in ("Succeeded",) or (status.get("phase") == "Failed" and _failed_for_spec(status) is False):
        return  # a finished search keeps its results and needs no pods
    await _start(name, namespace, spec, body, patch, status, memo, logger)


def _failed_for_spec(current: Mapping[str, Any]) -> bool:
    ready = next((c for c in current.get("conditions") or [] if c.get("type") == "Ready"), None)
    return bool(ready and ready.get("reason") == "InvalidSpec")


# --- spec changes -----------------------------------------------------------------------------------------------


def merge_patch(old: Any, new: Any) -> Any:
    """The RFC 7386 merge patch that turns ``old`` into ``new`` (``None`` removes a key)."""
    if not isinstance(old, Mapping) or not isinstance(new, Mapping):
        return new
    out: dict[str, Any] = {}
    for key in set(old) | set(new):
        if key not in new:
            out[key] = None
        elif key not in old:
            out[key] = new[key]
        elif old[key] != new[key]:
            out[key] = merge_patch(old[key], new[key])
    return out


def pod_templates(name: str, namespace: str, full: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The pod template of each of the three Deployments of a search, by Deployment name."""
    settings = STATE.settings
    deployments = [
        builders.build_controller_deployment(name, namespace, full, settings),
        builders.build_profiler_deployment(name, namespace, full, settings, replicas=0),
        builders.build_trainer_deployment(name, namespace, full, settings, replicas=0),
    ]
    return {d["metadata"]["name"]: d["spec"]["template"] for d in deployments}


async def _apply_live(kube_: kube.Kube, name: str, namespace: str, before: Mapping[str, Any] | None,
                      after: Mapping[str, Any]) -> list[str]:
    """Patch the pod templates from what the spec ``before`` rendered to what ``after`` renders (diffing two
    renderings, not the server's objects, leaves the API server's defaults alone). Returns the changed ones."""
    old = pod_templates(name, namespace, before) if before is not None else {}
    changed = []
    for dep_name, template in pod_templates(name, namespace, after).items():
        if dep_name in old:
            diff = merge_patch(old[dep_name], template)
        else:  # the old spec does not render: compare with the server's template
            current = await kube_.get("apps/v1", "deployments", namespace, dep_name)
            diff = merge_patch(current.get("spec", {}).get("template", {}), template)
        if diff:
            await kube_.patch("apps/v1", "deployments", namespace, dep_name, {"spec": {"template": diff}})
            changed.append(dep_name)
    return changed


@kopf.on.update(GROUP, VERSION, PLURAL, id="spec-change", field="spec")
async def spec_changed(name: str, namespace: str, old: Any, new: Any, body: kopf.Body, status: kopf.Status,
                       patch: kopf.Patch, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    """Scaling and scheduling fields apply live; search-defining fields are refused with a condition.

    The status daemon is the one writer of ``status.conditions`` while a search runs (a merge patch replaces the
    list as a whole), so the SpecAccepted verdict also goes to the object's memo, which the daemon merges in.
    """
    spec = dict(new or {})
    if status.get("phase") == "Failed" and _failed_for_spec(status):
        await _start(name, namespace, spec, body, patch, status, memo, logger)  # a fixed spec starts the search
        return
    if status.get("phase") not in ACTIVE_PHASES:
        return
    generation = body.get("metadata", {}).get("generation")
    conditions = list(status.get("conditions") or [])
    kube_ = await STATE.kube.get()
    configmap = await kube_.get("v1", "configmaps", namespace, builders.child_name(name, "spec"))
    started = yaml.safe_load(configmap["data"][builders.SPEC_KEY])["spec"]
    refused = frozen_changes(started, spec)
    if refused:
        message = (f"refused: {', '.join(refused)} cannot change after the search started; the search goes on with "
                   f"the spec it started with (revert the change, or create a new NASSearch)")
        memo.spec_condition = (False, "SearchDefiningFieldChanged", message)
        conditions = set_condition(conditions, "SpecAccepted", *memo.spec_condition, generation)
        patch.status["conditions"] = conditions
        kopf.warn(body, reason="SpecRefused", message=message)
    else:
        memo.spec_condition = (True, "Accepted", "the spec is valid")
        patch.status["conditions"] = set_condition(conditions, "SpecAccepted", *memo.spec_condition, generation)
    try:
        full = validate(name, namespace, _running_spec(spec, started))
    except InvalidSpec as exc:
        memo.spec_condition = (False, "InvalidSpec", str(exc))
        patch.status["conditions"] = set_condition(conditions, "SpecAccepted", *memo.spec_condition, generation)
        raise kopf.PermanentError(f"invalid live change: {exc}") from exc
    try:
        before: dict[str, Any] | None = validate(name, namespace, _running_spec(dict(old or {}), started))
    except InvalidSpec:
        before = None
    changed = await _apply_live(kube_, name, namespace, before, full)
    if changed:
        logger.info("applied live changes to %s", ", ".join(changed))
    # Pool sizes follow on the next status poll (a few seconds at most).


def _running_spec(spec: Mapping[str, Any], started: Mapping[str, Any]) -> dict[str, Any]:
    """What the search runs with: the live sections of ``spec`` and the search-defining ones it started with."""
    return {k: v for k, v in spec.items() if k not in SEARCH_DEFINING} | {k: started[k] for k in SEARCH_DEFINING if k in started}


# --- status and scaling -----------------------------------------------------------------------------------------


async def _scale(kube_: kube.Kube, name: str, namespace: str, want: scaling.Scale, memo: Any) -> None:
    last = getattr(memo, "replicas", None) or {}
    for component, replicas in (("controller", want.controller), ("profiler", want.profilers), ("trainer", want.trainers)):
        if last.get(component) == replicas:
            continue
        try:
            await kube_.patch("apps/v1", "deployments", namespace, builders.child_name(name, component), {"spec": {"replicas": replicas}})
        except kube.ApiError as exc:
            if exc.status != 404:
                raise
            continue
        last[component] = replicas
    memo.replicas = last


#: ``controller.kubernetes.io/pod-deletion-cost`` of a trainer holding a lease: when the pool shrinks, the
#: ReplicaSet removes idle trainers first instead of interrupting a candidate mid-epoch.
BUSY_DELETION_COST = "1000"
DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"


async def _protect_busy_trainers(kube_: kube.Kube, namespace: str, busy: set[str], memo: Any) -> None:
    before: set[str] = getattr(memo, "busy", set())
    for pod, cost in [(p, BUSY_DELETION_COST) for p in sorted(busy - before)] + [(p, None) for p in sorted(before - busy)]:
        try:
            await kube_.patch("v1", "pods", namespace, pod, {"metadata": {"annotations": {DELETION_COST: cost}}})
        except kube.ApiError as exc:
            if exc.status != 404:  # a pod that is gone needs no protection
                raise
    memo.busy = set(busy)


async def poll_once(name: str, namespace: str, body: Mapping[str, Any], memo: Any, logger: logging.Logger) -> str:
    """Poll the controller once: patch the status, scale the pools. Returns the phase seen."""
    settings = STATE.settings
    kube_ = await STATE.kube.get()
    spec = with_defaults(body.get("spec") or {})
    current = dict(body.get("status") or {})
    generation = body.get("metadata", {}).get("generation")
    conditions = list(current.get("conditions") or [])
    if getattr(memo, "spec_condition", None):
        conditions = set_condition(conditions, "SpecAccepted", *memo.spec_condition, generation)
    token = getattr(memo, "token", None) or await _token(kube_, name, namespace)
    if token is None:
        return current.get("phase") or "Pending"
    memo.token = token
    client = STATE.controllers.get(namespace, name, settings.controller_address_of(name, namespace), token, settings.grpc_timeout_s)
    try:
        reply = await client.status(settings.max_candidates)
    except ControllerUnavailable as exc:
        conditions = set_condition(conditions, "ControllerReachable", False, "Unavailable", str(exc), generation)
        if conditions != current.get("conditions"):
            await kube_.patch(API_VERSION, PLURAL, namespace, name, {"status": {"conditions": conditions}}, subresource="status")
        return current.get("phase") or "Pending"
    conditions = set_condition(conditions, "ControllerReachable", True, "Reachable", f"polled {client.address}", generation)
    tiers = [float(t) for t in spec.get("latency", {}).get("tiers") or []]
    new = mirror(reply, tiers, conditions=conditions, pod_failures=STATE.pod_failures[(namespace, name)],
                        budget_bytes=settings.status_budget_bytes, generation=generation)
    table = reply.latency_table
    table_complete = table.layers_needed > 0 and table.layers_measured >= table.layers_needed
    want = scaling.desired_scale(reply.phase, spec, queued=reply.candidates.queued, running=reply.candidates.running,
                                 table_complete=table_complete)
    await _scale(kube_, name, namespace, want, memo)
    busy = {r.worker_id for r in reply.records if r.state == "running" and r.worker_id}
    await _protect_busy_trainers(kube_, namespace, busy, memo)
    if any(current.get(key) != value for key, value in new.items()):  # no write (and no etcd revision) when idle
        await kube_.patch(API_VERSION, PLURAL, namespace, name, {"status": new}, subresource="status")
    if reply.phase != current.get("phase"):
        logger.info("phase %s -> %s", current.get("phase"), reply.phase)
        if reply.phase in scaling.TERMINAL_PHASES:
            kopf.event(body, type="Normal" if reply.phase == "Succeeded" else "Warning", reason=f"Search{reply.phase}",
                       message=reply.message or f"search {reply.phase.lower()}")
    return reply.phase


def _active(status: kopf.Status, **_: Any) -> bool:
    return status.get("phase") in ACTIVE_PHASES


@kopf.daemon(GROUP, VERSION, PLURAL, id="status", when=_active, cancellation_timeout=10)
async def mirror_status(name: str, namespace: str, body: kopf.Body, memo: kopf.Memo, stopped: kopf.DaemonStopped,
                        logger: logging.Logger, **_: Any) -> None:
    """Poll the search's controller every ``poll_interval_s`` until the search ends (or the daemon is stopped)."""
    while not stopped:
        try:
            phase = await poll_once(name, namespace, body, memo, logger)
        except kube.ApiError as exc:
            logger.warning("status poll failed: %s", exc)
            phase = ""
        if phase in scaling.TERMINAL_PHASES:
            return
        await stopped.wait(STATE.settings.poll_interval_s)


@kopf.on.delete(GROUP, VERSION, PLURAL, id="forget", optional=True)
async def forget(name: str, namespace: str, **_: Any) -> None:
    """The children go with their owner references; only the gRPC channel is ours to close."""
    STATE.controllers.forget(namespace, name)
    STATE.pod_failures.pop((namespace, name), None)


# --- preemption -------------------------------------------------------------------------------------------------


async def release_lost_pod(namespace: str, search: str, pod: str, verdict: preemption.Verdict, logger: logging.Logger) -> None:
    """Tell the search's controller that ``pod`` lost its work; count it and record an Event on the NASSearch."""
    kube_ = await STATE.kube.get()
    try:
        owner = await kube_.get(API_VERSION, PLURAL, namespace, search)
    except kube.ApiError as exc:
        if exc.status == 404:
            return  # the search is gone
        raise
    token = await _token(kube_, search, namespace)
    if token is None:
        return
    settings = STATE.settings
    client = STATE.controllers.get(namespace, search, settings.controller_address_of(search, namespace), token, settings.grpc_timeout_s)
    reason = verdict.end.value
    reply = None
    for attempt in range(RELEASE_ATTEMPTS):
        try:
            reply = await client.release(pod, reason, verdict.reason)
            break
        except ControllerUnavailable as exc:
            logger.warning("release of %s (%s) failed, attempt %d: %s", pod, reason, attempt + 1, exc)
            await asyncio.sleep(RELEASE_BACKOFF_S * (attempt + 1))
    work = reply.work_id if reply is not None and reply.released else ""
    if verdict.end is preemption.PodEnd.PREEMPTED:
        message = (f"trainer pod {pod} lost ({verdict.reason}); "
                   + (f"candidate {work} goes back to the queue and resumes from its last checkpoint" if work else "it held no lease"))
        kopf.event(owner, type="Warning", reason="TrainerPreempted", message=message)
    else:
        STATE.pod_failures[(namespace, search)] += 1
        message = f"trainer pod {pod} failed ({verdict.reason})" + (f"; candidate {work} counts one failed attempt" if work else "")
        kopf.event(owner, type="Warning", reason="TrainerFailed", message=message)
    logger.info(message)


@kopf.on.event("", "v1", "pods", id="trainer-pods",
               labels={builders.COMPONENT_LABEL: "trainer", builders.SEARCH_LABEL: kopf.PRESENT})
async def trainer_pod_event(name: str, namespace: str, body: kopf.Body, labels: kopf.Labels, logger: logging.Logger,
                            **_: Any) -> None:
    """A trainer pod changed: if it was preempted, evicted or failed, release its worker's lease at once."""
    verdict = preemption.classify_pod(body)
    if verdict is None or not STATE.first_time(verdict.key):
        return
    await release_lost_pod(namespace, labels[builders.SEARCH_LABEL], name, verdict, logger)


def _watch_nodes(**_: Any) -> bool:
    return STATE.settings.watch_nodes


@kopf.on.event("", "v1", "nodes", id="nodes", when=_watch_nodes)
async def node_event(type: str, name: str, body: kopf.Body, logger: logging.Logger, **_: Any) -> None:
    """A node is being reclaimed (preemption taint) or was deleted: its trainer pods lose their work now."""
    why = "node deleted" if type == "DELETED" else preemption.node_preemption(body, STATE.settings.preemption_taints)
    if why is None:
        return
    kube_ = await STATE.kube.get()
    pods = await kube_.list("v1", "pods", None, {builders.COMPONENT_LABEL: "trainer"})
    for pod in pods:
        meta = pod.get("metadata") or {}
        search = (meta.get("labels") or {}).get(builders.SEARCH_LABEL)
        if not search or (pod.get("spec") or {}).get("nodeName") != name:
            continue
        verdict = preemption.Verdict(preemption.PodEnd.PREEMPTED, f"{why} ({name})", f"{meta.get('uid') or meta.get('name')}/preempted")
        if STATE.first_time(verdict.key):
            await release_lost_pod(meta.get("namespace"), search, meta["name"], verdict, logger)
