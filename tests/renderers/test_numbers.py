"""qaudit.renderers.numbers: the one spelling of every special value and the rule of each quantity."""

from __future__ import annotations

import math

import numpy as np
import pytest

from qaudit.renderers import numbers as num

INF, NAN = math.inf, math.nan
RULES = (num.sig, num.db, num.pct, num.points, num.frac, num.nats, num.mse, num.gate, num.exact)


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.__name__)
@pytest.mark.parametrize("value, text", [(None, "-"), (NAN, "NaN"), (INF, "∞"), (-INF, "-∞")])
def test_special_values_are_spelled_the_same_by_every_rule(rule, value, text):
    assert rule(value) == text


@pytest.mark.parametrize(
    "rule, value, text",
    [
        (num.db, 31.02673879115319, "31.0"),
        (num.db, 55.73, "55.7"),
        (num.pct, 0.9975, "99.75"),
        (num.pct, 0.0, "0.00"),
        (num.points, 0.25445292620864596, "0.25"),
        (num.frac, 0.8146, "0.81"),
        (num.nats, 0.06292080740421109, "0.0629"),
        (num.mse, 0.0003403062397694617, "3.40e-04"),
        (num.mse, 0.0, "0.00e+00"),
        (num.sig, 0.29187, "0.292"),
        (num.sig, 4.1123, "4.11"),
        (num.sig, 1.5e-07, "1.5e-07"),
        (num.sig, 123456.0, "1.23e+05"),
        (num.sig, 0.0, "0"),
        (num.gate, 18.25, "18.25"),
        (num.gate, 40.7741992440406, "40.77"),
        (num.exact, 0.1, "0.1"),
        (num.exact, 31.02673879115319, "31.02673879115319"),
    ],
)
def test_the_rule_of_each_quantity(rule, value, text):
    assert rule(value) == text


def test_a_value_that_rounds_to_zero_has_no_sign():
    assert num.db(-0.04) == "0.0"
    assert num.db(-0.0) == "0.0"
    assert num.mse(-0.0) == "0.00e+00"
    assert num.pct(-1e-9) == "0.00"
    assert num.sig(-0.0001) == "-0.0001"  # not zero: keeps its sign
    assert num.db(-0.06) == "-0.1"


def test_numpy_scalars_and_ints():
    assert num.db(np.float32(3.14159)) == "3.1"
    assert num.sig(np.int64(5)) == "5"
    assert num.sig(np.float64(np.nan)) == "NaN"
    assert num.is_missing(None) and num.is_missing(np.nan) and not num.is_missing(0.0)


def test_gate_numbers_get_the_digits_that_tell_measured_from_threshold():
    """4 significant digits, more when a value just under the threshold would print as it."""
    assert num.gate(27.99996, 28) == "27.99996" and num.gate(28, 27.99996) == "28"
    assert num.gate(27.5, 28) == "27.5"
    assert num.gate(28.0, 28.0) == "28"
    assert num.gate(math.nextafter(28.0, 0), 28.0) == "27.999999999999996"
    assert num.gate(INF, 28) == "∞" and num.gate(None, 28) == "-"


def test_metric_rules_follow_the_field():
    assert num.metric("sqnr_db", 31.0267) == num.db(31.0267) == "31.0"
    assert num.metric("top1_agreement", 0.9975) == "99.75"
    assert num.metric("qmse", 3.4e-4) == "3.40e-04"
    assert num.metric("a_range", 2.1534) == "2.15"  # no rule of its own: 3 significant digits
    assert set(num.METRIC_RULES.values()) <= set(RULES)
