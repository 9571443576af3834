"""gpunet-nas: neural architecture search for CNNs tiered by measured GPU latency (GPUNet reproduction).

Importing ``gpunet`` is cheap and pulls in no torch: the search space, architectures and the wire contract
can be used by the operator and by tools without a deep-learning stack. Torch-dependent modules
(:mod:`gpunet.model`, training, latency backends) are imported on use.
"""

from importlib.metadata import PackageNotFoundError, version as _version

from .arch import Architecture, LayerSpec, StageConfig
from .errors import GpunetError, NotInSpaceError, SpaceError
from .space import SearchSpace, load_space, preset_names

try:  # one source of truth: pyproject.toml, through the installed distribution's metadata
    __version__ = _version("gpunet-nas")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
__all__ = [
    "Architecture",
    "GpunetError",
    "LayerSpec",
    "NotInSpaceError",
    "SearchSpace",
    "SpaceError",
    "StageConfig",
    "load_space",
    "preset_names",
]
