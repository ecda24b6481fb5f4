"""The fix search's logic on an oracle executor (a rule says which sets pass, or which ORT refuses):
1-minimal results in the cost order, refused changes split off and retried, the budget. The measurements
themselves are the deployed model's (tests/remedy/test_fix.py); here only the search is under test."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from qaudit.remedy.search import culprits, search
from qaudit.remedy.sensitivity import Candidate, Change, Measured

F = [Change("float_node", f"f{i}") for i in range(10)]
T = [Change("tensor_16bit", f"n{i}", f"t{i}", "uint16") for i in range(20)]
P = [Change("per_channel", f"n{i}", f"w{i}") for i in range(10)]
REFUSAL = "Only an existing tensor can be modified, '{}_intermediate' is not."


class Oracle:
    """An executor whose ``map`` measures a set by ``passes(set)`` (and ``refuses(set)``, ORT's message)."""

    def __init__(self, passes, refuses=lambda s: ""):
        self.passes, self.refuses, self.seen = passes, refuses, []

    def map(self, fn, workspaces, sets):
        out = []
        for s in sets:
            key = frozenset(s)
            self.seen.append(key)
            error = self.refuses(key)
            if error:
                out.append(Measured(tuple(s), (), None, math.inf, 0.0, error))
                continue
            ok = self.passes(key)
            out.append(Measured(tuple(s), (), SimpleNamespace(passed=ok, failures=()), 0.0 if ok else 1.0, 0.0))
        return out


def ranked(*changes) -> list[Candidate]:
    return [Candidate(c, float(len(changes) - i), "test") for i, c in enumerate(changes)]


def mixed() -> list[Candidate]:
    """40 candidates, the kinds interleaved as a noise ranking interleaves them."""
    return ranked(*(c for trio in zip(F, T[:10], P, strict=True) for c in trio), *T[10:])


def assert_one_minimal(result, oracle) -> None:
    """Every single removal from the result was measured and fails (the 1-minimality the search states)."""
    assert result.met and result.minimal
    measured = {frozenset(m.changes): m for m in result.trail}
    for c in result.changes:
        without = frozenset(result.changes) - {c}
        assert without in measured and not measured[without].passed, c
        assert not oracle.passes(without)


def test_the_result_is_1_minimal_and_prefers_16_bit_tensors_to_nodes_in_float():
    # two ways to pass: f1 and p2 (a node in float), or t3, t7, t15 and p2 (none): the second is cheaper
    need = [{F[1], P[2]}, {T[3], T[7], T[15], P[2]}]
    oracle = Oracle(lambda s: any(n <= s for n in need))
    result = search(None, mixed(), oracle)
    assert set(result.changes) == need[1]
    assert_one_minimal(result, oracle)
    assert result.n_measured <= 40


def test_a_set_only_nodes_in_float_save_keeps_the_fewest_nodes():
    need = [{F[2], F[5]}, {F[0], F[1], F[5], F[8]}]
    oracle = Oracle(lambda s: any(n <= s for n in need))
    result = search(None, mixed(), oracle)
    assert set(result.changes) == need[0]
    assert_one_minimal(result, oracle)


def test_a_change_ort_refuses_is_split_off_with_its_message_and_the_set_measured_without_it():
    oracle = Oracle(lambda s: {T[3], T[7]} <= s, lambda s: REFUSAL.format("t5") if T[5] in s else "")
    result = search(None, mixed(), oracle)
    assert set(result.changes) == {T[3], T[7]}
    assert result.refused == ((T[5], REFUSAL.format("t5")),)
    assert_one_minimal(result, oracle)
    assert not any(T[5] in s for s in oracle.seen[oracle.seen.index(max(oracle.seen, key=len)) + 1 :] if len(s) > 1)


def test_a_refusal_naming_no_change_is_found_by_halving():
    oracle = Oracle(lambda s: {T[3], T[7]} <= s, lambda s: "ORT failed somewhere" if T[5] in s else "")
    result = search(None, mixed(), oracle)
    assert result.refused == ((T[5], "ORT failed somewhere"),)
    assert set(result.changes) == {T[3], T[7]}
    assert_one_minimal(result, oracle)


def test_refused_sets_do_not_end_the_search_when_every_16_bit_set_is_refused():
    """Every set with a 16-bit tensor refused (PP-OCR rec before ORT quirk 63 was handled): the search
    goes on to the sets without them and finds the per-channel remedy."""
    oracle = Oracle(lambda s: P[4] in s, lambda s: "refused" if any(c.kind == "tensor_16bit" for c in s) else "")
    result = search(None, mixed(), oracle, budget=200)
    assert result.changes == (P[4],) and result.met
    assert {c for c, _ in result.refused} <= set(T)


def test_the_budget_stops_the_pruning_with_a_passing_set_that_may_not_be_minimal():
    need = {T[0], T[1], T[2], T[3], T[4], T[5]}
    oracle = Oracle(lambda s: need <= s)
    result = search(None, mixed(), oracle, budget=4)
    assert result.met and not result.pruned and not result.minimal
    assert need <= set(result.changes)
    assert result.n_measured == 4


def test_forced_changes_are_in_every_measured_set():
    oracle = Oracle(lambda s: {P[0], T[3]} <= s)
    result = search(None, mixed(), oracle, forced=(P[0],))
    assert all(P[0] in s for s in oracle.seen)
    assert set(result.changes) == {P[0], T[3]} and result.forced == (P[0],)


@pytest.mark.parametrize(
    ("message", "blamed"),
    [
        (REFUSAL.format("t5"), [T[5]]),
        ("Desired producer quant_type for t3 doesn't match existing type", [T[3]]),
        ("cannot quantize node f2", [F[2]]),
        ("nothing named here", []),
    ],
)
def test_culprits_are_the_changes_a_message_names(message, blamed):
    assert culprits(message, [F[2], T[3], T[5], P[1]]) == blamed


def test_an_executor_measuring_ahead_gives_the_one_at_a_time_trail_and_result():
    need = [{F[1], P[2]}, {T[3], T[7], T[15], P[2]}]
    refuse = lambda s: REFUSAL.format("t5") if T[5] in s else ""  # noqa: E731
    one = search(None, mixed(), Oracle(lambda s: any(n <= s for n in need), refuse))
    wide = Oracle(lambda s: any(n <= s for n in need), refuse)
    wide.width = 4
    got = search(None, mixed(), wide)
    assert [m.changes for m in got.trail] == [m.changes for m in one.trail]
    assert got.changes == one.changes and got.refused == one.refused and got.minimal
    assert len(wide.seen) > len(one.trail)  # it did measure ahead
