"""The initialization x architecture study (studies/init): its --quick run end to end.

Trains the quick subset (3 models, 1 epoch), exports and audits them, and checks
every number of the table against the JSON report it names, computed here
independently from the report (not with the study's own reader).
"""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
import tarfile

import pytest

from ..conftest import REPO, cli_env

SCRIPT = REPO / "studies" / "init" / "study.py"
COMMITTED = REPO / "studies" / "init" / "results"
OUTPUT_KEYS = ("acc_fp32", "acc_int8", "qmse", "qce", "acc_drop_pct")


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    tmp = tmp_path_factory.mktemp("init_study")
    out, work = tmp / "out", tmp / "work"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out", str(out), "--work", str(work)],
        cwd=REPO,
        env=cli_env(),
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc.stdout


def _csv_rows(out):
    with open(out / "table.csv", newline="") as f:
        return list(csv.DictReader(f))


def _num(cell: str):
    return None if cell == "" else float(cell)


def _check_row(r: dict, rep: dict, settings=(98.0, False, 1.0), committed: bool = False) -> None:
    """One table row against the report it names, recomputed here from the JSON (not with study.py's reader)."""
    o = rep["outputs"][0]
    assert o["name"] == "logits"
    for k in OUTPUT_KEYS:
        assert _num(r[k]) == o[k], (r["arch"], r["init"], k)  # repr() round-trips floats exactly
    drop = (o["acc_fp32"] - o["acc_int8"]) / o["acc_fp32"] * 100  # signed since format 3, |drop| before
    assert math.isclose(o["acc_drop_pct"], drop if rep["format"]["version"] >= 3 else abs(drop), rel_tol=1e-9)
    sq = [(lr["sqnr_db"], lr["name"]) for lr in rep["layers"] if lr["quant_tensor"] and lr["sqnr_db"] is not None]
    assert (_num(r["worst_sqnr_db"]), r["worst_layer"]) == min(sq)
    s = rep["settings"]
    assert (s["percentile"], s["calib_symmetric"], s["clip_percentile"]) == settings
    if committed:  # the study writes paths relative to the repository when its files are inside it
        paths = [rep["model"]["path"]] + [rep["data"][k] for k in ("calib", "eval", "labels")]
        assert not any(p.startswith("/") for p in paths), (
            f"machine-specific absolute path in a committed report: {paths}"
        )


@pytest.mark.parametrize(
    "folder, settings",
    [
        ("results", (98.0, False, 1.0)),
        ("results_ort_default", (99.999, True, 1.0)),
        ("results_sym99", (99.0, True, 1.0)),
    ],
)
def test_committed_tables_match_their_reports(folder, settings):
    """The committed full-run tables (RESULTS.md) against the committed reports.tar.xz, without training."""
    base = COMMITTED.parent / folder
    rows = _csv_rows(base)
    assert len(rows) == 48
    with tarfile.open(base / "reports.tar.xz") as tar:
        reports = {m.name: json.load(tar.extractfile(m)) for m in tar.getmembers() if m.name.startswith("reports/")}
    for r in rows:
        if r["trained"] in ("not run", "audit failed"):
            continue
        _check_row(r, reports[r["report"]], settings, committed=True)
    if folder == "results":
        md = (base / "table.md").read_text()
        assert md in (COMMITTED.parent / "RESULTS.md").read_text(), "RESULTS.md does not show the committed table"


@pytest.mark.slow
@pytest.mark.extra  # the quick run trains with torch, scikit-learn, mlxtend, matplotlib
def test_table_matches_reports(quick):
    out, _ = quick
    rows = _csv_rows(out)
    meta = json.loads((out / "study.json").read_text())
    assert [f"{r['arch']}__{r['init']}" for r in rows] == meta["models"]
    assert len(rows) == 3
    for r in rows:
        assert r["report"], f"{r['arch']} {r['init']}: no report ({r['trained']})"
        rep = json.loads((out / r["report"]).read_text())
        _check_row(r, rep)  # fp32/int8 accuracy, QMSE, QCE, % decrease (Eq. 4.11), worst-layer SQNR
        o = rep["outputs"][0]
        assert _num(r["max_fold_w_range"]) == max(
            lr["fold_w_range"] for lr in rep["layers"] if lr["fold_w_range"] is not None
        )
        # the trained flag follows the fp32 accuracy; failed models stay in the table
        assert (r["trained"] == "yes") == (o["acc_fp32"] >= 0.5)
        # the settings the study claims (RESULTS.md): 1 % clipping on each side, uint8 per-tensor
        s = rep["settings"]
        assert (s["activation_type"], s["weight_type"], s["per_channel"]) == ("uint8", "uint8", False)
        assert rep["data"]["n_eval"] == 1000 and rep["data"]["n_calib"] == 500
        # BN kept unfolded in the export: qaudit folded every BN of the *_bn variants
        n_bn = len(rep["folding"]["folded"])
        assert (n_bn > 0) == r["arch"].endswith("_bn")
        assert not rep["folding"]["skipped"]


@pytest.mark.slow
@pytest.mark.extra  # the quick run trains with torch, scikit-learn, mlxtend, matplotlib
def test_markdown_table_is_the_csv(quick):
    out, stdout = quick
    rows = _csv_rows(out)
    md = [ln for ln in (out / "table.md").read_text().splitlines() if ln.startswith("| ") and "---" not in ln][1:]
    assert len(md) == len(rows)
    for line, r in zip(md, rows):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[2] == r["trained"]
        assert cells[3] == f"{100 * float(r['acc_fp32']):.2f}" and cells[4] == f"{100 * float(r['acc_int8']):.2f}"
        assert cells[5] == f"{float(r['qmse']):.3e}" and cells[6] == f"{float(r['qce']):.4f}"
        assert cells[7] == f"{float(r['acc_drop_pct']):.2f}" and cells[8] == f"{float(r['worst_sqnr_db']):.1f}"
        assert line in stdout  # the run prints the table it saves


@pytest.mark.slow
@pytest.mark.extra  # the quick run trains with torch, scikit-learn, mlxtend, matplotlib
def test_overlay_page(quick):
    out, _ = quick
    page = (out / "html" / "quick.html").read_text()
    assert page.startswith("<!DOCTYPE html>") or page.lstrip().lower().startswith("<!doctype html>")
    assert 'id="alignment"' in page  # the compare machinery's alignment table heads the page
    for r in _csv_rows(out):
        assert f"{r['arch']}__{r['init']}" in page


def test_the_sweep_file_has_the_study_settings(tmp_path):
    """studies/init/sweep.toml audits the seeded models with the study's quantizers (analysis.QUANTIZERS:
    Percentile 98 and MinMax, asymmetric, per-tensor and per-channel weights) and 5 calibration trials;
    its Percentile per-tensor run is study.py's own audit (quant_config, audit); its part "checkpoints"
    audits the seed-0 checkpoints with the per-tensor two, no trials, the rest alike."""
    import importlib.util
    import shutil

    from qaudit import sweep

    spec = importlib.util.spec_from_file_location("init_study", SCRIPT)
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)
    # the study's layout: work/models/*__sSEED.onnx, work/checkpoints/, work/data/ beside the sweep files
    root = tmp_path / "init"
    for sub in ("models", "checkpoints", "data/calib"):
        (root / "work" / sub).mkdir(parents=True)
    shutil.copy(REPO / "samples" / "digits" / "model.onnx", root / "work" / "models" / "conv_bn__he_normal__s0.onnx")
    shutil.copy(
        REPO / "samples" / "digits" / "model.onnx", root / "work" / "checkpoints" / "conv_bn__he_normal__s0__e05.onnx"
    )
    for name in ("calib/000.npy", "test.npy", "test_labels.npy"):
        (root / "work" / "data" / name).write_bytes(b"")
    shutil.copy(SCRIPT.parent / "sweep.toml", root / "sweep.toml")
    *jobs, ck = sweep.load(root / "sweep.toml").jobs
    assert [j.setting for j in jobs] == ["per_channel=false", "per_channel=true"]
    want = study.quant_config()
    sys.path.insert(0, str(SCRIPT.parent))
    import analysis

    for job in jobs:
        runs = [job.cfg.quant, *job.cfg.runs[1:]]
        got = {(q.calibrate_method, q.per_channel) for q in runs}
        assert got == {(m, pc) for _, m, pc, _ in analysis.QUANTIZERS if pc == job.cfg.quant.per_channel}
        for q in runs:
            for field in ("format", "activation_type", "weight_type"):
                assert getattr(q, field) == getattr(want, field), field
            assert q.calib_symmetric is False and q.percentile == (
                want.percentile if q.calibrate_method == "percentile" else None
            )
        assert job.cfg.trials == 5 and job.cfg.trial_fraction == 0.5
        assert job.cfg.batch_size == study.AUDIT_BATCH and job.cfg.clip_percentile == 1.0
        assert (
            job.cfg.calib.name == "calib"
            and job.cfg.eval.name == "test.npy"
            and job.cfg.labels.name == "test_labels.npy"
        )
    assert ck.setting == study.CHECKPOINT_PART
    assert ck.model.name == "conv_bn__he_normal__s0__e05.onnx" and ck.cfg.trials == 0
    assert {(q.calibrate_method, q.per_channel) for q in [ck.cfg.quant, *ck.cfg.runs[1:]]} == {
        ("percentile", False),
        ("minmax", False),
    }
    for field in ("batch_size", "clip_percentile", "calib", "eval", "labels", "isolated"):
        assert getattr(ck.cfg, field) == getattr(jobs[0].cfg, field), field


def _analysis():
    sys.path.insert(0, str(SCRIPT.parent))
    import analysis

    return analysis


@pytest.mark.extra  # scipy (the init-study extra; scikit-learn's dependency in the test extra)
def test_every_value_results_md_quotes_is_recomputed_from_the_committed_tables():
    """RESULTS.md quotes each claim as **VALUE**<!--c:NAME-->: every one is what analysis.py computes
    from the committed CSV files now (a new result that changes a claim fails this test until
    `python studies/init/analysis.py --refresh` and a re-read of the sentence)."""
    pytest.importorskip("scipy")
    analysis = _analysis()
    claims = analysis.all_claims(SCRIPT.parent)
    text = (SCRIPT.parent / "RESULTS.md").read_text()
    quoted = analysis.quoted(text)
    assert len(quoted) >= 40
    wrong = [(name, value, claims.get(name)) for value, name in quoted if claims.get(name) != value]
    assert not wrong, wrong
    assert "<!--c:" not in analysis.CLAIM.sub("", text), "a claim marker RESULTS.md does not quote in **bold**"


@pytest.mark.extra  # scipy (the init-study extra; scikit-learn's dependency in the test extra)
def test_the_first_run_claims_recomputed_by_hand():
    """The issue's corrections, recomputed here from results/table.csv and layers.csv without analysis.py."""
    scipy_stats = pytest.importorskip("scipy.stats")
    analysis = _analysis()
    claims = analysis.all_claims(SCRIPT.parent)
    rows = [r for r in _csv_rows(COMMITTED) if r["trained"] == "yes"]
    by = {(r["arch"], r["init"]): r for r in rows}
    inits = sorted({r["init"] for r in rows})
    for key, pick, name in (("acc_drop_pct", max, "drop"), ("worst_sqnr_db", min, "sqnr"), ("qce", max, "qce")):
        n = sum(
            pick((by[(a, i)] for a in ("conv_bn", "conv", "dwsep_bn", "dwsep") if (a, i) in by),
                 key=lambda r: float(r[key]))["arch"] == "dwsep_bn"
            for i in inits
        )  # fmt: skip
        assert claims[f"first_dwsbn_worst_by_{name}"] == f"{n} of {len(inits)}"
    assert claims["first_dwsbn_worst_by_drop"] == "9 of 12" and claims["first_dwsbn_worst_by_qce"] == "7 of 12"
    with open(COMMITTED / "layers.csv", newline="") as f:
        layers = list(csv.DictReader(f))
    bn = {(lr["arch"], lr["init"]) for lr in layers if lr["arch"].endswith("_bn")}
    stem_max = 0
    growth, drop = [], []
    for a, i in sorted(bn):
        w = [lr for lr in layers if (lr["arch"], lr["init"]) == (a, i) and lr["fold_w_range"]]
        stem_max += max(w, key=lambda lr: float(lr["fold_w_range"]))["name"].startswith("/stem")
        growth.append(sum(float(lr["fold_w_range"]) / float(lr["w_range"]) for lr in w) / len(w))
        drop.append(float(by[(a, i)]["acc_drop_pct"]))
    assert claims["first_stem_is_max_fold_range"] == f"{stem_max} of {len(bn)}" == "24 of 24"
    r = scipy_stats.spearmanr(drop, growth)  # tie-aware (average ranks)
    assert claims["first_spearman_bn_drop_vs_fold_growth_mean"] == f"rho {r.statistic:+.2f}, p {r.pvalue:.2g}, n 24"


@pytest.mark.extra  # scipy (the init-study extra; scikit-learn's dependency in the test extra)
def test_the_verdicts_recomputed_by_hand():
    """The twelve verdicts on the thesis's claims (3 claims x 4 quantizers) and how near each is to the
    rule's margin, recomputed here from results_seeds/table.csv with the statistics module: per
    initialization the trained seeds' mean and sample std of the % decrease, the margin 2 combined
    standard errors."""
    import statistics

    pytest.importorskip("scipy")
    claims = _analysis().all_claims(SCRIPT.parent)
    rows = _csv_rows(SCRIPT.parent / "results_seeds")
    thesis = (("he_worst_dwsbn", "dwsep_bn", ("he_normal", "he_uniform"), 1.0),
              ("randuni_large_best_dwsbn", "dwsep_bn", ("randuni_1",), -1.0),
              ("modglorot_med_collapse_convbn", "conv_bn", ("glorot_uni_36",), 1.0))  # fmt: skip
    near = []
    for name, arch, inits, sign in thesis:
        for q in ("p98", "minmax", "p98_pc", "minmax_pc"):
            drops: dict[str, list[float]] = {}
            for r in rows:
                if (r["arch"], r["quantizer"], r["trained"]) == (arch, q, "yes"):
                    drops.setdefault(r["init"], []).append(float(r["acc_drop_pct"]))
            assert all(len(v) == 3 for v in drops.values()) and len(drops) == 12  # 3 trained seeds each
            mean = {i: statistics.fmean(v) for i, v in drops.items()}
            se2 = {i: statistics.stdev(v) ** 2 / len(v) for i, v in drops.items()}
            claimed = max(inits, key=lambda i: sign * mean[i])
            others = [i for i in drops if i not in inits]

            rival = max(others, key=lambda i: sign * mean[i])
            # another init's lead over the claimed one (worse for "worst", better for "best"), in margins
            lead = {i: sign * (mean[i] - mean[claimed]) / (2 * math.sqrt(se2[i] + se2[claimed])) for i in others}
            if -lead[rival] > 1:
                want, ratio = "reproduced", -lead[rival]
            elif max(lead.values()) > 1:
                want, ratio = "not reproduced", max(lead.values())
            else:
                want, ratio = "not distinguishable from noise", max(max(lead.values()), -lead[rival])
            assert claims[f"{name}__{q}"] == want, (name, q)
            if 0.9 <= ratio <= 1.1:
                near.append(f"{name} under {q} ({want}, ratio {ratio:.3f})")
    assert claims["verdicts_near_margin"] == ("; ".join(near) or "none")


@pytest.mark.extra  # scipy (the init-study extra; scikit-learn's dependency in the test extra)
def test_the_seeded_tables_match_their_reports(tmp_path):
    """results_seeds/table.csv and checkpoints.csv against the sweeps' reports in its reports.tar.xz,
    and its analysis.md regenerated from its CSV files."""
    pytest.importorskip("scipy")
    _check_seeded(SCRIPT.parent / "results_seeds", tmp_path)


def _check_seeded(folder, tmp_path) -> int:
    """The seeded tables of ``folder`` against its archive's reports; the number of rows checked."""
    checked = 0
    with tarfile.open(folder / "reports.tar.xz") as tar:
        files = {m.name: json.load(tar.extractfile(m)) for m in tar.getmembers()}
    methods = {k: (m, pc) for k, m, pc, _ in _analysis().QUANTIZERS}
    for table in ("table.csv", "checkpoints.csv"):
        if not (folder / table).exists():
            continue
        with open(folder / table, newline="") as f:
            for r in csv.DictReader(f):
                row = files[f"sweep/{r['report']}"]
                method, pc = methods[r["quantizer"]]
                part = "part=checkpoints" if table == "checkpoints.csv" else f"per_channel={'true' if pc else 'false'}"
                assert row["setting"] == part
                rep = {run["name"]: run for run in files[f"sweep/{row['report']}"]["runs"]}[method]
                assert rep["settings"]["per_channel"] is pc and rep["settings"]["calibrate_method"] == method
                o = rep["outputs"][0]
                for k in ("acc_fp32", "acc_int8", "qce", "acc_drop_pct"):
                    assert _num(r[k]) == o[k], (r["arch"], r["init"], k)
                sq = min(lr["sqnr_db"] for lr in rep["layers"] if lr["quant_tensor"] and lr["sqnr_db"] is not None)
                assert _num(r["worst_sqnr_db"]) == sq
                assert (r["trained"] == "yes") == (o["acc_fp32"] >= 0.5)
                if table == "table.csv":
                    t = rep["trials"]
                    assert t["n"] == 5 and _num(r["acc_drop_pct_trials_std"]) == t["outputs"][0]["acc_drop_pct"]["std"]
                checked += 1
    import importlib.util
    import shutil

    spec = importlib.util.spec_from_file_location("init_study", SCRIPT)
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)
    for name in ("table.csv", "spread.csv", "checkpoints.csv"):
        if (folder / name).exists():
            shutil.copy(folder / name, tmp_path / name)
    assert study.write_seeded_analysis(tmp_path) == (folder / "analysis.md").read_text()
    return checked


@pytest.fixture(scope="module")
def quick_seeded(tmp_path_factory):
    """The seeded pipeline end to end, small: study.py --train-only --quick (3 models, seed 0, 2 epochs),
    the sweep file with --out (its part "checkpoints" too), then study.py --from-sweep."""
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    pytest.importorskip("scipy")
    import shutil

    root = tmp_path_factory.mktemp("init_seeded") / "init"
    root.mkdir()
    shutil.copy(SCRIPT.parent / "sweep.toml", root / "sweep.toml")
    work = root / "work"

    def run(*args, timeout=600):
        p = subprocess.run([sys.executable, *map(str, args)], cwd=REPO, env=cli_env(), capture_output=True, text=True,
                           stdin=subprocess.DEVNULL, timeout=timeout)  # fmt: skip
        assert p.returncode == 0, (args, p.stdout[-2000:], p.stderr[-3000:])
        return p.stdout

    train = (SCRIPT, "--train-only", "--quick", "--epochs", "2", "--resume", "--work", work)
    run(*train)
    again = run(*train)
    run("-m", "qaudit", "sweep", root / "sweep.toml", "--out", work / "sweep", "--quiet")
    out = root / "out"
    run(SCRIPT, "--from-sweep", work / "sweep", "--sweeps", root, "--work", work, "--out", out)
    return out, work, again


@pytest.mark.slow
@pytest.mark.extra  # trains with torch, scikit-learn, mlxtend; scipy, matplotlib
def test_the_seeded_pipeline_quick(quick_seeded, tmp_path):
    out, work, again = quick_seeded
    assert again.count("trained before, skipped") == 3  # --resume: nothing trained twice
    logs = sorted(p.name for p in (work / "train").glob("*.json"))
    assert logs == sorted(f"{a}__{i}__s0.json" for a, i in (("conv_bn", "glorot_uni_6"), ("dwsep_bn", "he_normal"),
                                                           ("conv", "randnorm_1")))  # fmt: skip
    log = json.loads((work / "train" / "conv_bn__glorot_uni_6__s0.json").read_text())
    assert sorted(log["checkpoints"]) == ["1", "2"] and log["epochs"] == 2
    assert sorted(p.name for p in (work / "checkpoints").glob("conv_bn__glorot_uni_6__s0__e*.onnx")) == [
        "conv_bn__glorot_uni_6__s0__e01.onnx", "conv_bn__glorot_uni_6__s0__e02.onnx"]  # fmt: skip
    # the last checkpoint is the model
    assert (work / "checkpoints" / "conv_bn__glorot_uni_6__s0__e02.onnx").read_bytes() == (
        work / "models" / "conv_bn__glorot_uni_6__s0.onnx").read_bytes()  # fmt: skip
    rows = _csv_rows(out)
    assert len(rows) == 3 * 4 and {r["quantizer"] for r in rows} == {"p98", "minmax", "p98_pc", "minmax_pc"}
    assert _check_seeded(out, tmp_path) == 3 * 4 + 3 * 2 * 2  # every table and checkpoint row
    assert (out / "plots" / "fig4_5_activation_precision.png").stat().st_size > 1000
