"""The GPUNet search space as data: presets, user overrides and the 41-integer encoding (plus block digits).

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

Extended encoding (``gpunet-x``, ``gpunet-x-tiny``)
-------------------------------------------------
EfficientNet-X ("Searching for Fast Model Families on Datacenter Accelerators", Li et al., CVPR 2021, section 3)
adds a space-to-depth stem and hybrid stages that mix fused IRBs (vanilla convolutions) and IRBs (depthwise
convolutions). A stage may therefore search its block type; each such stage adds one **block digit** after
Table 2's 41, in stage order, so the first 41 digits keep their Table 2 meaning. A block digit holds the index
of the block type in :data:`gpunet.arch.BLOCK_TYPES`: 0 = conv, 1 = fused IRB, 2 = IRB, 3 = space-to-depth stem
(``s2d_conv``: ``PixelUnshuffle(2)`` then a stride-1 convolution). ``gpunet-x`` has 48 digits::

    0       resolution                         224..512 step 32
    1       stage 0 filters                    24, 32
    2-4     stage 1 kernel, activation, #layers
    5-40    stages 2-7: filters, kernel, expansion, SE, activation, #layers (6 digits each, Table 2)
    41      stage 0 block                      0 = conv (3x3 stride 2), 3 = s2d_conv (space-to-depth 2 + 3x3 stride 1)
    42-47   stage 2..7 block                   1 = fused IRB, 2 = IRB

``gpunet-x-tiny`` has the same 48 digits over ``gpunet-tiny``'s ranges, with a stride-2 stem. A stage's block
choices share their shape rule and other digits (:data:`gpunet.space.presets.STAGE_BLOCK_CHOICES`: the stem
chooses among conv and s2d_conv, stages 2-7 among fused IRB and IRB, stage 1 is a conv), and always include
Table 1's type. The same choices can be added to any preset by an override, e.g. ``stages: {4: {block: [irb,
fused_irb]}}`` (42 digits). A space-to-depth stem needs stride 2 and even resolutions. The ``gpunet`` preset
has no block digits: its vectors stay Table 2's 41 integers.

Modules: :mod:`gpunet.space.encoding` (:class:`SearchSpace`) and :mod:`gpunet.space.presets` (:func:`load_space`).
"""

from .encoding import BLOCK_DIGITS, STAGE1_DIGITS, VECTOR_LENGTH, Digit, SearchSpace, StageRange
from .presets import load_space, preset_names

__all__ = ["BLOCK_DIGITS", "STAGE1_DIGITS", "VECTOR_LENGTH", "Digit", "SearchSpace", "StageRange", "load_space",
           "preset_names"]
