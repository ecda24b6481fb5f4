"""``qaudit fix MODEL --calib D --eval D [gates]``: search the cheapest change set meeting the gates.

The audit settings and the gates come from the settings table like an audit's
(:func:`qaudit.cli.settings.resolve`: defaults, config file, environment, flags);
the fix's own outputs (``--recipe``, ``--ort-args``, ``--prepared-model``) are flags of
this parser only. Exit codes: 0 the target is met (the verifying audit passes every gate),
1 it is not (the best set found is written and printed with what limits it), 2 bad input,
3 internal error. docs/remedy.md.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys

from qaudit.errors import ConfigError, OutputError

#: the audit settings a fix takes from the table (not --quantized, a baseline or its regression gates)
_NOT_FOR_FIX = frozenset({"quantized", "baseline", "junit", "markdown"})


def fix_options() -> frozenset:
    from qaudit.cli.settings import AUDIT, OPTIONS

    return frozenset(
        o.name
        for o in OPTIONS
        if AUDIT in o.commands and o.name not in _NOT_FOR_FIX and o.group != "regression" and o.name != "model"
    ) | {"model"}


def build_fix_parser():
    from qaudit.cli.main import _add_options, _Parser

    p = _Parser(
        prog="qaudit fix",
        description="Search the cheapest quantization change set (nodes left in float first, then tensors at "
        "16 bits; per-channel weights and calibration ranges only where needed) that makes every gate pass, "
        "measured on the deployed quantized graph, and verify it with a full audit.",
        epilog="The gates are the target (at least one output gate: the search measures the outputs; a layer "
        "gate the verifying audit fails adds that layer's remedy and the search runs again). Exit codes: 0 target "
        "met, 1 not met (the best set found is written), 2 usage/input/config error, 3 internal error. "
        "See docs/remedy.md.",
    )
    _add_options(p, "audit", only=fix_options())
    f = p.add_argument_group("fix")
    f.add_argument("--recipe", metavar="PATH", default=None, help="write the recipe (a qaudit config file, TOML)")
    f.add_argument(
        "--ort-args",
        metavar="PATH",
        default=None,
        help="write the recipe as ONNX Runtime quantize_static arguments (JSON) for --prepared-model",
    )
    f.add_argument(
        "--prepared-model",
        metavar="PATH",
        default=None,
        help="write the prepared fp32 model (folded, normalized) that --ort-args' node and tensor names refer to",
    )
    f.add_argument(
        "--max-layers",
        type=int,
        default=None,
        metavar="N",
        help="propose changes for at most the N noisiest activations and weights (default: all, tried in "
        "growing tiers from the noisiest)",
    )
    f.add_argument(
        "--max-measurements",
        type=int,
        default=None,
        metavar="N",
        help="measure at most N change sets per search (default 32, with --minimal 1000; sets ORT refuses are measured "
        "again without the refused change and do not count); with --max-cost, whichever cap comes first stops the "
        "search, which keeps a passing set that may not be minimal",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def _comment(cfg, result) -> str:
    from qaudit.remedy.search import cost

    floats, sixteen = cost(result.search.changes)
    lines = [
        f"qaudit fix recipe for {cfg.model.name}",
        f"{floats} node(s) left in float, {sixteen} tensor(s) at 16 bits, "
        f"{sum(c.kind == 'per_channel' for c in result.search.changes)} weight(s) per channel, "
        f"{sum(c.kind == 'range' for c in result.search.changes)} range(s) changed; "
        f"{result.search.n_measured} change sets measured",
        "use: qaudit MODEL --config THIS_FILE --calib DIR --eval DIR",
    ]
    lines += [f"  {c.describe()}" for c in result.search.changes]
    return "\n".join(lines)


def run_fix(args) -> int:
    import onnx

    from qaudit.cli.main import EXIT_GATE, EXIT_OK, _data_inputs, _RichProgress, _settings
    from qaudit.gate import evaluate
    from qaudit.output import check_outputs
    from qaudit.remedy.recipe import ort_arguments, recipe_toml
    from qaudit.remedy.search import fix
    from qaudit.renderers import render
    from qaudit.renderers.terminal import console
    from qaudit.runs import MultiReport

    settings = _settings("audit", args)
    cfg = settings.audit_config()
    if cfg.runs:
        raise ConfigError("qaudit fix takes one --calibrate-method: the recipe is one quantization")
    gates = settings.gates
    if not any(g.scope == "output" for g in gates.active_gates(False)):
        raise ConfigError(
            "qaudit fix needs a target on the model outputs: give an output gate, e.g. --min-output-sqnr 25 "
            "(layer gates are checked too, by the verifying audit)"
        )
    for flag, v in (("--max-layers", args.max_layers), ("--max-measurements", args.max_measurements)):
        if v is not None and v < 1:
            raise ConfigError(f"{flag} must be >= 1, not {v}")
    if settings["minimal"] and settings["max_cost"] and settings.sources["max_cost"] != "default":
        raise ConfigError(
            f"--minimal measures until the set is 1-minimal, with no cost cap, but max_cost {settings['max_cost']:g} "
            f"is set ({settings.sources['max_cost']}): drop one of them (--max-measurements N caps a --minimal search)"
        )
    wanted = {
        "--json": settings["json"],
        "--html": settings["html"],
        "--output-model": cfg.output_model,
        "--recipe": args.recipe,
        "--ort-args": args.ort_args,
        "--prepared-model": args.prepared_model,
    }
    outs = check_outputs(wanted, {"input model": cfg.model, **_data_inputs(settings)}, [cfg.model])
    with outs:
        from qaudit.cli.main import _check_gates_apply

        _check_gates_apply(settings, cfg, False)
        if "--output-model" in outs:
            cfg = cfg.replace(output_model=outs.stage("--output-model"))
        show = not (settings["quiet"] or args.no_progress) and sys.stderr.isatty()
        progress = _RichProgress() if show else None
        try:
            result = fix(
                cfg, gates, progress, layers=args.max_layers, budget=args.max_measurements,
                max_cost=settings["max_cost"], minimal=settings["minimal"], workers=settings["workers"],
            )  # fmt: skip
        except OutputError as e:
            raise OutputError(f"cannot write {outs.label_of(e.path)}: {e.reason}; nothing was written") from e
        finally:
            if progress is not None:
                progress.done()
        before = dataclasses.replace(result.before, gates=evaluate(result.before, gates))
        after = dataclasses.replace(result.after, gates=evaluate(result.after, gates))
        result.after = after
        texts = {}
        if "--recipe" in outs:
            texts["--recipe"] = recipe_toml(
                result.quant, gates, settings.values, _comment(cfg, result), result.before.data.get("preprocess")
            )
        prepared = result.record["folded"]
        if "--prepared-model" in outs:
            onnx.save(prepared, str(outs.stage("--prepared-model")))
        if "--ort-args" in outs:
            sha = hashlib.sha256(prepared.SerializeToString()).hexdigest()
            rec = result.record
            doc = ort_arguments(result.quant, rec["also_exclude"], rec["tensor_overrides"], rec["ranges"], sha)
            texts["--ort-args"] = json.dumps(doc, indent=2) + "\n"
        from qaudit.remedy.fixreport import FILE_FLAGS, section

        files = {k: wanted[flag] if flag in outs else None for k, flag in FILE_FLAGS.items()}
        multi = MultiReport((("before", before), ("after", after)), fix=section(result, gates, files=files))
        if "--json" in outs:
            texts["--json"] = render(multi, "json")
        if "--html" in outs:
            texts["--html"] = render(multi, "html", worst=settings["worst"])
        outs.commit(texts)  # every output or none
        con = console(stderr=any(t.kind == "stdout" for t in outs.targets.values()))
        # the Fix section and its verdict, once: as qaudit report fix.json renders them
        render(multi, "terminal", console=con, quiet=settings["quiet"], worst=settings["worst"])
        return EXIT_OK if after.gates.passed else EXIT_GATE
