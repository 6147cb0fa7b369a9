"""Verification of VNN-LIB properties on ONNX networks.

* :mod:`~nnbound.verify.vnnlib`: the property reader (:func:`read_vnnlib`);
* alpha-CROWN (the ``alpha-crown`` bound method, with the split constraints, priors and warm
  starts branch and bound uses) lives in :mod:`nnbound.bounds.alpha_crown`; its
  ``alpha_crown_bounds`` and ``linear_bounds`` are re-exported here;
* :mod:`~nnbound.verify.bab`: input splitting and ReLU splitting;
* :mod:`~nnbound.verify.verifier`: the whole pipeline (:func:`verify`, :func:`verify_files`).
"""

from nnbound.bounds.alpha_crown import alpha_crown_bounds, linear_bounds
from nnbound.verify.verifier import (
    VerificationResult,
    VerifyOptions,
    format_counterexample,
    verify,
    verify_files,
)
from nnbound.verify.vnnlib import Disjunct, OutputGroup, Property, parse_vnnlib, read_vnnlib

__all__ = [
    "Disjunct",
    "OutputGroup",
    "Property",
    "VerificationResult",
    "VerifyOptions",
    "alpha_crown_bounds",
    "format_counterexample",
    "linear_bounds",
    "parse_vnnlib",
    "read_vnnlib",
    "verify",
    "verify_files",
]
