"""The GPUNet search space as data: presets, user overrides and the 41-integer encoding.

Source: GPUNet paper, section 3.1, Table 1 (the space) and Table 2 (the encoding).

Encoding
--------
A network is a vector of 41 integers in Table 2's order::

    [resolution,
     stage 0 filters,
     stage 1 kernel, stage 1 activation, stage 1 #layers,
     stage s filters, kernel, expansion, SE, activation, #layers   for s = 2 .. 7]

**Each digit holds the value itself, not an index into its range**: resolution 384, filters 112, kernel 5,
expansion 3, SE 0/1, #layers 6. The one exception is the activation, a name, which is stored as its index
in :data:`gpunet.arch.ACTIVATIONS` (0 = ReLU, 1 = Swish, Table 1's ``[R, S]`` order). Values make a
vector readable on its own and stable when a user narrows or widens a range; searchers that need
indices use :meth:`SearchSpace.to_indices` / :meth:`SearchSpace.from_indices`.

Stage 0 (the stem) always has one layer; its kernel and activation are fixed by the space because Table 2
encodes only its filters. Stage 1 shares stage 0's filters. A stage with 0 layers still carries its other
digits, so ``decode`` then ``encode`` round-trips every vector exactly.

Modules: :mod:`gpunet.space.encoding` (:class:`SearchSpace`) and :mod:`gpunet.space.presets` (:func:`load_space`).
"""

from .encoding import BLOCK_DIGITS, STAGE1_DIGITS, VECTOR_LENGTH, Digit, SearchSpace, StageRange
from .presets import load_space, preset_names

__all__ = ["BLOCK_DIGITS", "STAGE1_DIGITS", "VECTOR_LENGTH", "Digit", "SearchSpace", "StageRange", "load_space",
           "preset_names"]
