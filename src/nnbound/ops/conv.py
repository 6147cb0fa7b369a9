"""2-D convolutions (stride, padding, dilation, groups); the backward pass uses
``conv_transpose2d``. Node: params ``weight (out_c, in_c/groups, kh, kw)``, ``bias``; attrs
``stride``, ``padding``, ``dilation``, ``groups``."""

from nnbound.network.layers import Conv2d
from nnbound.ops.layer_backed import layer_op

CONV2D = layer_op(
    "conv2d",
    Conv2d,
    onnx=("Conv",),
    torch=("Conv2d", "conv2d", "convolution"),
    keras=("Conv2D",),
)

OPS = (CONV2D,)
