"""gpunet-nas Kubernetes operator: reconciles ``NASSearch`` resources (group ``nas.gpunet.dev``).

One ``NASSearch`` becomes a token Secret, a shared volume claim, a spec ConfigMap, the search-controller
Deployment and Service, a latency-profiler Deployment and an elastic trainer Deployment, all owned by the
``NASSearch``. A timer mirrors the controller's state (over gRPC, :mod:`gpunet.rpc`) into ``.status`` and scales
the pools; a pod watcher releases the leases of trainers lost to spot preemption at once.

Run it with ``python -m gpunet_operator`` (a thin wrapper of ``kopf run``). This package never imports torch:
it needs kopf, the kubernetes client and the gRPC stubs only.

Modules:
    settings      operator settings from the environment (images, polling, budgets)
    spec          validation of a NASSearch spec, defaults, live vs search-defining fields
    builders      pure functions: child manifests as plain dicts
    scaling       desired replicas of the pools
    status        the controller's SearchStatus -> NASSearch.status, under a byte budget
    preemption    how a trainer pod ended: preempted/evicted vs failed
    kube          a small async Kubernetes REST layer (kubernetes.aio's ApiClient, plain dicts)
    controller    the gRPC client of a search's controller
    handlers      the kopf handlers (thin: they call the modules above)
"""

GROUP = "nas.gpunet.dev"
VERSION = "v1alpha1"
PLURAL = "nassearches"
KIND = "NASSearch"
API_VERSION = f"{GROUP}/{VERSION}"

__version__ = "0.1.0"
