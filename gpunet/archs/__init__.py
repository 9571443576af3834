"""NVIDIA's released GPUNets as layer lists, shipped with the package (see ``README.md`` in this folder).

``gpunet-0.json`` (0.65 ms on a GV100), ``gpunet-1.json`` (0.85 ms) and ``gpunet-2.json`` (1.75 ms) are
NVIDIA's own format; read them with :func:`gpunet.nvidia.load_architecture`. :mod:`gpunet.hub` registers
them with timm as ``gpunet_0``, ``gpunet_1`` and ``gpunet_2``.
"""

from __future__ import annotations

from pathlib import Path

#: The folder of the layer lists.
ARCHS_DIR = Path(__file__).resolve().parent
#: Released networks: name -> latency target in ms of NVIDIA's config (``configs/batch1/GV100/<ms>ms.json``).
RELEASED = {"gpunet-0": 0.65, "gpunet-1": 0.85, "gpunet-2": 1.75}


def released_path(name: str) -> Path:
    """The layer list of a released GPUNet (``"gpunet-0"``, ``"gpunet-1"`` or ``"gpunet-2"``).

    Raises:
        SpaceError: for another name.
    """
    if name not in RELEASED:
        from ..errors import SpaceError

        raise SpaceError("released GPUNet", name, tuple(RELEASED))
    return ARCHS_DIR / f"{name}.json"
