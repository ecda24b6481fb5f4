"""The lockstep runner: order, bounded overlap, errors."""

import threading

import numpy as np
import pytest

from qaudit.errors import DataError
from qaudit.pipeline.parallel import lockstep


def _batches(n):
    return ({"x": np.full((2, 3), i, np.float32)} for i in range(n))


@pytest.mark.parametrize("overlap", [True, False])
def test_batches_are_measured_in_order_with_at_most_two_alive(overlap):
    alive, peak, seen = [0], [0], []
    lock = threading.Lock()

    def run(feeds):
        with lock:
            alive[0] += 1
            peak[0] = max(peak[0], alive[0])
        return (feeds["x"] * 2,)

    def measure(feeds, outs):
        seen.append(int(outs[0][0, 0]))
        with lock:
            alive[0] -= 1

    assert lockstep(run, _batches(6), measure, overlap=overlap) == 12
    assert seen == [0, 2, 4, 6, 8, 10]
    assert peak[0] <= (2 if overlap else 1)


def test_a_measuring_error_propagates():
    def measure(feeds, outs):
        if feeds["x"][0, 0] == 2:
            raise DataError("bad labels")

    with pytest.raises(DataError, match="bad labels"):
        lockstep(lambda f: (f,), _batches(5), measure)
