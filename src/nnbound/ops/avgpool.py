"""Average pooling: a linear operator (exact transpose for every padding / ceil_mode /
count_include_pad option). Node attrs: ``kernel_size``, ``stride``, ``padding``,
``ceil_mode``, ``count_include_pad``."""

from nnbound.network.layers import AvgPool2d
from nnbound.ops.layer_backed import layer_op

AVGPOOL2D = layer_op(
    "avgpool2d",
    AvgPool2d,
    onnx=("AveragePool", "GlobalAveragePool"),
    torch=("AvgPool2d", "avg_pool2d", "AdaptiveAvgPool2d", "adaptive_avg_pool2d"),
    keras=("AveragePooling2D", "GlobalAveragePooling2D"),
)

OPS = (AVGPOOL2D,)
