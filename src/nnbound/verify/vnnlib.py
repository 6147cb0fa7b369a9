"""A reader for VNN-LIB properties (the SMT-LIB subset of the VNN competition).

A property file declares real constants ``X_0 .. X_{n-1}`` (the network's flattened input)
and ``Y_0 .. Y_{m-1}`` (its flattened output) and asserts formulas over them. The conjunction of
the asserts describes the *counterexample* region: the property holds (``unsat``) when no input
in the input region maps to an output satisfying the output constraints.

The reader parses s-expressions (not lines), so asserts may span lines, share lines, carry
``;`` comments anywhere and use integer, real or negative literals. Supported formulas:

* ``(and F ...)``, ``(or F ...)`` nested freely (expanded to a disjunction of conjunctions);
* atoms ``(<= s t)``, ``(>= s t)``, ``(< s t)``, ``(> s t)``, ``(= s t)`` (chains allowed), with
  linear terms ``s``, ``t``: a variable, a literal, ``(+ t ...)``, ``(- t ...)``, ``(* c t)``
  and ``(/ t c)`` with constant ``c``;
* each atom constrains either one input (a bound on ``X_i``, variables on either side) or only
  outputs (a linear row ``c . Y <= d``).

The result groups the disjunction by input box: a list of :class:`Disjunct`, each an input box
and the output constraint groups (each group a conjunction ``C y <= d``) whose union is the
counterexample region over that box. Anything outside the subset raises
:class:`~nnbound.errors.InputError` naming the file and line.
"""

from __future__ import annotations

import functools
import itertools
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from nnbound.errors import InputError

# Expanding nested (or ...) inside (and ...) multiplies out; beyond this many conjunctions the
# property is not in the spirit of the format (and would not fit in memory).
MAX_CONJUNCTIONS = 20_000

_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
_VARIABLE = re.compile(r"^([XY])_(\d+)$")
_IGNORED_COMMANDS = ("set-logic", "set-info", "set-option", "check-sat", "get-model", "exit")


@dataclass(frozen=True, eq=False)
class OutputGroup:
    """One conjunction of output constraints ``C y <= d`` (``C`` ``(k, m)``, ``d`` ``(k,)``).

    ``strict[i]`` marks rows that came from ``<`` / ``>``: a counterexample must satisfy them
    strictly. ``k = 0`` means every input of the box is a counterexample.
    """

    C: np.ndarray
    d: np.ndarray
    strict: np.ndarray

    def __iter__(self):  # lets ``C, d = group`` read naturally
        return iter((self.C, self.d))

    def holds(self, y: np.ndarray, tol: float = 0.0) -> np.ndarray:
        """Which outputs ``y`` (``(P, m)``) satisfy every row (``tol`` loosens each row)."""
        if self.C.shape[0] == 0:
            return np.ones(y.shape[0], dtype=bool)
        lhs = y @ self.C.T
        ok = np.where(self.strict, lhs < self.d + tol, lhs <= self.d + tol)
        return ok.all(axis=1)


@dataclass(frozen=True, eq=False)
class Disjunct:
    """An input box ``lower <= x <= upper`` (each ``(n,)``, flattened input) and the output
    groups that make an input of the box a counterexample (their union)."""

    lower: np.ndarray
    upper: np.ndarray
    groups: tuple[OutputGroup, ...]


@dataclass(frozen=True, eq=False)
class Property:
    """A parsed VNN-LIB property: the counterexample region is the union over ``disjuncts``.

    An empty ``disjuncts`` means the region is empty (every conjunction was contradictory),
    so the property holds.
    """

    num_inputs: int
    num_outputs: int
    disjuncts: tuple[Disjunct, ...]
    source: str = "<string>"


# -- s-expressions ----------------------------------------------------------------------------
# Named tuples: a megabyte property makes hundreds of thousands of them.
class _Atom(NamedTuple):
    text: str
    line: int


class _List(NamedTuple):
    items: tuple[_Atom | _List, ...]
    line: int


_Node = _Atom | _List


# A newline, a comment, a parenthesis or a symbol; other whitespace is skipped between
# matches. One regular-expression scan instead of a Python loop per character: nn4sys
# properties run to megabytes.
_TOKEN = re.compile(r"\n|;[^\n]*|[()]|[^\s();]+")


def _parse_sexprs(text: str, source: str) -> list[_Node]:
    stack: list[tuple[list[_Node], int]] = []
    top: list[_Node] = []
    current = top  # the list the next node joins
    line = 1
    for m in _TOKEN.finditer(text):
        tok = m.group()
        first = tok[0]
        if first == "(":
            stack.append((current, line))
            current = []
        elif first == ")":
            if not stack:
                raise InputError(f"{source}:{line}: unbalanced ')'")
            parent, start = stack.pop()
            parent.append(_List(tuple(current), start))
            current = parent
        elif first == "\n":
            line += 1
        elif first == ";":
            continue
        elif first in '|"':
            raise InputError(f"{source}:{line}: quoted symbols and strings are not supported")
        else:
            current.append(_Atom(tok, line))
    if stack:
        raise InputError(f"{source}:{stack[-1][1]}: '(' is never closed")
    return top


# -- linear terms ------------------------------------------------------------------------------
# A linear expression: coefficients per variable (("X", i) or ("Y", j)) plus a constant.
_Linear = tuple[dict[tuple[str, int], float], float]


class _Reader:
    def __init__(self, source: str) -> None:
        self.source = source
        self.declared: dict[tuple[str, int], int] = {}

    def error(self, line: int, message: str) -> InputError:
        return InputError(f"{self.source}:{line}: {message}")

    # declarations -------------------------------------------------------------------------
    def declare(self, node: _List) -> None:
        items = node.items
        if len(items) != 3 or not all(isinstance(t, _Atom) for t in items[1:]):
            raise self.error(node.line, "expected (declare-const NAME Real)")
        name, sort = items[1], items[2]
        assert isinstance(name, _Atom) and isinstance(sort, _Atom)
        if sort.text != "Real":
            raise self.error(node.line, f"{name.text} has sort {sort.text}; only Real is supported")
        m = _VARIABLE.match(name.text)
        if m is None:
            raise self.error(
                node.line, f"variable {name.text!r}: only X_<i> (inputs) and Y_<j> (outputs) exist"
            )
        key = (m.group(1), int(m.group(2)))
        if key in self.declared:
            raise self.error(node.line, f"{name.text} is declared twice")
        self.declared[key] = node.line

    # terms --------------------------------------------------------------------------------
    def term(self, node: _Node) -> _Linear:
        if isinstance(node, _Atom):
            value = _symbol(node.text)
            if isinstance(value, float):
                return {}, value
            if value is None:
                raise self.error(node.line, f"unknown symbol {node.text!r} in a term")
            key = value
            if key not in self.declared:
                raise self.error(node.line, f"variable {node.text} is used but never declared")
            return {key: 1.0}, 0.0
        if not node.items or not isinstance(node.items[0], _Atom):
            raise self.error(node.line, "a term must be a variable, a number or (op ...)")
        op = node.items[0].text
        args = [self.term(t) for t in node.items[1:]]
        if not args:
            raise self.error(node.line, f"({op}) needs arguments")
        if op == "+":
            return _combine(args, [1.0] * len(args))
        if op == "-":
            if len(args) == 1:
                return _combine(args, [-1.0])
            return _combine(args, [1.0] + [-1.0] * (len(args) - 1))
        if op == "*":
            variable = [a for a in args if a[0]]
            if len(variable) > 1:
                raise self.error(
                    node.line, "non-linear term: (*) of several variables is outside VNN-LIB"
                )
            factor = math.prod(a[1] for a in args if not a[0])
            if not variable:
                return {}, factor
            coefs, const = variable[0]
            return {k: v * factor for k, v in coefs.items()}, const * factor
        if op == "/":
            if len(args) != 2 or args[1][0]:
                raise self.error(node.line, "non-linear term: (/ t c) needs a constant divisor")
            c = args[1][1]
            if c == 0:
                raise self.error(node.line, "division by zero")
            return {k: v / c for k, v in args[0][0].items()}, args[0][1] / c
        raise self.error(node.line, f"unsupported operator {op!r} in a term")

    # formulas -> disjunctive normal form --------------------------------------------------
    def formula(self, node: _Node) -> list[list[tuple]]:
        """The formula as a list of conjunctions, each a list of constraint records."""
        if isinstance(node, _Atom):
            if node.text == "true":
                return [[]]
            if node.text == "false":
                return []
            raise self.error(node.line, f"expected a formula, got {node.text!r}")
        if not node.items or not isinstance(node.items[0], _Atom):
            raise self.error(node.line, "expected a formula (op ...)")
        op = node.items[0].text
        children = node.items[1:]
        if op == "and":
            result: list[list[tuple]] = [[]]
            for child in children:
                result = _conjoin(result, self.formula(child), node.line, self.source)
            return result
        if op == "or":
            if not children:
                raise self.error(node.line, "(or) needs at least one argument")
            out: list[list[tuple]] = []
            for child in children:
                out.extend(self.formula(child))
            if len(out) > MAX_CONJUNCTIONS:
                raise self.error(node.line, f"more than {MAX_CONJUNCTIONS} disjuncts")
            return out
        if op in ("<=", ">=", "<", ">", "="):
            if len(children) < 2:
                raise self.error(node.line, f"({op}) needs two terms")
            if (
                len(children) == 2
                and op in ("<=", ">=")
                and all(isinstance(t, _Atom) for t in children)
            ):
                fast = self.atom_bound(op, children, node.line)  # type: ignore[arg-type]
                if fast is not None:
                    return [[fast]]
            terms = [self.term(t) for t in children]
            records: list[tuple] = []
            for left, right in itertools.pairwise(terms):
                diff = _combine([left, right], [1.0, -1.0])  # left - right
                neg = _combine([left, right], [-1.0, 1.0])
                if op in ("<=", "<"):
                    records.append(self.constraint(diff, op == "<", node.line))
                elif op in (">=", ">"):
                    records.append(self.constraint(neg, op == ">", node.line))
                else:
                    records.append(self.constraint(diff, False, node.line))
                    records.append(self.constraint(neg, False, node.line))
            return [records]
        if op == "not":
            raise self.error(node.line, "(not ...) is outside the VNN-LIB subset; use <, >")
        raise self.error(node.line, f"unsupported operator {op!r} in a formula")

    def atom_bound(self, op: str, children: list[_Atom], line: int) -> tuple | None:
        """``(<= X_i c)``-style bounds of one declared input by a number, the bulk of large
        properties, without building linear terms; None for any other pair of atoms."""
        left, right = _symbol(children[0].text), _symbol(children[1].text)
        if isinstance(left, tuple) and isinstance(right, float):
            var, value, upper = left, right, op == "<="
        elif isinstance(right, tuple) and isinstance(left, float):
            var, value, upper = right, left, op == ">="
        else:
            return None
        if var[0] != "X" or var not in self.declared:
            return None
        return ("xhi" if upper else "xlo", var[1], value, line)

    def constraint(self, expr: _Linear, strict: bool, line: int) -> tuple:
        """Record of ``expr <= 0`` (``< 0`` if strict)."""
        coefs, const = expr
        coefs = {k: v for k, v in coefs.items() if v != 0.0}
        kinds = {k[0] for k in coefs}
        if not coefs:
            ok = const < 0 if strict else const <= 0
            return ("true",) if ok else ("false",)
        if kinds == {"X"}:
            if len(coefs) > 1:
                raise self.error(
                    line,
                    "a constraint over several inputs is outside the VNN-LIB subset "
                    "(input constraints must bound one X variable)",
                )
            (((_, i), a),) = coefs.items()
            value = -const / a
            # A strict input bound is relaxed to a closed one: for unsat this proves more
            # (a larger region), and counterexamples are checked against the closed box.
            return ("xhi" if a > 0 else "xlo", i, value, line)
        if kinds == {"Y"}:
            return ("y", coefs, -const, strict, line)
        raise self.error(line, "a constraint mixing X and Y variables is outside the subset")


@functools.lru_cache(maxsize=65536)
def _symbol(text: str) -> float | tuple[str, int] | None:
    """A term atom: its number, its variable ``(kind, index)``, or None (memoised: the same
    few symbols recur throughout a file)."""
    if _NUMBER.match(text):
        return float(text)
    m = _VARIABLE.match(text)
    return None if m is None else (m.group(1), int(m.group(2)))


def _combine(args: list[_Linear], weights: list[float]) -> _Linear:
    coefs: dict[tuple[str, int], float] = {}
    const = 0.0
    for (c, k), w in zip(args, weights, strict=True):
        for key, v in c.items():
            coefs[key] = coefs.get(key, 0.0) + w * v
        const += w * k
    return coefs, const


def _conjoin(
    left: list[list[tuple]], right: list[list[tuple]], line: int, source: str
) -> list[list[tuple]]:
    if len(right) == 1:
        for conj in left:  # the common case (one atom): extend in place, no copies
            conj.extend(right[0])
        return left
    if len(left) * len(right) > MAX_CONJUNCTIONS:
        raise InputError(
            f"{source}:{line}: the formula expands to more than {MAX_CONJUNCTIONS} disjuncts"
        )
    return [a + b for a in left for b in right]


def parse_vnnlib(text: str, source: str = "<string>") -> Property:
    """Parse the text of a VNN-LIB property (see the module docstring)."""
    reader = _Reader(source)
    asserts: list[_List] = []
    for node in _parse_sexprs(text, source):
        if not isinstance(node, _List) or not node.items or not isinstance(node.items[0], _Atom):
            raise reader.error(node.line, "expected a command (declare-const ...) or (assert ...)")
        cmd = node.items[0].text
        if cmd == "declare-const":
            reader.declare(node)
        elif cmd == "assert":
            if len(node.items) != 2:
                raise reader.error(node.line, "(assert F) takes exactly one formula")
            asserts.append(node)
        elif cmd in _IGNORED_COMMANDS:
            continue
        else:
            raise reader.error(node.line, f"unsupported command {cmd!r}")
    n_in, n_out = (_count(reader, kind) for kind in ("X", "Y"))
    if n_in == 0:
        raise InputError(f"{source}: no input variables X_<i> are declared")
    if n_out == 0:
        raise InputError(f"{source}: no output variables Y_<j> are declared")
    conjunctions: list[list[tuple]] = [[]]
    for node in asserts:
        conjunctions = _conjoin(conjunctions, reader.formula(node.items[1]), node.line, source)
    # Group conjunctions by their input box (in order of first appearance).
    boxes: dict[bytes, tuple[np.ndarray, np.ndarray, list[OutputGroup]]] = {}
    for conj in conjunctions:
        lower = np.full(n_in, -np.inf)
        upper = np.full(n_in, np.inf)
        rows: list[np.ndarray] = []
        rhs: list[float] = []
        strict: list[bool] = []
        feasible = True
        for rec in conj:
            kind = rec[0]
            if kind == "false":
                feasible = False
            elif kind == "xlo":
                lower[rec[1]] = max(lower[rec[1]], rec[2])
            elif kind == "xhi":
                upper[rec[1]] = min(upper[rec[1]], rec[2])
            elif kind == "y":
                row = np.zeros(n_out)
                for (_, j), v in rec[1].items():
                    row[j] += v
                rows.append(row)
                rhs.append(rec[2])
                strict.append(rec[3])
        if not feasible or bool((lower > upper).any()):
            continue  # a contradictory conjunction (or an empty box) holds no counterexample
        for i in range(n_in):
            for side, vals in (("lower", lower), ("upper", upper)):
                if not math.isfinite(vals[i]):
                    raise InputError(
                        f"{source}:{reader.declared[('X', i)]}: X_{i} has no {side} bound in "
                        "some disjunct (every input must lie in a bounded box)"
                    )
        group = OutputGroup(
            np.array(rows).reshape(len(rows), n_out),
            np.array(rhs, dtype=np.float64),
            np.array(strict, dtype=bool),
        )
        key = lower.tobytes() + upper.tobytes()
        if key not in boxes:
            boxes[key] = (lower, upper, [])
        boxes[key][2].append(group)
    disjuncts = tuple(Disjunct(lo, hi, tuple(groups)) for lo, hi, groups in boxes.values())
    return Property(n_in, n_out, disjuncts, source)


def _count(reader: _Reader, kind: str) -> int:
    indices = sorted(i for k, i in reader.declared if k == kind)
    for expected, i in enumerate(indices):
        if i != expected:
            raise InputError(
                f"{reader.source}:{reader.declared[(kind, i)]}: {kind}_{i} declared but "
                f"{kind}_{expected} is missing (indices must be 0..n-1)"
            )
    return len(indices)


def read_vnnlib(path: str | Path) -> Property:
    """Read and parse a ``.vnnlib`` file (see :func:`parse_vnnlib`)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"property file not found: {p}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read property file {p}: {exc}") from None
    return parse_vnnlib(text, str(p))


__all__ = ["Disjunct", "OutputGroup", "Property", "parse_vnnlib", "read_vnnlib"]
