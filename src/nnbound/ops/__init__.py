# ruff: noqa: E501  (the operator table below is wider than a line)
"""Operators of the graph IR, one file per family (see :mod:`nnbound.ops.base` for the
contract and :mod:`nnbound.ops.registry` for the name lookup).

Node conventions (importers produce them; shapes and axes are per sample, without the batch
axis, so an ONNX axis ``k >= 1`` is ``k - 1`` here):

| op | inputs | params | attrs |
|---|---|---|---|
| dense | x (flat) | weight (out, in), bias (out,) | |
| conv2d | x (C, H, W) | weight, bias | stride, padding, dilation, groups |
| conv_transpose2d | x (C, H, W) | weight (in_c, out_c/groups, kh, kw), bias | stride, padding, output_padding, dilation, groups |
| avgpool2d / maxpool2d | x (C, H, W) | | kernel_size, stride, padding, (dilation), ceil_mode, (count_include_pad) |
| normalize | x | mean, std | |
| scale | x | scale, shift (each optional, broadcast to x) | |
| flatten / reshape | x | | (shape) |
| transpose | x | | perm |
| add / sub | add: x1 .. xk (k >= 1), sub: x, y (broadcast) | constant (optional, added) | |
| concat | x1 .. xk | | axis |
| slice | x | | starts, ends, steps, axes |
| gather | x | | axis, indices (nested tuple of ints) |
| pad | x | | pads ((before, after) per axis), value, (mode: constant only) |
| resize_nearest | x (C, H, W) | | scales (integer factors of H, W) |
| reduce_sum / reduce_mean | x | | axes (None: all), keepdims (default true) |
| mul / div / matmul | x, y (both computed; mul / div broadcast, matmul (.., m, k) @ (.., k, n)) | | |
| softmax | x | | axis |
| argmax | x | | axis, keepdims (default true) |
| onehot | indices | | depth, axis (of the new axis in the output), values (off, on) |
| equal | x, y (broadcast) or x alone | constant (with x alone) | |
| relu, leaky_relu, brelu, tanh, sigmoid, arctan, softplus, elu, gelu, ... | x | | (alpha) |
| exp, log, reciprocal, sign, trunc, floor, ceil, round (graph-only, no chain activation) | x | | |
"""
