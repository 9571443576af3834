"""``NASSearch.status``, written in parts by server-side apply: one field manager per writer.

Each writer owns a part of the status and always applies all of it (a field it leaves out would be removed):

    gpunet-operator         the mirror of the controller: phase, counters (but podFailures), best per tier,
                            candidates, conditions Ready, ControllerReachable, Degraded (:mod:`.reconcile`)
    gpunet-operator-start   phase Pending/Failed and Ready when a search starts or its spec is invalid
                                                                                          (:mod:`.children`)
    gpunet-operator-spec    the SpecAccepted condition of live spec changes               (:mod:`.children`)
    gpunet-operator-pods    trainerPods (the pods whose loss was already handled) and counters.podFailures
                                                                                          (:mod:`.preemption`)

Conditions are a list-map keyed by ``type`` and ``counters`` a granular map, so the API server merges the
parts. A part that did not change since this writer last applied it is not sent again (no write, no etcd
revision, no watch event while a search is idle). The applies carry ``metadata.uid``: a search deleted and
recreated under the same name is never written with the old one's status.
"""

from __future__ import annotations

import asyncio
import copy
import json
from dataclasses import dataclass, field
from typing import Any, Mapping

from . import API_VERSION, KIND
from .api import KubeApi, is_not_found

MIRROR, START, SPEC, PODS = "gpunet-operator", "gpunet-operator-start", "gpunet-operator-spec", "gpunet-operator-pods"
#: Fields of ``status`` each writer owns (top-level keys; conditions are owned per type, see the docstring).
MIRROR_KEYS = ("phase", "message", "tiers", "latencyTable", "counters", "bestPerTier", "best", "candidates", "observedGeneration")
MIRROR_CONDITIONS = ("Ready", "ControllerReachable", "Degraded")


@dataclass
class _Search:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    applied: dict[str, dict[str, Any]] = field(default_factory=dict)


class StatusWriter:
    """Applies status parts; also holds a per-search lock for writers that read, change and write their part."""

    def __init__(self, api: KubeApi) -> None:
        self.api = api
        self._searches: dict[str, _Search] = {}
        self.bytes_sent = 0  #: JSON bytes of every status apply (the scale benchmark reads it)

    def _search(self, uid: str) -> _Search:
        return self._searches.setdefault(uid, _Search())

    def lock(self, uid: str) -> asyncio.Lock:
        """The lock of one search (by uid) for read-change-write sequences of one writer's part."""
        return self._search(uid).lock

    def last(self, uid: str, manager: str) -> dict[str, Any] | None:
        """What ``manager`` last applied to search ``uid`` in this process (None before its first apply)."""
        return copy.deepcopy(self._search(uid).applied.get(manager))

    async def apply(self, meta: Mapping[str, Any], manager: str, part: Mapping[str, Any]) -> bool:
        """Apply ``part`` as the whole status part of ``manager`` on the search of ``meta`` (name, namespace,
        uid). Returns False when it was unchanged (nothing sent) or the search is gone."""
        search = self._search(meta["uid"])
        if search.applied.get(manager) == part:
            return False
        body = {"apiVersion": API_VERSION, "kind": KIND,
                "metadata": {"name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"]}, "status": dict(part)}
        try:
            await self.api.apply(body, manager, subresource="status")
        except Exception as exc:
            if is_not_found(exc):
                self.forget(meta["uid"])
                return False
            raise
        self.bytes_sent += len(json.dumps(body, separators=(",", ":")))
        search.applied[manager] = copy.deepcopy(dict(part))
        return True

    def forget(self, uid: str) -> None:
        self._searches.pop(uid, None)


def owned_conditions(status: Mapping[str, Any], types: tuple[str, ...]) -> list[dict[str, Any]]:
    """The conditions of ``types`` in ``status`` (what a writer owns, e.g. seeded from the server after a restart)."""
    return [dict(c) for c in status.get("conditions") or [] if c.get("type") in types]


def mirror_part(status: Mapping[str, Any]) -> dict[str, Any]:
    """The mirror writer's part of a status read from the server (to carry on after an operator restart)."""
    part = {k: copy.deepcopy(status[k]) for k in MIRROR_KEYS if k in status}
    if isinstance(part.get("counters"), dict):
        part["counters"].pop("podFailures", None)
    conditions = owned_conditions(status, MIRROR_CONDITIONS)
    if conditions:
        part["conditions"] = conditions
    return part
