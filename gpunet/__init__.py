"""gpunet-nas: neural architecture search for CNNs tiered by measured GPU latency (GPUNet reproduction).

Importing ``gpunet`` is cheap and pulls in no torch: the search space, architectures and the wire contract
can be used by the operator and by tools without a deep-learning stack. Torch-dependent modules
(:mod:`gpunet.model`, training, latency backends) are imported on use.
"""

from .arch import Architecture, LayerSpec, StageConfig
from .errors import NotInSpaceError, SpaceError
from .space import SearchSpace, load_space, preset_names

__version__ = "0.1.0"
__all__ = [
    "Architecture",
    "LayerSpec",
    "NotInSpaceError",
    "SearchSpace",
    "SpaceError",
    "StageConfig",
    "load_space",
    "preset_names",
]
