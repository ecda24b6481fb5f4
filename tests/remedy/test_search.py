"""The fix search's logic on an oracle executor (a rule says which sets pass, or which ORT refuses):
1-minimal results in the cost order, refused changes split off and retried, the budget. The measurements
themselves are the deployed model's (tests/remedy/test_fix.py); here only the search is under test."""

from __future__ import annotations

import dataclasses
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
    assert result.stopped_by == "max_measurements" and result.budget == 4 and result.max_cost is None


class Clock:
    """A fake clock: ``now`` seconds; a :class:`Timed` oracle advances it by its ``dt`` per set measured."""

    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


class Timed(Oracle):
    def __init__(self, passes, clock: Clock, dt: float):
        super().__init__(passes)
        self.clock, self.dt = clock, dt

    def map(self, fn, workspaces, sets):
        out = []
        for s in sets:
            self.clock.now += self.dt
            out += super().map(fn, [None], [s])
        return out


#: a passing set needs 12 of the 16-bit tensors: the second tier (all 40 candidates) holds them, the first (24)
#: only 8, so a search without a cap measures the baseline, both tiers (passing at the 3rd set), then prunes
NEED = set(T[:12])


def capped(dt=4.0, max_cost=5.0, audit=10.0, before=20.0, budget=200, min_seconds=0.0, need=NEED):
    """A search whose fix began at 0 (``before`` seconds ago: the audit before and the workspace), each set
    measured in ``dt`` seconds."""
    clock = Clock(before)
    oracle = Timed(lambda s: need <= s, clock, dt)
    result = search(None, mixed(), oracle, budget=budget, max_cost=max_cost, audit_seconds=audit, started=0.0,
                    clock=clock, min_seconds=min_seconds)  # fmt: skip
    return result, clock


def test_the_cost_cap_stops_exactly_where_the_arithmetic_says():
    # 5 x 10 s = 50 s; the set after k measurements is measured while 20 + 4k (elapsed) + 4 (their mean) + 10
    # (the verifying audit) <= 50, i.e. k <= 4 (equal at k = 4: measured): 5 sets, then the cap
    result, clock = capped()
    assert result.n_measured == 5 and clock.now == 40.0
    assert result.stopped_by == "max_cost" and result.max_cost == 5.0 and result.cost_limit == 50.0
    assert result.audit_seconds == 10.0 and result.seconds == 40.0
    assert (
        result.met and not result.pruned and not result.minimal
    )  # it passed at the 3rd set: the cap stopped the pruning
    assert NEED <= set(result.changes)
    # one second more per set: 20 + 5k + 5 + 10 <= 50 for k <= 3: 4 sets
    result, _ = capped(dt=5.0)
    assert result.n_measured == 4 and result.stopped_by == "max_cost"
    # no passing set before the cap: not met, and the cap is what stopped it (baseline + the first tier)
    result, _ = capped(dt=13.0, need=set(T))
    assert result.n_measured == 1 and not result.met and not result.pruned and result.stopped_by == "max_cost"


def test_the_baseline_is_measured_even_when_the_cap_is_already_spent():
    result, clock = capped(before=60.0)
    assert result.n_measured == 1 and result.trail[0].changes == () and result.stopped_by == "max_cost"


def test_without_a_cost_cap_the_search_runs_to_1_minimal():
    free, _ = capped(max_cost=None)
    for off in (0, 0.0):
        result, _ = capped(max_cost=off)
        assert result.stopped_by is None and result.max_cost is None and result.cost_limit is None
        assert [m.changes for m in result.trail] == [m.changes for m in free.trail]
        assert result.n_measured > 5 and set(result.changes) == NEED
        assert_one_minimal(result, Oracle(lambda s: NEED <= s))


def test_whichever_cap_comes_first_stops_the_search():
    assert capped(budget=3)[0].stopped_by == "max_measurements"  # 3 sets: before the cost cap's 5
    result, _ = capped(budget=5)  # both would allow 5: the count is checked first
    assert result.n_measured == 5 and result.stopped_by == "max_measurements"
    assert capped(budget=6)[0].stopped_by == "max_cost"


def reported(base: float, fail: float, passing: float) -> tuple:
    """A capped search (as :func:`capped`: 4 s of wall time per set) whose measurements report their own
    ``seconds``: ``base`` for the baseline, ``fail`` for a failing set, ``passing`` for a passing one."""
    clock = Clock(20.0)
    timed = Timed(lambda s: NEED <= s, clock, 4.0)
    real = timed.map

    def map(fn, workspaces, sets):
        out = real(fn, workspaces, sets)
        secs = [base if not m.changes else passing if m.passed else fail for m in out]
        return [dataclasses.replace(m, seconds=t) for m, t in zip(out, secs, strict=True)]

    timed.map = map
    result = search(None, mixed(), timed, budget=200, max_cost=5.0, audit_seconds=10.0, started=0.0, clock=clock,
                    min_seconds=0.0)  # fmt: skip
    return result, clock


def test_the_cost_cap_estimates_the_verifying_audit_from_the_passing_sets_measurement():
    """The verifying audit: the audit before plus AUDIT_GROWTH (5) x what the last passing set took longer to
    measure than the baseline. Baseline 1 s, failing sets 1 s, passing sets 1.5 s (the wall time, 4 s a set, is
    the next set's estimate): after the 3rd set (the first passing) 32 + 4 + 10 + 5 x (1.5 - 1) = 48.5: the 4th
    is measured; then 36 + 4 + 12.5 > 50. With the audit before alone as the estimate a 5th set would be
    measured (36 + 4 + 10 = 50); before a set passes, the last set measured is the reference."""
    from qaudit.remedy.search import AUDIT_GROWTH

    assert AUDIT_GROWTH == 5.0
    result, clock = reported(1.0, 1.0, 1.5)
    assert result.trail[2].passed and not result.trail[1].passed
    assert result.n_measured == 4 and result.stopped_by == "max_cost" and clock.now == 36.0
    result, clock = reported(1.0, 2.0, 1.0)  # the 2nd set (failing) 1 s longer: 28 + 4 + 15 = 47, 32 + 4 + 10 = 46
    assert result.n_measured == 5 and clock.now == 40.0


def test_the_cost_cap_estimates_the_next_set_from_the_last_when_it_is_longer():
    """Every set reports 9 s of its own (the wall time: 4 s): the next set is estimated at 9 s, so after k sets
    20 + 4k + 9 + 10 <= 50 holds for k <= 2: 3 sets (the mean wall time alone would allow 5)."""
    result, clock = reported(9.0, 9.0, 9.0)
    assert result.n_measured == 3 and result.stopped_by == "max_cost" and clock.now == 32.0


def test_a_refused_set_is_not_measured_again_when_the_cost_cap_is_spent():
    """ORT refuses the first tier (it holds t5), measured at 34 -> 38 s: measuring it again without t5 would
    break the cap (38 + 4 + 10 > 50), so the refused set counts as failing and the cost cap stops the search."""
    clock = Clock(30.0)
    oracle = Timed(lambda s: NEED <= s, clock, 4.0)
    oracle.refuses = lambda s: REFUSAL.format("t5") if T[5] in s else ""
    result = search(None, mixed(), oracle, budget=200, max_cost=5.0, audit_seconds=10.0, started=0.0, clock=clock,
                    min_seconds=0.0)  # fmt: skip
    assert result.n_measured == 2 and result.trail[1].error and result.refused == ()
    assert not result.met and result.stopped_by == "max_cost" and clock.now == 38.0


def test_the_cost_cap_never_stops_a_fix_before_its_floor():
    # a 0.1 s audit: 5x is 0.5 s, less than the one measurement of 1 s; the floor of 60 s holds: sets are
    # measured while 1 + k + 1 + 0.1 <= 60, i.e. k <= 57 (the search ends on its own before that)
    result, clock = capped(dt=1.0, audit=0.1, before=1.0, min_seconds=60.0)
    assert result.cost_limit == 60.0 and result.stopped_by is None and result.minimal
    result, clock = capped(dt=10.0, audit=0.1, before=1.0, min_seconds=60.0)
    # 1 + 10k + 10 + 0.1 <= 60 for k <= 4
    assert result.n_measured == 5 and result.stopped_by == "max_cost" and clock.now == 51.0


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


class Rounds(Oracle):
    """An oracle measuring ``width`` sets at once that records which of its calls measured each set."""

    def __init__(self, passes, width, refuses=lambda s: ""):
        super().__init__(passes, refuses)
        self.width, self.round_of = width, {}

    def map(self, fn, workspaces, sets):
        sets = list(sets)
        assert len(sets) <= self.width
        n = len(set(self.round_of.values()))
        self.round_of.update({frozenset(s): n for s in sets})
        return super().map(fn, workspaces, sets)


@pytest.mark.parametrize("width", [2, 4, 8])
def test_the_1_minimality_check_measures_the_next_single_removals_together(width):
    """Step 5 (each single removal from the final set): a wide executor measures the next removals the loop will
    ask for with the one it asks for, so the check takes fewer rounds than removals; the trail and result stay the
    one-at-a-time search's (a set measured ahead is in the trail only once the search asks for it)."""
    # eight changes all needed: group pruning keeps them all, and step 5 must measure each single removal
    need = {T[1], T[4], T[6], T[9], T[12], T[14], T[17], P[3]}
    one = search(None, mixed(), Oracle(lambda s: need <= s), budget=1000)
    wide = Rounds(lambda s: need <= s, width)
    got = search(None, mixed(), wide, budget=1000)
    assert [m.changes for m in got.trail] == [m.changes for m in one.trail]
    assert got.changes == one.changes and set(got.changes) == need and got.minimal
    assert_one_minimal(got, wide)
    removals = [frozenset(need - {c}) for c in need]
    rounds = {wide.round_of[r] for r in removals}
    # 8 removals measured width at a time (those group pruning measured already count too)
    assert len(rounds) <= -(-len(removals) // width) + 1
    assert len(set(wide.round_of.values())) < len(one.trail)
