"""The init study's claims, computed from its committed tables only (CSV files), never from memory.

RESULTS.md and the ``analysis.md`` files quote these claims; ``tests/studies/test_init_study.py``
recomputes every claim from the committed CSVs and checks each quoted value
(``**VALUE**<!--c:NAME-->`` in RESULTS.md; ``analysis.md`` whole). No torch, no onnx: csv, numpy
and scipy (``scipy.stats.spearmanr``, tie-aware ranks and p-values; scipy comes with
scikit-learn, the ``init-study`` extra; it is a study-only dependency, not qaudit's).

Models that failed to train (``trained`` not ``yes``: fp32 accuracy below 50 %) are listed in the
tables and left out of every comparison here.
"""

from __future__ import annotations

import csv
import math
import re
from collections import OrderedDict
from pathlib import Path

import numpy as np

ARCHS = OrderedDict(
    [
        ("conv_bn", "conv + BN + ReLU"),
        ("conv", "conv + ReLU"),
        ("dwsep_bn", "dw-separable + BN + ReLU"),
        ("dwsep", "dw-separable + ReLU"),
    ]
)
INIT_ORDER = (
    "randnorm_1", "randnorm_0.5", "randnorm_0.1", "randuni_1", "randuni_0.5", "randuni_0.25",
    "glorot_uni_6", "glorot_uni_36", "glorot_uni_1296", "glorot_normal", "he_uniform", "he_normal",
)  # fmt: skip
#: the seeded run's quantizers: (key, method, per_channel, label)
QUANTIZERS = (
    ("p98", "percentile", False, "ORT Percentile 98 asym., per-tensor"),
    ("minmax", "minmax", False, "ORT MinMax asym., per-tensor"),
    ("p98_pc", "percentile", True, "ORT Percentile 98 asym., per-channel weights"),
    ("minmax_pc", "minmax", True, "ORT MinMax asym., per-channel weights"),
)
QLABEL = {k: label for k, _, _, label in QUANTIZERS}
#: the test set's size: one image is 1 / TEST_IMAGES of accuracy
TEST_IMAGES = 1000
#: a difference is beyond the noise when it exceeds NOISE_SE standard errors over the seeds
NOISE_SE = 2.0
#: the thesis's per-initialization claims: (name, arch, inits, "worst"/"best", the thesis's wording)
THESIS_CLAIMS = (
    ("he_worst_dwsbn", "dwsep_bn", ("he_normal", "he_uniform"), "worst", "He init. worst for DWS+BN"),
    ("randuni_large_best_dwsbn", "dwsep_bn", ("randuni_1",), "best", "RandUni_Large best for DWS+BN"),
    ("modglorot_med_collapse_convbn", "conv_bn", ("glorot_uni_36",), "worst", "ModGlorotUni_Med collapse for Regular+BN"),
)  # fmt: skip


def images_lost(row: dict) -> int:
    """The test images a table row's quantization loses: fp32 minus int8 correct answers (negative: gained)."""
    return round((row["acc_fp32"] - row["acc_int8"]) * TEST_IMAGES)


def read_csv(path: Path) -> list[dict]:
    def cell(v):
        if v == "":
            return None
        try:
            return float(v)
        except ValueError:
            return v

    with open(path, newline="") as f:
        return [{k: cell(v) for k, v in r.items()} for r in csv.DictReader(f)]


def spearman(a, b):
    """Tie-aware Spearman rho and its two-sided p-value (scipy), over the pairs where both are finite."""
    from scipy.stats import spearmanr

    a, b = np.asarray(a, float), np.asarray(b, float)
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 4 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
        return None, None, int(ok.sum())
    r = spearmanr(a[ok], b[ok])
    return float(r.statistic), float(r.pvalue), int(ok.sum())


def _f(v, spec=".2f") -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def _trained(rows):
    return [r for r in rows if r.get("trained") == "yes"]


# ------------------------------------------------------------------ the first run (one seed)


def first_run_claims(table: list[dict], layers: list[dict], default_table: list[dict], default_layers: list[dict]):
    """The claims about the single-seed run (results/): which variant is worst per initialization by
    three metrics, the SQNR ordering with and without 1 % clipping, the BN-folded weight ranges stem
    apart, and the rank correlations."""
    c = OrderedDict()
    ok = {(r["arch"], r["init"]): r for r in _trained(table)}
    c["first_trained"] = f"{len(ok)} of {len(table)}"
    c["first_failed"] = ", ".join(f"{r['arch']}__{r['init']}" for r in table if r.get("trained") != "yes") or "none"
    for metric, worst_is, label in (("acc_drop_pct", max, "drop"), ("worst_sqnr_db", min, "sqnr"), ("qce", max, "qce")):
        n = m = 0
        for init in INIT_ORDER:
            rows = [ok[(a, init)] for a in ARCHS if (a, init) in ok]
            if len(rows) < 2 or ("dwsep_bn", init) not in ok:
                continue
            m += 1
            n += worst_is(rows, key=lambda r: r[metric])["arch"] == "dwsep_bn"
        c[f"first_dwsbn_worst_by_{label}"] = f"{n} of {m}"
    exc = []
    for init in INIT_ORDER:
        b, nb = ok.get(("dwsep_bn", init)), ok.get(("dwsep", init))
        if b and nb and nb["acc_drop_pct"] > b["acc_drop_pct"]:
            exc.append(f"{init} {nb['acc_drop_pct']:.2f} vs {b['acc_drop_pct']:.2f}")
    c["first_dwsep_loses_more_than_dwsbn"] = "; ".join(exc) or "none"

    # Fig. 4.2: the activation range per layer of the dw-separable models without BN (layers.csv)
    def act_ranges(init):
        rows = [lr for lr in layers if lr["arch"] == "dwsep" and lr["init"] == init and lr.get("quantized") == "yes"
                and lr["name"] != "input" and lr["a_range"] is not None]  # fmt: skip
        return [lr["a_range"] for lr in sorted(rows, key=lambda lr: lr["index"])]

    failed = [r["init"] for r in table if r["arch"] == "dwsep" and r.get("trained") != "yes"]
    c["first_vanishing_failed"] = (
        "; ".join(
            f"{i}: {act_ranges(i)[0]:.3g} at the first activation, {act_ranges(i)[-2]:.3g} at the last before the logits"
            for i in failed
        )
        or "none failed"
    )
    trained = [i for i in INIT_ORDER if ("dwsep", i) in ok]
    c["first_vanishing_trained"] = f"{min(min(act_ranges(i)) for i in trained):.3g}" if trained else "-"
    # the other reading of "1 % clipping" (results_sym99/: ORT's symmetric Percentile 99)
    c.update(_sym99(table))
    # BN vs no BN, same initialization, both trained
    for base in ("conv", "dwsep"):
        pairs = [
            (ok[(base + "_bn", i)], ok[(base, i)]) for i in INIT_ORDER if (base + "_bn", i) in ok and (base, i) in ok
        ]
        n = sum(b["acc_drop_pct"] > nb["acc_drop_pct"] for b, nb in pairs)
        c[f"first_bn_loses_more_{base}"] = f"{n} of {len(pairs)}"
    # the architecture ordering by the median accuracy decrease, with and without 1 % clipping
    for tag, tab in (("clip", table), ("default", default_table)):
        okk = _trained(tab)
        med = {a: float(np.median([r["acc_drop_pct"] for r in okk if r["arch"] == a])) for a in ARCHS}
        c[f"first_arch_order_drop_{tag}"] = _order(med, sorted(ARCHS, key=lambda a: -med[a]))
        c[f"first_max_drop_{tag}"] = f"{max(r['acc_drop_pct'] for r in okk):.2f}"
    # the thesis's initializations, ranked by accuracy decrease (1 = the largest) among the trained
    for arch, init in (
        ("dwsep_bn", "he_normal"),
        ("dwsep_bn", "he_uniform"),
        ("dwsep_bn", "randuni_1"),
        ("conv_bn", "glorot_uni_36"),
    ):
        rows = sorted((r for r in ok.values() if r["arch"] == arch), key=lambda r: -r["acc_drop_pct"])
        k = [r["init"] for r in rows].index(init) + 1
        c[f"first_rank_{arch}_{init}"] = f"{k} of {len(rows)} ({ok[(arch, init)]['acc_drop_pct']:.2f} %)"
    # the SQNR ordering of the variants (median over trained inits of the worst inner-layer SQNR)
    for tag, tab, lay in (("clip", table, layers), ("default", default_table, default_layers)):
        okk = {(r["arch"], r["init"]) for r in _trained(tab)}
        med = {}
        for a in ARCHS:
            vals = []
            for init in INIT_ORDER:
                if (a, init) not in okk:
                    continue
                inner = [
                    lr["sqnr_db"]
                    for lr in lay
                    if lr["arch"] == a and lr["init"] == init and lr.get("quantized") == "yes"
                    and lr["sqnr_db"] is not None and lr["name"] != "/fc2/Gemm"
                ]  # fmt: skip
                if inner:
                    vals.append(min(inner))
            med[a] = float(np.median(vals))
        order = sorted(ARCHS, key=lambda a: med[a])
        c[f"first_inner_sqnr_order_{tag}"] = " < ".join(f"{a} {med[a]:.1f}" for a in order)
    # max BN-folded weight range: stem apart
    bn_models = sorted({(lr["arch"], lr["init"]) for lr in layers if lr["arch"].endswith("_bn")})
    stem_is_max = 0
    body_max = {}
    stem = []
    for a, init in bn_models:
        w = [lr for lr in layers if lr["arch"] == a and lr["init"] == init and lr["fold_w_range"] is not None]
        top = max(w, key=lambda lr: lr["fold_w_range"])
        stem_is_max += top["stem"] == "yes"
        body = [lr["fold_w_range"] for lr in w if lr["stem"] != "yes" and lr["op_type"] == "Conv"]
        body_max[(a, init)] = max(body)
        stem += [lr["fold_w_range"] for lr in w if lr["stem"] == "yes"]
    c["first_stem_is_max_fold_range"] = f"{stem_is_max} of {len(bn_models)}"
    c["first_stem_fold_range"] = f"{min(stem):.2f}-{max(stem):.2f}"
    for a in ("conv_bn", "dwsep_bn"):
        v = [body_max[(a2, i)] for a2, i in body_max if a2 == a and (a2, i) in ok]
        c[f"first_body_max_fold_range_{a}"] = f"{min(v):.3g}-{max(v):.3g} (median {np.median(v):.3g})"
    # rank correlations with the accuracy decrease, trained BN models
    sub = [ok[m] for m in bn_models if m in ok]
    drop = [r["acc_drop_pct"] for r in sub]
    growth = []
    for r in sub:
        w = [
            lr
            for lr in layers
            if lr["arch"] == r["arch"] and lr["init"] == r["init"] and lr["fold_w_range"] is not None
        ]
        growth.append(float(np.mean([lr["fold_w_range"] / lr["w_range"] for lr in w])))
    for key, vals in (
        ("fold_growth_mean", growth),
        ("body_max_fold_range", [body_max[(r["arch"], r["init"])] for r in sub]),
        ("worst_sqnr_db", [r["worst_sqnr_db"] for r in sub]),
        ("qce", [r["qce"] for r in sub]),
    ):
        rho, p, n = spearman(drop, vals)
        c[f"first_spearman_bn_drop_vs_{key}"] = f"rho {_f(rho, '+.2f')}, p {_f(p, '.2g')}, n {n}"
    # the same within each BN variant: the two variants' folded ranges do not overlap
    for a in ("conv_bn", "dwsep_bn"):
        mine = [r for r in sub if r["arch"] == a]
        rho, p, n = spearman([r["acc_drop_pct"] for r in mine], [body_max[(a, r["init"])] for r in mine])
        c[f"first_spearman_{a}_drop_vs_body_max_fold_range"] = f"rho {_f(rho, '+.2f')}, p {_f(p, '.2g')}, n {n}"
    return c


def _sym99(table: list[dict]) -> dict:
    path = Path(__file__).resolve().parent / "results_sym99" / "table.csv"
    if not path.exists():
        return {}
    other = {(r["arch"], r["init"]): r for r in read_csv(path)}
    d = [
        abs(r["acc_drop_pct"] - other[(r["arch"], r["init"])]["acc_drop_pct"])
        for r in _trained(table)
        if other.get((r["arch"], r["init"]), {}).get("trained") == "yes"
    ]
    return {"first_sym99_drop_change": f"at most {max(d):.2f} (median {np.median(d):.2f})"}


def seed0_reproduces(root: Path) -> str:
    """How many of the seeded run's seed-0 training logs have the first run's loss curve, epoch by epoch
    (both logs are in the committed reports.tar.xz archives)."""
    import json
    import tarfile

    def logs(archive: Path, suffix: str) -> dict:
        if not archive.exists():
            return {}
        with tarfile.open(archive) as tar:
            return {
                m.name.split("/")[-1].removesuffix(suffix): json.load(tar.extractfile(m))
                for m in tar.getmembers()
                if m.name.startswith("train/") and m.name.endswith(suffix)
            }

    first = logs(root / "results" / "reports.tar.xz", ".json")
    seeded = logs(root / "results_seeds" / "reports.tar.xz", "__s0.json")
    same = [n for n, lg in seeded.items() if n in first and lg["epoch_loss"] == first[n]["epoch_loss"]]
    return f"{len(same)} of {len(seeded)}"


def seeded_train_seconds(root: Path) -> str:
    """The seeded run's training times, from its training logs (``train_seconds``, reports.tar.xz): the
    total, the median, and per architecture the range."""
    import json
    import tarfile

    archive = root / "results_seeds" / "reports.tar.xz"
    if not archive.exists():
        return "none"
    with tarfile.open(archive) as tar:
        logs = [json.load(tar.extractfile(m)) for m in tar.getmembers() if m.name.startswith("train/")]
    t = [lg["train_seconds"] for lg in logs]
    per = []
    for a in ARCHS:
        v = [lg["train_seconds"] for lg in logs if lg["arch"] == a]
        if v:
            per.append(f"{a} {min(v):.0f}-{max(v):.0f} s")
    return f"{sum(t):,.0f} s for {len(t)} models (median {np.median(t):.0f} s; " + ", ".join(per) + ")"


def seeded_trained(root: Path) -> str:
    """How many seeded models had finished training when results_seeds/ was made (their training logs
    are in its reports.tar.xz), of the 144."""
    import tarfile

    archive = root / "results_seeds" / "reports.tar.xz"
    if not archive.exists():
        return "0"
    with tarfile.open(archive) as tar:
        return str(sum(m.name.startswith("train/") for m in tar.getmembers()))


# ------------------------------------------------------------------ the seeded run


def seed_groups(rows: list[dict], quantizer: str) -> dict:
    """(arch, init) -> the trained seeds' rows under ``quantizer``."""
    out = {}
    for r in rows:
        if r["quantizer"] == quantizer and r.get("trained") == "yes":
            out.setdefault((r["arch"], r["init"]), []).append(r)
    return out


def spread_rows(rows: list[dict]) -> list[dict]:
    """Per (arch, init, quantizer): mean, std (ddof 1), min, max over the trained seeds of the accuracy
    decrease, QCE and worst-layer SQNR, and the mean over seeds of the calibration trials' std."""
    out = []
    for q, *_ in QUANTIZERS:
        groups = seed_groups(rows, q)
        for a in ARCHS:
            for init in INIT_ORDER:
                all_seeds = [r for r in rows if r["quantizer"] == q and r["arch"] == a and r["init"] == init]
                if not all_seeds:
                    continue
                g = groups.get((a, init), [])
                row = {"arch": a, "init": init, "quantizer": q, "seeds_run": len(all_seeds), "seeds_trained": len(g)}
                for key in ("acc_drop_pct", "qce", "worst_sqnr_db"):
                    v = np.array([r[key] for r in g], float)
                    row[f"{key}_mean"] = float(v.mean()) if len(v) else None
                    row[f"{key}_std"] = float(v.std(ddof=1)) if len(v) > 1 else None
                    row[f"{key}_min"] = float(v.min()) if len(v) else None
                    row[f"{key}_max"] = float(v.max()) if len(v) else None
                    t = [r[f"{key}_trials_std"] for r in g if r.get(f"{key}_trials_std") is not None]
                    row[f"{key}_calib_std"] = float(np.mean(t)) if t else None
                out.append(row)
    return out


def verdict(spread: list[dict], arch: str, inits: tuple, kind: str, quantizer: str, key: str = "acc_drop_pct"):
    """The thesis's claim that ``inits`` are the worst (highest ``key``) or best (lowest) of ``arch``:
    (verdict, detail). reproduced: the claimed init is the extreme and beyond NOISE_SE standard errors
    (seed std / sqrt(n), combined) of every other; not reproduced: another init is beyond it by that
    margin; else not distinguishable from noise. Fewer than 2 trained seeds: not judged."""
    g = {
        r["init"]: r
        for r in spread
        if r["arch"] == arch and r["quantizer"] == quantizer and r[f"{key}_mean"] is not None
    }
    if not all(i in g for i in inits) or len(g) < 2:
        return "not judged", f"{arch}: {len(g)} initializations audited, the claim's not all among them"
    sign = 1.0 if kind == "worst" else -1.0

    def se(r):
        s = r[f"{key}_std"]
        return None if s is None else s / math.sqrt(r["seeds_trained"])

    claimed = max(inits, key=lambda i: sign * g[i][f"{key}_mean"])
    others = [i for i in g if i not in inits]
    rival = max(others, key=lambda i: sign * g[i][f"{key}_mean"])
    c, o = g[claimed], g[rival]
    n_min = min(r["seeds_trained"] for r in g.values())
    detail = (
        f"{claimed} {c[f'{key}_mean']:.2f} ± {_f(c[f'{key}_std'])} vs {rival} {o[f'{key}_mean']:.2f} ± {_f(o[f'{key}_std'])}"
        f" (mean ± seed std, {c['seeds_trained']:.0f} and {o['seeds_trained']:.0f} seeds)"
    )
    if n_min < 2 or se(c) is None or se(o) is None:
        return "not judged", detail + f"; fewer than 2 trained seeds for some initialization (minimum {n_min:.0f})"
    margin = NOISE_SE * math.sqrt(se(c) ** 2 + se(o) ** 2)
    diff = sign * (c[f"{key}_mean"] - o[f"{key}_mean"])
    detail += f"; difference {diff:+.2f}, noise margin {margin:.2f}"
    if diff > margin:
        return "reproduced", detail
    beaten = [
        i for i in others if sign * (g[i][f"{key}_mean"] - c[f"{key}_mean"]) > NOISE_SE * math.sqrt(se(c) ** 2 + (se(g[i]) or 0) ** 2)
    ]  # fmt: skip
    if beaten:
        return (
            "not reproduced",
            detail + f"; beyond the noise {'above' if kind == 'worst' else 'below'} it: {', '.join(beaten)}",
        )
    return "not distinguishable from noise", detail


def decisive_ratio(spread: list[dict], arch: str, inits: tuple, kind: str, quantizer: str, key: str = "acc_drop_pct"):
    """How close :func:`verdict`'s answer is to changing: the comparison that decides it, as a
    difference in units of its noise margin (NOISE_SE combined standard errors). "reproduced": the
    claimed init's lead over the next one (above 1); "not reproduced": the largest lead another init has
    over the claimed one (above 1); "not distinguishable from noise": the larger of those two (below 1).
    A ratio near 1 is a verdict a slightly stricter or looser rule would change. Returns (ratio, the other
    init of that comparison), or None: not judged."""
    v, _ = verdict(spread, arch, inits, kind, quantizer, key)
    if v == "not judged":
        return None
    g = {
        r["init"]: r
        for r in spread
        if r["arch"] == arch and r["quantizer"] == quantizer and r[f"{key}_mean"] is not None
    }
    sign = 1.0 if kind == "worst" else -1.0

    def se2(r):
        return r[f"{key}_std"] ** 2 / r["seeds_trained"]

    claimed = max(inits, key=lambda i: sign * g[i][f"{key}_mean"])
    c = g[claimed]
    others = [i for i in g if i not in inits and g[i][f"{key}_std"] is not None]
    rival = max(others, key=lambda i: sign * g[i][f"{key}_mean"])

    def lead(i):  # the other init's lead over the claimed one, in margins (negative: behind it)
        return sign * (g[i][f"{key}_mean"] - c[f"{key}_mean"]) / (NOISE_SE * math.sqrt(se2(c) + se2(g[i])))

    first = max(others, key=lead)
    if v == "reproduced":
        return -lead(rival), rival
    if v == "not reproduced":
        return lead(first), first
    return max((lead(first), first), (-lead(rival), rival))


def seeded_claims(rows: list[dict], spread: list[dict]) -> OrderedDict:
    c = OrderedDict()
    models = sorted({(r["arch"], r["init"], r["seed"]) for r in rows})
    c["seeded_models_audited"] = str(len(models))
    for a in ARCHS:
        ms = sorted({(r["init"], r["seed"]) for r in rows if r["arch"] == a})
        ok = sorted({(r["init"], r["seed"]) for r in rows if r["arch"] == a and r.get("trained") == "yes"})
        c[f"seeded_{a}_audited"] = f"{len(ms)} ({len(ok)} trained)"
    c["seeded_failed"] = (
        ", ".join(sorted({f"{r['arch']}__{r['init']}__s{r['seed']:.0f}" for r in rows if r.get("trained") != "yes"}))
        or "none"
    )
    for name, arch, inits, kind, _ in THESIS_CLAIMS:
        for q, *_ in QUANTIZERS:
            v, d = verdict(spread, arch, inits, kind, q)
            c[f"{name}__{q}"] = v
            c[f"{name}__{q}__detail"] = d
    # the verdicts a rule slightly stricter or looser (NOISE_SE within 10 %) would change
    # and the test images behind them: per seed, fp32 minus int8 correct answers on the 1,000 (negative: gained)
    near, images = [], []
    for name, arch, inits, kind, _ in THESIS_CLAIMS:
        for q, *_ in QUANTIZERS:
            got = decisive_ratio(spread, arch, inits, kind, q)
            if got is None or not 0.9 <= got[0] <= 1.1:
                continue
            near.append(f"{name} under {q} ({c[f'{name}__{q}']}, ratio {got[0]:.3f})")
            sign = 1.0 if kind == "worst" else -1.0
            g = {r["init"]: r for r in spread if r["arch"] == arch and r["quantizer"] == q}
            claimed = max(inits, key=lambda i: sign * g[i]["acc_drop_pct_mean"])
            lost = []
            for init in (claimed, got[1]):
                seeds = sorted((r for r in rows if (r["arch"], r["init"], r["quantizer"]) == (arch, init, q)
                                and r.get("trained") == "yes"), key=lambda r: r["seed"])  # fmt: skip
                n = ", ".join(f"{images_lost(r):+d}" for r in seeds)
                lost.append(f"{init} {n}")
            images.append(f"{name} under {q}: " + " vs ".join(lost))
    c["verdicts_near_margin"] = "; ".join(near) or "none"
    c["verdicts_near_margin_images"] = "; ".join(images) or "none"
    # which per-initialization differences exceed the seed spread: pairs of initializations of one
    # architecture (both with >= 2 trained seeds) whose mean % decrease differ by more than NOISE_SE
    # combined standard errors
    for q, *_ in QUANTIZERS:
        for a in ("dwsep_bn", "conv_bn", "dwsep", "conv"):
            g = [r for r in spread if r["arch"] == a and r["quantizer"] == q and r["acc_drop_pct_std"] is not None]
            n = beyond = 0
            for i, x in enumerate(g):
                for y in g[i + 1 :]:
                    n += 1
                    se = math.sqrt(
                        x["acc_drop_pct_std"] ** 2 / x["seeds_trained"]
                        + y["acc_drop_pct_std"] ** 2 / y["seeds_trained"]
                    )
                    beyond += abs(x["acc_drop_pct_mean"] - y["acc_drop_pct_mean"]) > NOISE_SE * se
            c[f"pairs_beyond_noise_{a}__{q}"] = f"{beyond} of {n}"
    # the spread: median over (arch, init) of the seed std and of the calibration std
    for q, *_ in QUANTIZERS:
        for key in ("acc_drop_pct", "qce", "worst_sqnr_db"):
            s = [r[f"{key}_std"] for r in spread if r["quantizer"] == q and r[f"{key}_std"] is not None]
            t = [r[f"{key}_calib_std"] for r in spread if r["quantizer"] == q and r[f"{key}_calib_std"] is not None]
            spec = ".4f" if key == "qce" else ".2f"
            c[f"spread_{key}__{q}"] = (
                f"seed std median {_f(float(np.median(s)) if s else None, spec)} (max {_f(max(s) if s else None, spec)}, "
                f"{len(s)} groups); calibration std median {_f(float(np.median(t)) if t else None, spec)}"
            )
        # architecture ordering by the median over trained models of the accuracy decrease
        med = {}
        for a in ARCHS:
            v = [
                r["acc_drop_pct"] for r in rows if r["quantizer"] == q and r["arch"] == a and r.get("trained") == "yes"
            ]
            if v:
                med[a] = float(np.median(v))
        c[f"arch_order_drop__{q}"] = _order(med, sorted(med, key=lambda a: -med[a])) or "none audited yet"
        # the same per training seed (the medians over that seed's 12 initializations)
        per = []
        for seed in sorted({r["seed"] for r in rows}):
            m = {}
            for a in ARCHS:
                v = [
                    r["acc_drop_pct"]
                    for r in rows
                    if (r["quantizer"], r["arch"], r["seed"]) == (q, a, seed) and r.get("trained") == "yes"
                ]
                if v:
                    m[a] = float(np.median(v))
            per.append(f"seed {seed:.0f}: " + _order(m, sorted(m, key=lambda a: -m[a])))
        c[f"arch_order_drop_by_seed__{q}"] = "; ".join(per)
    return c


def _order(values: dict, ranked: list) -> str:
    """``a 5.25 > b 0.82``: ``ranked`` (largest first) with their values at 2 decimals, joined by
    ``>``, or by ``=`` where the two printed values are equal (a tie at the precision shown)."""
    out = ""
    for i, a in enumerate(ranked):
        if i:
            out += " = " if f"{values[a]:.2f}" == f"{values[ranked[i - 1]]:.2f}" else " > "
        out += f"{a} {values[a]:.2f}"
    return out


# ------------------------------------------------------------------ over-training (Tables 4.3/4.4)


def checkpoint_claims(ck: list[dict]) -> OrderedDict:
    """Is the final-worst model already the worst by QMSE early? Per BN variant and quantizer: the
    model (init) with the largest accuracy decrease at the last epoch, and its QMSE rank at each epoch;
    and the tie-aware Spearman rho of each epoch's QMSE with the final decrease. QMSE is compared
    within a variant only (it scales with the logits)."""
    c = OrderedDict()
    epochs = sorted({int(r["epoch"]) for r in ck})
    last = max(epochs, default=None)
    for q in ("p98", "minmax"):
        for a in ("dwsep_bn", "conv_bn"):
            rows = [r for r in ck if r["arch"] == a and r["quantizer"] == q]
            final = {r["init"]: r for r in rows if int(r["epoch"]) == last and r.get("trained") == "yes"}
            if len(final) < 2:
                c[f"overtrain_{a}__{q}"] = f"not judged: {len(final)} model(s) with every checkpoint audited"
                continue
            worst = max(final, key=lambda i: final[i]["acc_drop_pct"])
            # the test images the final-worst and the runner-up lose at the last epoch (fp32 minus int8 correct)
            runner = max((i for i in final if i != worst), key=lambda i: final[i]["acc_drop_pct"])
            lost = {i: images_lost(final[i]) for i in (worst, runner)}
            c[f"overtrain_{a}__{q}__final_images"] = (
                f"{worst} {lost[worst]:+d} images, the next ({runner}) {lost[runner]:+d}"
            )
            ranks, top = [], []
            for e in epochs:
                at = {r["init"]: r["qmse"] for r in rows if int(r["epoch"]) == e and r["init"] in final}
                if worst not in at:
                    continue
                order = sorted(at, key=lambda i: -at[i])
                top.append((e, order[0] == worst))
                rho, p, n = spearman(
                    [at[i] for i in final if i in at], [final[i]["acc_drop_pct"] for i in final if i in at]
                )
                ranks.append(
                    f"e{e}: QMSE rank {order.index(worst) + 1} of {len(at)}, rho {_f(rho, '+.2f')} (p {_f(p, '.2g')})"
                )
            c[f"overtrain_{a}__{q}"] = f"final-worst {worst} ({final[worst]['acc_drop_pct']:.2f} %); " + "; ".join(
                ranks
            )
            # the first epoch from which the final-worst model has the largest QMSE at every later checkpoint
            since = next((e for k, (e, _) in enumerate(top) if all(t for _, t in top[k:])), None)
            c[f"overtrain_{a}__{q}__worst_by_qmse_since"] = (
                f"epoch {since} of {last}" if since is not None else f"at no epoch (not even epoch {last})"
            )
    return c


# ------------------------------------------------------------------ the texts


CLAIM = re.compile(r"\*\*([^*]+)\*\*<!--c:([A-Za-z0-9_.]+)-->")


def quoted(text: str) -> list[tuple[str, str]]:
    """The (value, claim name) pairs a text quotes: ``**VALUE**<!--c:NAME-->``."""
    return [(m.group(1), m.group(2)) for m in CLAIM.finditer(text)]


def claims_markdown(title: str, claims: OrderedDict) -> str:
    lines = [f"# {title}", "", "Generated by `studies/init/analysis.py` from the committed CSV files; every value below", "is recomputed by `tests/studies/test_init_study.py`.", "", "| claim | value |", "|---|---|"]  # fmt: skip
    lines += [f"| `{k}` | {v} |" for k, v in claims.items()]
    return "\n".join(lines) + "\n"


def all_claims(root: Path) -> OrderedDict:
    """Every claim RESULTS.md may quote, from the committed folders under ``root`` (studies/init)."""
    c = OrderedDict()
    first = root / "results"
    if (first / "layers.csv").exists():
        c.update(
            first_run_claims(
                read_csv(first / "table.csv"),
                read_csv(first / "layers.csv"),
                read_csv(root / "results_ort_default" / "table.csv"),
                read_csv(root / "results_ort_default" / "layers.csv"),
            )
        )
    if (root / "results_seeds" / "table.csv").exists():
        c.update(seeded_folder_claims(root / "results_seeds"))
        c["seed0_same_loss_as_first_run"] = seed0_reproduces(root)
        c["seeded_models_trained"] = seeded_trained(root)
        c["seeded_train_seconds"] = seeded_train_seconds(root)
    return c


def seeded_folder_claims(folder: Path) -> OrderedDict:
    """The seeded run's claims from its folder's table.csv and checkpoints.csv."""
    rows = read_csv(folder / "table.csv")
    c = seeded_claims(rows, spread_rows(rows))
    c.update(checkpoint_claims(read_csv(folder / "checkpoints.csv") if (folder / "checkpoints.csv").exists() else []))
    return c


def refresh(text: str, claims: OrderedDict) -> str:
    """``text`` with every quoted claim's value replaced by its value in ``claims`` (after new results
    landed: ``python studies/init/analysis.py --refresh``); a quoted name no claim has is an error."""

    def sub(m):
        name = m.group(2)
        if name not in claims:
            raise KeyError(f"RESULTS.md quotes {name!r}, which analysis.py does not compute")
        return f"**{claims[name]}**<!--c:{name}-->"

    return CLAIM.sub(sub, text)


if __name__ == "__main__":
    import sys

    here = Path(__file__).resolve().parent
    claims = all_claims(here)
    if "--refresh" in sys.argv:
        results = here / "RESULTS.md"
        results.write_text(refresh(results.read_text(), claims))
        print(f"refreshed {len(quoted(results.read_text()))} quoted claims in {results}")
    else:
        for k, v in claims.items():
            print(f"{k} = {v}")
