"""``y = (x - mean) / std`` with constant ``mean`` / ``std`` broadcast over the input (input
normalisation; also any per-channel affine map with a nonzero scale). Node: params ``mean``,
``std``."""

from nnbound.network.layers import Normalize
from nnbound.ops.layer_backed import layer_op

NORMALIZE = layer_op("normalize", Normalize, torch=("Normalize",))

OPS = (NORMALIZE,)
