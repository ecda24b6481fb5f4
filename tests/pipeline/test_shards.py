"""The evaluation capture cut into shards and merged (what --ray-address does, run here in one
process without Ray): the report of one capture over every batch, sums within SUM_RTOL."""

from __future__ import annotations

import pytest

import qaudit
from qaudit import distributed
from qaudit.options import audit_config
from qaudit.report import to_dict

from ..conftest import SAMPLE_CALIB, SAMPLE_EVAL, SAMPLE_LABELS, SAMPLE_MODEL
from ..distributed.compare import differences


def _in_shards(per_shard: int):
    def sharded_capture(address, fp32, qmodel, matching, batches, work, *, n_batches, labels=None, on_batch=None,
                        shared_dir=None, **options):  # fmt: skip
        from qaudit.pipeline import kernels
        from qaudit.pipeline.data import samples

        batches = list(batches)
        packed = distributed.pack_model(fp32, work), distributed.pack_model(qmodel, work)
        parts, seen = [], 0
        for i in range(0, len(batches), per_shard):
            shard = batches[i : i + per_shard]
            n = sum(samples(f) for f in shard)
            lab = labels[seen : seen + n] if labels is not None else None
            first = batches[0] if i else None
            captured, ran = distributed._capture_shard(*packed, matching, shard, first, lab, options, kernels.name())
            parts.append(captured)
            seen += n
        return distributed.merge_captured(parts, {"shards": len(parts)})

    return sharded_capture


@pytest.mark.parametrize("per_shard", [1, 4])
def test_shards_merged_give_the_report_of_one_capture(monkeypatch, per_shard):
    cfg = audit_config(SAMPLE_MODEL, SAMPLE_CALIB, SAMPLE_EVAL, SAMPLE_LABELS, batch_size=4)
    local = to_dict(qaudit.audit(cfg))
    monkeypatch.setattr(distributed, "connect", lambda address: None)
    monkeypatch.setattr(distributed, "sharded_capture", _in_shards(per_shard))
    got = to_dict(qaudit.audit(cfg.replace(ray_address="in-process")))
    assert got["meta"]["ray"]["shards"] == -(-local["data"]["n_eval"] // (4 * per_shard))
    assert differences(local, got) == []
