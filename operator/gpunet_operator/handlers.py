"""The kopf handlers of the gpunet-nas operator: decorators only, each calling the module that does the job.

Handler ids are pinned (``id=``) because kopf keeps its progress under them (in annotations, not the status):

    configure       startup: kopf's settings and the shared :class:`~.context.OperatorContext` (``memo.ctx``)
    children        create and resume: validate, then apply the children                (:mod:`.children`)
    spec-change     live sections changed: apply them, or refuse an invalid change       (:mod:`.children`)
    status          a daemon per running search: poll, mirror into status, size pools    (:mod:`.reconcile`)
    resume          annotation nas.gpunet.dev/resume changed: resume a Failed search     (:mod:`.reconcile`)
    trainer-pods    trainer pod events: preempted, evicted, deleted or failed pods        (:mod:`.preemption`)
    nodes           node taints and deletions (cluster-wide installs)                     (:mod:`.preemption`)
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from . import ACTIVE_PHASES, GROUP, PLURAL, TERMINAL_PHASES, VERSION, api, builders, children, preemption, reconcile
from .context import OperatorContext
from .settings import Settings


@kopf.on.startup(id="configure")
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    ours = Settings.from_env()
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP, key="last-handled-configuration")
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    settings.scanning.disabled = not ours.scanning
    settings.peering.lifetime = ours.peering_lifetime_s
    memo.ctx = await OperatorContext.create(ours)
    logger.info("gpunet operator settings: %s", ours)


@kopf.on.login(id="kubernetes-client")
async def login(**_: Any) -> kopf.ConnectionInfo:
    """kopf uses the kubernetes client's credentials (in-cluster or kubeconfig), loaded afresh on every call:
    kopf calls again when they stop working (rotated service-account tokens)."""
    return api.connection_info(await api.load_configuration())


@kopf.on.cleanup(id="close")
async def close(memo: kopf.Memo, **_: Any) -> None:
    await memo.ctx.close()


def _ctx(memo: kopf.Memo) -> OperatorContext:
    return memo.ctx


@kopf.on.resume(GROUP, VERSION, PLURAL, id="children")
@kopf.on.create(GROUP, VERSION, PLURAL, id="children")
async def create_children(body: kopf.Body, status: kopf.Status, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    if status.get("phase") in TERMINAL_PHASES and not children.failed_for_spec(status):
        return  # a finished search keeps its results and needs no pods
    await children.ensure(_ctx(memo), body, logger)


@kopf.on.update(GROUP, VERSION, PLURAL, id="spec-change", field="spec")
async def spec_changed(body: kopf.Body, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    await children.on_spec_change(_ctx(memo), body, logger)


def _active(status: kopf.Status, **_: Any) -> bool:
    return status.get("phase") in ACTIVE_PHASES


# cancellation_backoff: when the search leaves the active phases, kopf first asks the daemon to stop (``stopped``)
# and cancels it only after that; without it, kopf cancels at once, mid-apply.
@kopf.daemon(GROUP, VERSION, PLURAL, id="status", when=_active, cancellation_backoff=5, cancellation_timeout=10)
async def mirror_status(body: kopf.Body, memo: kopf.Memo, stopped: kopf.DaemonStopped, logger: logging.Logger, **_: Any) -> None:
    await reconcile.run(_ctx(memo), body, stopped, logger)


@kopf.on.field(GROUP, VERSION, PLURAL, id="resume", field=("metadata", "annotations", reconcile.RESUME_ANNOTATION))
async def resume_failed(body: kopf.Body, new: Any, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    await reconcile.resume(_ctx(memo), body, new, logger)


@kopf.on.delete(GROUP, VERSION, PLURAL, id="forget", optional=True)
async def forget(name: str, namespace: str, uid: str, memo: kopf.Memo, **_: Any) -> None:
    """The children go with their owner references (the garbage collector); only caches are ours to drop."""
    await _ctx(memo).forget(namespace, name, uid)


@kopf.on.event("", "v1", "pods", id="trainer-pods",
               labels={builders.COMPONENT_LABEL: "trainer", builders.SEARCH_LABEL: kopf.PRESENT})
async def trainer_pod_event(type: str, body: kopf.Body, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    await preemption.on_pod_event(_ctx(memo), type, body, logger)


async def node_event(type: str, body: kopf.Body, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    await preemption.on_node_event(_ctx(memo), type, body, logger)


# Nodes are watched only where the operator may (cluster-wide installs): a namespaced install has no node access,
# and kopf would retry a forbidden watch forever. Registered or not once, when kopf imports this module.
if Settings.from_env().watch_nodes:
    kopf.on.event("", "v1", "nodes", id="nodes")(node_event)
