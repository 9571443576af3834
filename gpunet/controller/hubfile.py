"""The model hub's file format, read back without torch: ``hub.json`` (format :data:`HUB_FORMAT`, described in
:mod:`.outputs`, which writes it), the weights folder and the weights files' ``format``, and the one reader of a
hub (:func:`read_hub`) and of one of its tiers (:func:`select_tier`). :mod:`gpunet.hub`, the CLI and the benchmarks
read hubs through these.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..errors import GpunetError

HUB_FILE = "hub.json"
HUB_FORMAT = "gpunet-hub/v1"
#: Folder of the tier winners' weights, inside the hub's folder.
WEIGHTS_DIR = "weights"
#: ``format`` in the metadata of a weights file.
WEIGHTS_FORMAT = "gpunet-hub-weights/v1"


class HubError(GpunetError, ValueError):
    """A hub (``hub.json``) or weights file that cannot be used, or a tier it does not have; the field names the
    file or the argument."""


def hub_path(source: str | Path) -> Path:
    """``hub.json`` of a run directory, or ``source`` itself when it is a file or a ``.json`` path."""
    path = Path(source)
    return path if path.suffix == ".json" or path.is_file() else path / HUB_FILE


def read_hub(source: str | Path) -> dict[str, Any]:
    """Read and check the hub of a run directory or a ``hub.json`` path (no torch needed).

    Raises:
        HubError: the file is missing, is not JSON, or does not hold a hub.
    """
    path = hub_path(source)
    try:
        hub = json.loads(path.read_text())
    except FileNotFoundError:
        raise HubError(str(path), reason="no such file; a run writes it when its search has ended "
                                         "(see `gpunet status`)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HubError(str(path), reason=f"unreadable ({exc})") from None
    if not isinstance(hub, dict) or not isinstance(hub.get("tiers"), list) or not all(isinstance(t, dict) for t in hub["tiers"]):
        raise HubError(str(path), reason="not a model hub", expected='an object with a "tiers" list of objects')
    if hub.get("format", HUB_FORMAT) != HUB_FORMAT:
        raise HubError(f"{path}: format", hub.get("format"), repr(HUB_FORMAT))
    return hub


def select_tier(hub: dict[str, Any], tier: int | float | None, where: str = "hub") -> dict[str, Any]:
    """The entry of one latency tier of ``hub``: ``tier`` is an index (int), a target latency in ms (float), or
    None for the only tier with a trained network.

    Raises:
        HubError: no such tier, or the tier has no trained network.
    """
    tiers = hub["tiers"]
    targets = [t.get("target_ms") for t in tiers]
    expected = f"a tier index 0..{len(tiers) - 1} or a target in ms of {targets}"
    if tier is None:
        trained = [i for i, t in enumerate(tiers) if t.get("candidate_id")]
        if len(trained) != 1:
            raise HubError("tier", None, expected, reason=f"{where} has {len(trained)} tiers with a trained network")
        index = trained[0]
    elif isinstance(tier, bool) or not isinstance(tier, (int, float)):
        raise HubError("tier", tier, expected)
    elif isinstance(tier, int):
        if not 0 <= tier < len(tiers):
            raise HubError("tier", tier, expected)
        index = tier
    else:
        matches = [i for i, t in enumerate(targets) if isinstance(t, (int, float)) and math.isclose(t, tier, rel_tol=1e-9)]
        if not matches:
            raise HubError("tier", tier, expected)
        index = matches[0]
    entry = tiers[index]
    if not entry.get("candidate_id"):
        raise HubError("tier", tier, reason=f"tier {index} ({targets[index]} ms) of {where} has no trained network")
    return {"index": index, **entry}
