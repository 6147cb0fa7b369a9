"""The VNN-LIB reader: every construct of the competition's subset on hand-written properties,
the real VNN-COMP files, and malformed files rejected with an error naming the line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nnbound.errors import InputError
from nnbound.verify.vnnlib import parse_vnnlib, read_vnnlib

DATA = Path(__file__).resolve().parents[1] / "data" / "vnncomp"


def declare(n_in: int, n_out: int) -> str:
    xs = "".join(f"(declare-const X_{i} Real)\n" for i in range(n_in))
    ys = "".join(f"(declare-const Y_{j} Real)\n" for j in range(n_out))
    return xs + ys


def rows(group) -> list[tuple[list[float], float]]:
    """A group's rows as sorted ``(C row, d)`` pairs (order-free comparison)."""
    return sorted((list(map(float, c)), float(d)) for c, d in zip(group.C, group.d, strict=True))


def test_box_and_output_rows_with_variables_on_either_side() -> None:
    text = (
        declare(2, 3)
        + """
    (assert (<= X_0 1))
    (assert (>= X_0 -1))
    (assert (>= 2.5 X_1))   ; variable on the right
    (assert (<= -0.5 X_1))
    (assert (<= Y_0 Y_1))
    (assert (>= Y_2 3))
    """
    )
    prop = parse_vnnlib(text)
    assert (prop.num_inputs, prop.num_outputs) == (2, 3)
    (d,) = prop.disjuncts
    np.testing.assert_array_equal(d.lower, [-1.0, -0.5])
    np.testing.assert_array_equal(d.upper, [1.0, 2.5])
    (g,) = d.groups
    # Y_0 - Y_1 <= 0 and -Y_2 <= -3.
    assert rows(g) == sorted([([1.0, -1.0, 0.0], 0.0), ([0.0, 0.0, -1.0], -3.0)])
    assert not g.strict.any()


def test_literals_comments_and_multiline_asserts() -> None:
    text = """; a comment before anything
    (declare-const X_0 Real) (declare-const Y_0 Real) ; two declarations on one line
    (assert (and
        (>= X_0 -3)      ; integer, negative
        (<= X_0 4.25e-1) ; real with exponent
    ))
    (assert
      ; a comment inside an assert
      (<= Y_0 .5))
    """
    (d,) = parse_vnnlib(text).disjuncts
    assert d.lower[0] == -3.0 and d.upper[0] == 0.425
    assert rows(d.groups[0]) == [([1.0], 0.5)]


def test_or_of_ands_over_outputs_gives_groups_of_one_box() -> None:
    text = (
        declare(1, 3)
        + """
    (assert (>= X_0 0)) (assert (<= X_0 1))
    (assert (or
        (and (<= Y_0 Y_1) (<= Y_0 Y_2))
        (and (<= Y_1 Y_0))
    ))
    """
    )
    (d,) = parse_vnnlib(text).disjuncts
    assert len(d.groups) == 2
    assert rows(d.groups[0]) == sorted([([1.0, -1.0, 0.0], 0.0), ([1.0, 0.0, -1.0], 0.0)])
    assert rows(d.groups[1]) == [([-1.0, 1.0, 0.0], 0.0)]


def test_disjunction_of_input_boxes_distributes_over_output_groups() -> None:
    # ACAS Xu prop_6 shape: (or box1 box2) and (or y-group1 y-group2).
    text = (
        declare(1, 2)
        + """
    (assert (or (and (>= X_0 0) (<= X_0 1)) (and (>= X_0 2) (<= X_0 3))))
    (assert (or (and (<= Y_0 Y_1)) (and (<= Y_1 Y_0))))
    """
    )
    prop = parse_vnnlib(text)
    assert [(d.lower[0], d.upper[0]) for d in prop.disjuncts] == [(0.0, 1.0), (2.0, 3.0)]
    for d in prop.disjuncts:
        assert len(d.groups) == 2


def test_x_and_y_atoms_mixed_in_one_and() -> None:
    text = (
        declare(1, 1)
        + """
    (assert (or
        (and (>= X_0 0) (<= X_0 1) (>= Y_0 5))
        (and (>= X_0 1) (<= X_0 2) (<= Y_0 -5))
    ))
    """
    )
    prop = parse_vnnlib(text)
    assert len(prop.disjuncts) == 2
    first, second = prop.disjuncts
    assert (first.lower[0], first.upper[0]) == (0.0, 1.0)
    assert rows(first.groups[0]) == [([-1.0], -5.0)]
    assert rows(second.groups[0]) == [([1.0], -5.0)]


def test_linear_terms() -> None:
    text = (
        declare(1, 3)
        + """
    (assert (>= X_0 0)) (assert (<= X_0 1))
    (assert (<= (+ Y_0 (* -1 Y_1)) 0.5))
    (assert (>= (- Y_2 Y_0 1) (* 2 Y_1)))
    (assert (<= (- Y_0) (/ Y_2 4)))
    (assert (<= (* Y_1 3) (+ 1 2)))
    """
    )
    (d,) = parse_vnnlib(text).disjuncts
    expected = [
        ([1.0, -1.0, 0.0], 0.5),  # Y_0 - Y_1 <= 0.5
        ([1.0, 2.0, -1.0], -1.0),  # 2 Y_1 - (Y_2 - Y_0 - 1) <= 0
        ([-1.0, 0.0, -0.25], 0.0),  # -Y_0 - Y_2/4 <= 0
        ([0.0, 3.0, 0.0], 3.0),
    ]
    assert rows(d.groups[0]) == sorted(expected)


def test_strict_and_equality_atoms() -> None:
    text = (
        declare(2, 2)
        + """
    (assert (= X_0 0.5))
    (assert (<= 0 X_1 1))         ; a chain: 0 <= X_1 <= 1
    (assert (< Y_0 Y_1))
    (assert (> Y_0 -1))
    """
    )
    (d,) = parse_vnnlib(text).disjuncts
    assert d.lower.tolist() == [0.5, 0.0] and d.upper.tolist() == [0.5, 1.0]
    g = d.groups[0]
    assert g.strict.all()
    y = np.array([[0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]])
    # Strict rows: equality is not enough.
    assert g.holds(y).tolist() == [True, False, False]


def test_contradictory_conjunctions_are_dropped() -> None:
    text = (
        declare(1, 1)
        + """
    (assert (or
        (and (>= X_0 2) (<= X_0 1) (>= Y_0 0))
        (and (>= X_0 0) (<= X_0 1) (>= Y_0 0))
        (and (>= X_0 0) (<= X_0 1) (<= 1 0))
    ))
    """
    )
    (d,) = parse_vnnlib(text).disjuncts
    assert (d.lower[0], d.upper[0]) == (0.0, 1.0) and len(d.groups) == 1
    everything_empty = declare(1, 1) + "(assert (and (>= X_0 2) (<= X_0 1)))"
    assert parse_vnnlib(everything_empty).disjuncts == ()


def test_group_without_output_rows_means_every_input_violates() -> None:
    text = declare(1, 1) + "(assert (>= X_0 0)) (assert (<= X_0 1))"
    (d,) = parse_vnnlib(text).disjuncts
    (g,) = d.groups
    assert g.C.shape == (0, 1) and g.holds(np.zeros((3, 1))).all()


@pytest.mark.parametrize(
    ("body", "line", "words"),
    [
        ("(assert (<= X_7 1))", 4, "never declared"),
        ("(assert (<= Z_0 1))", 4, "unknown symbol"),
        ("(assert (<= (* Y_0 Y_0) 1))", 4, "non-linear"),
        ("(assert (<= (/ Y_0 X_0) 1))", 4, "constant divisor"),
        ("(assert (<= (+ X_0 Y_0) 1))", 4, "mixing X and Y"),
        ("(assert (<= (+ X_0 X_0 X_1) 1))", 4, "several inputs"),
        ("(assert (not (<= Y_0 1)))", 4, "not"),
        ("(assert (=> (<= Y_0 1) (<= Y_0 2)))", 4, "unsupported operator"),
        ("(assert (<= (exp Y_0) 1))", 4, "unsupported operator"),
        ("(assert (<= Y_0))", 4, "two terms"),
        ("(assert (<= Y_0 1) (<= Y_0 2))", 4, "exactly one formula"),
        ("(define-fun f () Real 1)", 4, "unsupported command"),
        ("(declare-const X_0 Real)", 4, "declared twice"),
        ("(declare-const X_3 Int)", 4, "only Real"),
        ("(declare-const W Real)", 4, "only X_<i>"),
        ("\n\n(assert (<= Y_0 1)", 6, "never closed"),
        ("(assert (<= Y_0 1)))", 4, "unbalanced"),
    ],
)
def test_malformed_properties_name_the_line(body: str, line: int, words: str) -> None:
    text = "; header\n(declare-const X_0 Real) (declare-const X_1 Real)\n(declare-const Y_0 Real)\n"
    text += body + "\n(assert (>= X_0 0)) (assert (<= X_0 1)) (assert (>= X_1 0))"
    text += " (assert (<= X_1 1))"
    with pytest.raises(InputError) as err:
        parse_vnnlib(text, "p.vnnlib")
    msg = str(err.value)
    assert f"p.vnnlib:{line}:" in msg and words in msg, msg


def test_missing_bound_names_the_variable_and_its_declaration() -> None:
    text = "(declare-const X_0 Real)\n(declare-const X_1 Real)\n(declare-const Y_0 Real)\n"
    text += "(assert (>= X_0 0)) (assert (<= X_0 1)) (assert (>= X_1 0))\n(assert (<= Y_0 0))"
    with pytest.raises(InputError, match=r"p\.vnnlib:2: X_1 has no upper bound"):
        parse_vnnlib(text, "p.vnnlib")


def test_gaps_in_indices_and_missing_outputs_are_errors() -> None:
    with pytest.raises(InputError, match="X_1 is missing"):
        parse_vnnlib("(declare-const X_0 Real)\n(declare-const X_2 Real)\n(declare-const Y_0 Real)")
    with pytest.raises(InputError, match="no output variables"):
        parse_vnnlib("(declare-const X_0 Real)\n(assert (<= X_0 1))")


def test_missing_file_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        read_vnnlib(tmp_path / "nope.vnnlib")


# -- the real competition files ----------------------------------------------------------------
def test_vnncomp_test_properties() -> None:
    nano = read_vnnlib(DATA / "test_nano.vnnlib")
    (d,) = nano.disjuncts
    assert (d.lower[0], d.upper[0]) == (-1.0, 1.0) and rows(d.groups[0]) == [([1.0], -1.0)]
    small = read_vnnlib(DATA / "test_small.vnnlib")
    assert rows(small.disjuncts[0].groups[0]) == [([-1.0], -100.0)]
    prop = read_vnnlib(DATA / "test_prop.vnnlib")
    (d,) = prop.disjuncts
    assert (prop.num_inputs, prop.num_outputs) == (5, 5)
    assert d.lower[3] == 0.3 and d.upper[3] == 0.5
    (g,) = d.groups
    assert g.C.shape == (4, 5) and (g.C[:, 0] == 1).all() and (g.d == 0).all()


@pytest.mark.parametrize(
    ("name", "boxes", "groups", "rows_per_group"),
    [
        ("prop_1", 1, 1, [1]),
        ("prop_2", 1, 1, [4]),
        ("prop_5", 1, 4, [1, 1, 1, 1]),
        ("prop_6", 2, 4, [1, 1, 1, 1]),
        ("prop_7", 1, 2, [3, 3]),
        ("prop_8", 1, 3, [2, 2, 2]),
    ],
)
def test_acasxu_properties(name: str, boxes: int, groups: int, rows_per_group: list[int]) -> None:
    prop = read_vnnlib(DATA / "acasxu" / f"{name}.vnnlib")
    assert len(prop.disjuncts) == boxes
    for d in prop.disjuncts:
        assert len(d.groups) == groups
        assert [g.C.shape[0] for g in d.groups] == rows_per_group
        assert (d.lower <= d.upper).all()
    if name == "prop_6":
        # The two boxes differ in X_1's sign only.
        a, b = prop.disjuncts
        assert a.lower[1] > 0 > b.upper[1]
        np.testing.assert_array_equal(np.delete(a.lower, 1), np.delete(b.lower, 1))
