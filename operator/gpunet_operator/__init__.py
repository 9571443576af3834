"""gpunet-nas Kubernetes operator: reconciles ``NASSearch`` resources (group ``nas.gpunet.dev``).

One ``NASSearch`` becomes a token Secret, a shared volume claim, a spec ConfigMap, the search-controller
Deployment and Service, a latency-profiler Deployment and an elastic trainer Deployment, all owned by the
``NASSearch`` (the garbage collector removes them with it). A daemon per search mirrors the controller's state
(over gRPC, :mod:`gpunet.rpc`) into ``.status`` and sizes the pools; pod and node watches release the leases of
trainers lost to spot preemption at once.

Run it with ``python -m gpunet_operator`` (a thin wrapper of ``kopf run``). This package never imports torch:
it needs kopf, the kubernetes client and the gRPC stubs only.

Modules:
    handlers       the kopf decorators only; each calls one of the modules below
    children       validate a search and server-side apply its children; live spec changes
    reconcile      the status loop: poll, mirror, size the pools, back off from an unreachable controller
    scaling        the pools' sizes (pure) and applying them, deletion costs of busy trainers
    preemption     lost trainer pods: classify (pure), release once, record in the status
    status         the controller's SearchStatus -> NASSearch.status under a byte budget (pure)
    status_writer  the status written in parts by server-side apply, one field manager per writer
    builders       child manifests as plain dicts (pure)
    spec           what the operator checks beyond the CRD schema (before any child exists)
    api            the kubernetes client's asyncio DynamicClient with server-side apply
    controller     the gRPC client of a search's controller
    context        what the handlers share (kopf's memo), no module-global state
    settings       operator settings from the environment
"""

from gpunet.rpc import ACTIVE_PHASES, TERMINAL_PHASES, pb, phase_name

GROUP = "nas.gpunet.dev"
VERSION = "v1alpha1"
PLURAL = "nassearches"
KIND = "NASSearch"
API_VERSION = f"{GROUP}/{VERSION}"

#: Phase names as ``NASSearch.status.phase`` shows them (``gpunet.rpc.SearchPhase``).
PENDING, PROFILING, SCALING, FINALIZING, SUCCEEDED, FAILED = (phase_name(v) for v in (
    pb.SEARCH_PHASE_PENDING, pb.SEARCH_PHASE_PROFILING, pb.SEARCH_PHASE_SCALING, pb.SEARCH_PHASE_FINALIZING,
    pb.SEARCH_PHASE_SUCCEEDED, pb.SEARCH_PHASE_FAILED))

__all__ = ["ACTIVE_PHASES", "API_VERSION", "FAILED", "FINALIZING", "GROUP", "KIND", "PENDING", "PLURAL", "PROFILING", "SCALING", "SUCCEEDED",
           "TERMINAL_PHASES", "VERSION"]

__version__ = "0.1.0"
