"""Operators of the graph IR, one file per family (see :mod:`nnbound.ops.base` for the
contract and :mod:`nnbound.ops.registry` for the name lookup)."""
