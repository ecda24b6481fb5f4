"""The command line. The only module that knows exit codes:

0  the audit ran and every gate passed (or no gate is configured)
1  a gate failed; the report, JUnit and Markdown files are still written
2  usage, input or configuration error: one line on stderr, no traceback
3  internal error: a bug in qaudit (traceback with --debug)

A crash is never reported as a gate failure: only a completed gate
evaluation returns 1, and anything unexpected returns 3.

Options come from :data:`qaudit.cli.settings.OPTIONS`; :func:`qaudit.cli.settings.resolve`
merges them with the config file and the environment.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import signal
import sys
from pathlib import Path

from qaudit import __version__
from qaudit.errors import ConfigError, OutputError, QauditError, Terminated
from qaudit.output import check_outputs
from qaudit.renderers.text import printable
from qaudit.report import load_report

EXIT_OK, EXIT_GATE, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3

EXIT_CODES_HELP = "Exit codes: 0 all gates pass, 1 a gate failed, 2 usage/input/config error, 3 internal error."
PRECEDENCE_HELP = (
    "Settings: defaults < config file (--config, $QAUDIT_CONFIG, ./qaudit.toml, ./pyproject.toml [tool.qaudit]) "
    "< environment (QAUDIT_<OPTION>) < command line."
)
GROUP_TITLES = {
    "input": "input",
    "quantization": "quantization (ONNX Runtime static quantization)",
    "measurement": "measurement",
    "gates": "gates: VALUE sets the default, GLOB=VALUE a layer/output override (most specific glob wins), "
    "'off' turns one off; repeat the flag or comma-separate",
    "regression": "baseline regression gates (run only with --baseline)",
    "output": "output",
    "config": "configuration",
    "fix": "the fix search's caps (qaudit fix only)",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, like every other user error
        sys.stderr.write(f"{self.prog}: error: {printable(message)} (see {self.prog} --help)\n")
        raise SystemExit(EXIT_USAGE)


def _add_options(p: argparse.ArgumentParser, command: str, only: frozenset | None = None) -> None:
    """The options of ``command`` from the settings table (``only``: just these); none has a
    default here (argparse.SUPPRESS), so :func:`qaudit.cli.settings.resolve` sees only what was typed."""
    from qaudit.cli.settings import OPTIONS

    used = {o.group for o in OPTIONS if command in o.commands and (only is None or o.name in only)} | {"config"}
    used -= {"fix"} if only is None else set()
    groups = {name: p.add_argument_group(title) for name, title in GROUP_TITLES.items() if name in used}

    def group(name):
        return groups[name]

    S = argparse.SUPPRESS
    for o in OPTIONS:
        if command not in o.commands or (only is not None and o.name not in only):
            continue
        if only is None and o.group == "fix":  # qaudit fix's own settings: not the audit's flags
            continue
        g = group(o.group)
        o = dataclasses.replace(o, help=o.help.replace("%", "%%"))
        if o.name == "model":
            g.add_argument("model", nargs="?", default=S, metavar=o.metavar, help=o.help)
        elif o.kind == "bool":
            on, off = o.flags
            g.add_argument(on, dest=o.name, action="store_true", default=S, help=o.help)
            g.add_argument(off, dest=o.name, action="store_false", default=S, help=argparse.SUPPRESS)
        elif o.kind == "list" and o.one_per_flag:
            g.add_argument(o.flag, dest=o.name, action="append", default=S, metavar=o.metavar, help=o.help)
        elif o.kind == "list":
            g.add_argument(o.flag, dest=o.name, nargs="+", action="extend", default=S, metavar=o.metavar, help=o.help)
        elif o.kind in ("gate", "axes"):  # one value per flag, so it cannot swallow MODEL.onnx
            g.add_argument(o.flag, dest=o.name, action="append", default=S, metavar=o.metavar, help=o.help)
        else:
            conv = {"int": int, "float": float}.get(o.kind, str)
            g.add_argument(
                o.flag, dest=o.name, type=conv, choices=o.choices or None, default=S, metavar=o.metavar, help=o.help
            )
        if o.name == "baseline":
            g.add_argument(
                "--no-baseline",
                dest="baseline",
                action="store_const",
                const="",
                default=S,
                help="ignore a baseline set in the config file or environment",
            )
    c = group("config")
    c.add_argument(
        "--config", metavar="PATH", default=S, help="read settings from this TOML file (see docs/configuration.md)"
    )
    c.add_argument("--debug", action="store_true", help="show tracebacks")
    if command == "audit" and only is None:
        c.add_argument("--no-progress", action="store_true", help="no progress bars")
        c.add_argument("--version", action="version", version=f"qaudit {__version__}")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="qaudit",
        description="Audit the post-training quantization of an ONNX model, layer by layer, and gate it.",
        epilog=f"Re-gate or re-render a saved report: qaudit report REPORT.json. Compare exports: qaudit compare "
        f"A B [C ...]. Fix the quantization to meet the gates: qaudit fix MODEL --calib D --eval D [gates]. "
        f"{PRECEDENCE_HELP} {EXIT_CODES_HELP}",
    )
    _add_options(p, "audit")
    return p


def build_report_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="qaudit report",
        description="Render a saved JSON report, and evaluate gates on it, without running any model.",
        epilog=f"{PRECEDENCE_HELP} {EXIT_CODES_HELP}",
    )
    p.add_argument("report", type=Path, help="a JSON report written by --json")
    _add_options(p, "report")
    return p


#: audit settings that apply to every model a comparison audits (from the settings table)
COMPARE_AUDIT_OPTIONS = frozenset(
    {
        "calib",
        "eval",
        "labels",
        "label_output",
        "class_outputs",
        "format",
        "activation_type",
        "weight_type",
        "per_channel",
        "percentile",
        "calib_symmetric",
        "calibrate_method",
        "num_bins",
        "num_quantized_bins",
        "moving_average",
        "averaging_constant",
        "exclude",
        "batch_size",
        "max_samples",
        "clip_percentile",
        "isolated",
        "batch_axis",  # the same input names in every export (an input one lacks: exit 2 naming it)
        "overrides",  # applied to every export: each glob must match in each (docs/configuration.md)
    }
)


def build_compare_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="qaudit compare",
        description="Compare the quantization of several exports of one network (frameworks, exporters, "
        "checkpoints): align their layers structurally and show the metrics side by side. Each input is a model "
        "(audited with the same data and settings) or a saved JSON report.",
        epilog="The audit options come from the command line, the environment and the config file like an audit's "
        "(the config's model, gates and outputs are ignored). Exit codes: 0 compared (differences are not "
        "failures), 2 usage/input/config error, 3 internal error.",
    )
    p.add_argument(
        "inputs", nargs="+", type=Path, metavar="MODEL.onnx|REPORT.json", help="two or more models or reports"
    )
    _add_options(p, "audit", only=COMPARE_AUDIT_OPTIONS)
    c = p.add_argument_group("comparison")
    c.add_argument(
        "--map",
        type=Path,
        metavar="FILE",
        default=None,
        help='pin layers by hand: JSON {"pairs": [["layer in input 1", "layer in input 2", ...], ...]}; '
        'a layer is a node name, "#N" (report row N) or null (no partner)',
    )
    c.add_argument(
        "--no-activations",
        dest="activations",
        action="store_false",
        help="align by signature and order only (no fp32 run to compare activations)",
    )
    c.add_argument(
        "--tolerance",
        action="append",
        default=[],
        metavar="METRIC=VALUE",
        help="when a difference is flagged, e.g. sqnr_db=0.5 (dB), a_range=0.1 (relative); repeatable",
    )
    c.add_argument("--names", metavar="A,B,...", default=None, help="labels of the inputs (default: file names)")
    o = p.add_argument_group("output")
    o.add_argument("--json", metavar="PATH", default=None, help="write the comparison as JSON ('-' for stdout)")
    o.add_argument(
        "--html",
        metavar="PATH",
        default=None,
        help="write an HTML page overlaying the models' plots, aligned by the comparison ('-' for stdout)",
    )
    o.add_argument("--quiet", action="store_true", help="print no tables")
    o.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def build_sweep_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="qaudit sweep",
        description="Audit many models x settings from one sweep file (models or globs, calib, eval, labels, a "
        "[grid] of settings, [gates]) and write one table and an aligned N-way comparison (docs/sweep.md).",
        epilog="Exit codes: 0 every audit ran and passed its gates, 1 an audit failed a gate or had an error (its "
        "row says which), 2 usage/sweep file error, 3 internal error.",
    )
    p.add_argument("sweep", type=Path, metavar="SWEEP.toml", help="the sweep file")
    p.add_argument("--workers", type=int, default=1, metavar="N", help="audits at once, in N local processes")
    p.add_argument(
        "--ray-address",
        default=None,
        metavar="ADDRESS",
        help="one Ray task per model x setting on the cluster at ADDRESS ('auto': RAY_ADDRESS or the local "
        "'ray start'; default: the sweep file's ray_address, else local)",
    )
    p.add_argument(
        "--ray-shared-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="with --ray-address: a folder every Ray node mounts at the same path; the models and data are "
        "copied there (or used in place) and the tasks read them by path, not through Ray's object store "
        "(default: the sweep file's ray_shared_dir)",
    )
    p.add_argument("--csv", metavar="PATH", default=None, help="write the table as CSV ('-' for stdout)")
    p.add_argument("--json", metavar="PATH", default=None, help="write the table and every report as JSON")
    p.add_argument("--html", metavar="PATH", default=None, help="write the N-way overlay of the audits (HTML)")
    p.add_argument(
        "--out",
        metavar="DIR",
        type=Path,
        default=None,
        help="write each audit's JSON report and table row into DIR as soon as it finishes",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="with --out: read back the audits DIR already holds (same model file and settings), run the rest",
    )
    p.add_argument("--quiet", action="store_true", help="print no table")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def _run_sweep(args) -> int:
    from qaudit import sweep

    if args.workers < 1:
        raise ConfigError(f"--workers must be at least 1, not {args.workers}")
    if args.resume and args.out is None:
        raise ConfigError("--resume continues a sweep's --out DIR: give --out DIR too")
    plan = sweep.load(args.sweep)
    address = args.ray_address or plan.ray_address
    shared_dir = args.ray_shared_dir or plan.ray_shared_dir
    if shared_dir is not None and address is None:
        raise ConfigError(f"--ray-shared-dir {shared_dir} is where Ray tasks read the models and data: give "
                          "--ray-address too (or ray_address in the sweep file), or drop it")  # fmt: skip
    if address is not None:
        from qaudit.distributed import check_shared_dir, connect

        if shared_dir is not None:
            check_shared_dir(shared_dir)
        connect(address)
    inputs = {"sweep file": args.sweep} | {f"model {j.model}": j.model for j in plan.jobs}
    for j in plan.jobs[:1]:  # the shared data
        inputs |= {name: getattr(j.cfg, name) for name in ("calib", "eval", "labels")}
    outs = check_outputs(
        {"--csv": args.csv, "--json": args.json, "--html": args.html}, inputs, sorted({j.model for j in plan.jobs})
    )
    with outs:
        outcomes = sweep.run(plan, args.workers, address, out=args.out, resume=args.resume, shared_dir=shared_dir)
        texts = {}
        if "--csv" in outs:
            texts["--csv"] = sweep.csv_text(outcomes)
        if "--json" in outs:
            texts["--json"] = sweep.json_text(plan, outcomes)
        if "--html" in outs:
            from qaudit.renderers import render

            overlay = sweep.comparison(outcomes)
            if overlay is None:
                raise ConfigError("--html: the N-way overlay needs at least two audits that finished")
            texts["--html"] = render(overlay, "html", worst=0)
        outs.commit(texts)
    if not args.quiet:
        to_stdout = any(t.kind == "stdout" for t in outs.targets.values())
        (sys.stderr if to_stdout else sys.stdout).write(sweep.table_text(outcomes, args.sweep.resolve().parent))
    ok = all(o.row["status"] in ("ok", "pass") for o in outcomes)
    return EXIT_OK if ok else EXIT_GATE


def _tolerances(items: list[str]) -> dict:
    from qaudit.comparison.result import DEFAULT_TOLERANCES

    out = {}
    for item in items:
        for part in item.split(","):
            key, sep, value = part.partition("=")
            key = key.strip()
            if not sep or key not in DEFAULT_TOLERANCES:
                raise ConfigError(
                    f"--tolerance {part!r}: write METRIC=VALUE with METRIC one of {', '.join(DEFAULT_TOLERANCES)}"
                )
            try:
                out[key] = float(value)
            except ValueError:
                raise ConfigError(f"--tolerance {part!r}: {value!r} is not a number") from None
    return out


def _run_compare(args) -> int:
    from qaudit.comparison.run import CompareConfig, compare, read_map

    names = tuple(x.strip() for x in args.names.split(",")) if args.names else None
    models = [p for p in args.inputs if p.suffix.lower() != ".json"]
    settings = _settings("audit", args) if models else None
    inputs = {f"input {p}": p for p in args.inputs} | {"--map file": args.map}
    if settings is not None:
        inputs |= _data_inputs(settings)
    outs = check_outputs({"--json": args.json, "--html": args.html}, inputs, models)
    audit_cfg = None
    if models:
        if settings["quantized"] is not None:
            raise ConfigError(
                f"quantized ({settings['quantized']}, set in {settings.sources.get('quantized')}) does not apply to qaudit "
                "compare: each export is quantized by qaudit with the same settings; compare saved reports instead "
                "(qaudit FP32.onnx --quantized Q.onnx --json r.json)"
            )
        if settings["calib"] is None:
            raise ConfigError(
                f"{printable(models[0])} is a model: give --calib DIR (or set 'calib' in a config file or QAUDIT_CALIB)"
            )
        audit_cfg = dataclasses.replace(settings, values={**settings.values, "model": models[0]}).audit_config()
    pins = read_map(args.map, len(args.inputs)) if args.map else ()
    cfg = CompareConfig(tuple(args.inputs), audit_cfg, names, pins, args.activations, _tolerances(args.tolerance))
    show_progress = models and not (args.quiet or args.no_progress) and sys.stderr.isatty()
    with outs:
        progress = _RichProgress() if show_progress else None
        try:
            result = compare(cfg, progress)
        finally:
            if progress is not None:
                progress.done()
        _write_outputs(result, outs, {"json": "--json", "html": "--html"}, {}, args.quiet)
    return EXIT_OK


def _write_outputs(subject, outs, flags: dict, options: dict, quiet: bool, gates=None) -> None:
    """Render ``subject`` in every format of ``flags`` (format -> output flag) that ``outs``
    holds, with ``options[format]``, then write every output (all or none:
    :meth:`qaudit.output.Outputs.commit`), then print the terminal output: to stderr when
    stdout carries a file. Everything is rendered before anything is written, so a bug in
    one renderer leaves no partial set of files."""
    from qaudit.renderers import render
    from qaudit.renderers.terminal import console

    wanted = {fmt: flag for fmt, flag in flags.items() if flag in outs}
    texts = {flag: render(subject, fmt, gates=gates, **options.get(fmt, {})) for fmt, flag in wanted.items()}
    outs.commit(texts)
    con = console(stderr=any(t.kind == "stdout" for t in outs.targets.values()))
    render(subject, "terminal", gates=gates, console=con, quiet=quiet, **options.get("terminal", {}))


def _data_inputs(settings) -> dict:
    """The files and directories an audit with ``settings`` reads, by label (outputs must not touch them)."""
    v = settings.values
    return {
        "calibration data": v.get("calib"),
        "evaluation data": v.get("eval"),
        "labels file": v.get("labels"),
        "config file": settings.config_file,
        "baseline": v.get("baseline"),
    }


class _RichProgress:
    """Progress bars on stderr for the stages of an audit."""

    def __init__(self):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        from qaudit.renderers.terminal import console

        self._p = Progress(
            TextColumn("{task.description:<28}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console(stderr=True),
            transient=False,
        )
        self._task = None
        self._p.start()

    def stage(self, description, total):
        if self._task is not None:
            self._p.update(self._task, completed=self._p.tasks[self._task].total)
        from rich.markup import escape

        # the description holds file names (compare's labels): shown as text, never as markup or escapes
        self._task = self._p.add_task(escape(printable(description)), total=total)

    def advance(self, n):
        if self._task is not None:
            self._p.advance(self._task, n)

    def done(self):
        self._p.stop()


def _settings(command: str, args: argparse.Namespace):
    from qaudit.cli.settings import OPTIONS_BY_NAME, resolve

    cli = {k: v for k, v in vars(args).items() if k in OPTIONS_BY_NAME or k == "config"}
    return resolve(command, cli, os.environ, Path.cwd())


def _finish(report, settings, baseline, outs) -> int:
    """Evaluate the gates, write every requested output, render, and choose the exit code
    (a multi-run report: every run gated with the same gates, exit 1 when any run fails)."""
    from qaudit.gate import evaluate
    from qaudit.runs import MultiReport, evaluate_runs

    v = settings.values
    gated = settings.gates.configured(baseline is not None)
    if isinstance(report, MultiReport):
        if gated:
            report = evaluate_runs(report, settings.gates, baseline, v.get("baseline"))
        result, failed = None, not report.passed
        if report.fix is not None:  # a fix's report: the verdict is the verifying audit's, as qaudit fix exits
            after = report.run("after").gates
            failed = after is not None and not after.passed
    else:
        if isinstance(baseline, MultiReport):
            raise ConfigError(
                f"the baseline report has {len(baseline.runs)} runs ({', '.join(baseline.names)}) and this report "
                "one: compare a multi-run report with it, or give a single-run baseline"
            )
        if gated:
            report = dataclasses.replace(report, gates=evaluate(report, settings.gates, baseline, v.get("baseline")))
        result = report.gates  # a saved report re-rendered without gate settings keeps its own verdict
        failed = result is not None and not result.passed
    _write_outputs(
        report,
        outs,
        {fmt: f"--{fmt}" for fmt in ("json", "junit", "markdown", "html")},
        {"markdown": {"worst": max(v["worst"], 5)}, "html": {"worst": v["worst"]}, "terminal": {"worst": v["worst"]}},
        v["quiet"],
        gates=result,
    )
    return EXIT_GATE if failed else EXIT_OK


_REPORT_FLAGS = ("--json", "--junit", "--markdown", "--html")


def _run_audit(args) -> int:
    from qaudit.pipeline.audit import audit

    settings = _settings("audit", args)
    cfg = settings.audit_config()
    outputs = {flag: settings[flag[2:]] for flag in _REPORT_FLAGS}
    models = _output_models(cfg)  # flag -> path; one per run with {run} in --output-model
    outs = check_outputs(outputs | models, {"input model": cfg.model, **_data_inputs(settings)}, [cfg.model])
    with outs:
        baseline = load_report(settings["baseline"], "baseline report") if settings["baseline"] else None
        _check_gates_apply(settings, cfg, baseline is not None)
        if baseline is not None:
            _check_baseline_runs(cfg, baseline)
        staged = None
        if len(models) > 1 or (cfg.runs and models):  # the pipeline writes each run's model to its staged file
            staged = {flag.partition("=")[2] or cfg.quant.calibrate_method: outs.stage(flag) for flag in models}
        elif "--output-model" in outs:
            cfg = cfg.replace(output_model=outs.stage("--output-model"))
        show_progress = not (settings["quiet"] or args.no_progress) and sys.stderr.isatty()
        progress = _RichProgress() if show_progress else None
        try:
            report = audit(cfg, progress, staged) if staged is not None else audit(cfg, progress)
        except OutputError as e:
            raise OutputError(f"cannot write {outs.label_of(e.path)}: {e.reason}; nothing was written") from e
        finally:
            if progress is not None:
                progress.done()
        return _finish(report, settings, baseline, outs)


def _output_models(cfg) -> dict:
    """The ``--output-model`` files, by flag: one, or with several runs and ``{run}`` in the path one per run
    (``--output-model=entropy``); without ``{run}`` only the first run's model is written."""
    if cfg.output_model is None:
        return {}
    if cfg.runs and "{run}" in str(cfg.output_model):
        from qaudit.runs import output_path

        return {
            f"--output-model={q.calibrate_method}": output_path(cfg.output_model, q.calibrate_method, True)
            for q in cfg.runs
        }
    if "{run}" in str(cfg.output_model):  # one run: its name too, so that a script's path works either way
        from qaudit.runs import output_path

        return {"--output-model": output_path(cfg.output_model, cfg.quant.calibrate_method, True)}
    return {"--output-model": cfg.output_model}


def _check_baseline_runs(cfg, baseline) -> None:
    """A multi-run baseline must have every run of the audit (compared by name): checked before the audit."""
    from qaudit.runs import MultiReport, baseline_of

    if cfg.runs:
        for q in cfg.runs:
            baseline_of(q.calibrate_method, baseline)
    elif isinstance(baseline, MultiReport):
        raise ConfigError(
            f"the baseline report has {len(baseline.runs)} runs ({', '.join(baseline.names)}) and this audit one: "
            "give the same --calibrate-method list, or a single-run baseline"
        )


def _check_gates_apply(settings, cfg, with_baseline: bool) -> None:
    """A gate on a class metric when no output of the model holds class scores is exit 2, before
    the audit writes anything (--output-model); the model's graph decides, as in the audit."""
    from qaudit.gate import check_class_outputs
    from qaudit.report import CLASS_METRICS

    gates = settings.gates.active_gates(with_baseline)
    if not any(g.scope == "output" and g.metric in CLASS_METRICS for g in gates):
        return
    from qaudit.pipeline.load import load_model
    from qaudit.pipeline.measure import output_kinds

    kinds = output_kinds(load_model(cfg.model).model, cfg.class_outputs, cfg.label_output).kinds
    check_class_outputs(settings.gates, kinds, with_baseline)


def _run_report(args) -> int:
    settings = _settings("report", args)
    outs = check_outputs(
        {flag: settings[flag[2:]] for flag in _REPORT_FLAGS},
        {"input report": args.report, "config file": settings.config_file, "baseline": settings["baseline"]},
    )
    with outs:
        report = load_report(args.report, "report")
        baseline = load_report(settings["baseline"], "baseline report") if settings["baseline"] else None
        return _finish(report, settings, baseline, outs)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "report":
        args = build_report_parser().parse_args(argv[1:])
        run = _run_report
    elif argv and argv[0] == "compare":
        args = build_compare_parser().parse_args(argv[1:])
        run = _run_compare
    elif argv and argv[0] == "fix":
        from qaudit.cli.fix import build_fix_parser, run_fix

        args = build_fix_parser().parse_args(argv[1:])
        run = run_fix
    elif argv and argv[0] == "sweep":
        args = build_sweep_parser().parse_args(argv[1:])
        run = _run_sweep
    else:
        args = build_parser().parse_args(argv)
        run = _run_audit
    try:
        with _signals_unwind():
            return run(args)
    except QauditError as e:
        if args.debug:
            raise
        sys.stderr.write(f"qaudit: error: {printable(e)}\n")
        return EXIT_USAGE  # never EXIT_GATE: only a completed gate evaluation fails the gate
    except KeyboardInterrupt:
        sys.stderr.write("qaudit: interrupted\n")
        return 130
    except Terminated as e:
        sys.stderr.write(f"qaudit: terminated by {signal.Signals(e.signum).name}; temporary files removed\n")
        return 128 + e.signum
    except Exception as e:  # a bug: never reported as a verdict
        if args.debug:
            raise
        sys.stderr.write(
            f"qaudit: internal error: {type(e).__name__}: {printable(e)} (run again with --debug for the traceback "
            "and report it)\n"
        )
        return EXIT_INTERNAL


#: signals handled like Ctrl-C (SIGINT): unwind, removing temporary files, one line, exit 128 + signum
UNWIND_SIGNALS = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGHUP") if hasattr(signal, n))


@contextlib.contextmanager
def _signals_unwind():
    """While the command runs, SIGTERM and SIGHUP raise :class:`~qaudit.errors.Terminated`
    in the main thread; a second signal during the unwinding is ignored (SIGKILL still works)."""

    def handler(signum, frame):
        for s in UNWIND_SIGNALS:
            signal.signal(s, signal.SIG_IGN)
        raise Terminated(signum)

    try:
        previous = {s: signal.signal(s, handler) for s in UNWIND_SIGNALS}
    except ValueError:  # not the main thread (main() called from a worker): leave the signals alone
        yield
        return
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def entry() -> None:
    raise SystemExit(main())


if __name__ == "__main__":
    entry()
