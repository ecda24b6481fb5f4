"""The command line. The only module that knows exit codes:

0  the audit ran (and every gate passed)
2  usage, input or configuration error: one line on stderr, no traceback
3  internal error: a bug in qaudit (traceback with --debug)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import __version__
from .errors import QauditError

EXIT_OK, EXIT_USAGE, EXIT_INTERNAL = 0, 2, 3


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, like every other user error
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        raise SystemExit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="qaudit",
        description="Audit the post-training quantization of an ONNX model, layer by layer.",
        epilog="Re-render a saved report: qaudit report REPORT.json [--html PATH]. "
        "Exit codes: 0 ok, 2 bad input, 3 internal error.",
    )
    p.add_argument("model", type=Path, help="the fp32 ONNX model (never modified)")
    p.add_argument("--calib", type=Path, required=True, help="calibration data: directory of .npy/.npz or test_data_set_*")
    p.add_argument("--eval", type=Path, help="evaluation data (default: the calibration data, which flatters)")
    p.add_argument("--labels", type=Path, help=".npy of integer labels, one per evaluation sample (sorted file order)")
    p.add_argument("--json", metavar="PATH", help="write the JSON report to PATH ('-' for stdout)")
    p.add_argument("--output-model", type=Path, metavar="PATH", help="write the quantized model that was audited")
    p.add_argument("--html", metavar="PATH", help="write a self-contained HTML report with layerwise plots ('-' for stdout)")
    q = p.add_argument_group("quantization (ONNX Runtime static quantization)")
    q.add_argument("--format", choices=("qdq", "qoperator"), default="qdq")
    q.add_argument("--activation-type", choices=("uint8", "int8"), default="uint8")
    q.add_argument("--weight-type", choices=("uint8", "int8"), default="uint8")
    q.add_argument("--per-channel", action="store_true", help="per-channel weight quantization")
    q.add_argument("--percentile", type=float, default=99.999, help="percentile calibration (default 99.999, ORT's)")
    q.add_argument(
        "--calib-asymmetric",
        action="store_true",
        help="histogram of signed values instead of |x| (ORT's Percentile default is symmetric)",
    )
    q.add_argument("--exclude", nargs="+", default=[], metavar="NODE", help="node names to leave in float")
    r = p.add_argument_group("measurement")
    r.add_argument("--batch-size", type=int, default=32)
    r.add_argument("--max-samples", type=int, help="use at most N samples of each data set")
    r.add_argument("--clip-percentile", type=float, default=1.0, help="activation range clipping, percent per side (default 1)")
    r.add_argument("--worst", type=int, default=3, help="how many worst layers to highlight")
    o = p.add_argument_group("output")
    o.add_argument("--quiet", action="store_true", help="no table, no progress bars")
    o.add_argument("--no-progress", action="store_true", help="no progress bars")
    o.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument("--version", action="version", version=f"qaudit {__version__}")
    return p


def build_report_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="qaudit report", description="Render a saved JSON report without running any model.")
    p.add_argument("report", type=Path, help="a JSON report written by --json")
    p.add_argument("--html", metavar="PATH", help="write the HTML report with layerwise plots ('-' for stdout)")
    p.add_argument("--worst", type=int, default=3, help="how many worst layers to highlight")
    p.add_argument("--quiet", action="store_true", help="no table on the terminal")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def _check_outputs(model: Path, outputs: dict, what: str = "model") -> None:
    """Fail before any work if an output path cannot be written or would clobber an input."""
    from .errors import ConfigError

    stdout = [flag for flag, path in outputs.items() if path is not None and str(path) == "-"]
    if len(stdout) > 1:
        raise ConfigError(f"{' and '.join(stdout)} both write to stdout ('-'); send at most one of them there")
    seen = {}
    for flag, path in outputs.items():
        if path is None or str(path) == "-":
            continue
        p = Path(path)
        if p.exists() and p.resolve() == model.resolve():
            raise ConfigError(f"{flag} {path} is the input {what}: qaudit never overwrites its input; choose another path")
        if p.is_dir():
            raise ConfigError(f"cannot write {flag} {path}: it is a directory; give a file path")
        if not p.parent.is_dir():
            raise ConfigError(f"cannot write {flag} {path}: directory {p.parent} does not exist")
        key = str(p.resolve())
        if key in seen:
            raise ConfigError(f"{seen[key]} and {flag} both write {path}; give them different paths")
        seen[key] = flag


class _RichProgress:
    """Progress bars on stderr for the stages of an audit."""

    def __init__(self):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        from .terminal import console

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
        self._task = self._p.add_task(description, total=total)

    def advance(self, n):
        if self._task is not None:
            self._p.advance(self._task, n)

    def done(self):
        self._p.stop()


def _run_audit(args) -> int:
    from .config import AuditConfig, QuantConfig
    from .control import audit
    from .errors import ConfigError
    from .output import write_text
    from .report import to_json
    from .terminal import console, render

    cfg = AuditConfig(
        model=args.model,
        calib=args.calib,
        eval=args.eval,
        labels=args.labels,
        output_model=args.output_model,
        batch_size=args.batch_size,
        max_samples=args.max_samples,
        clip_percentile=args.clip_percentile,
        quant=QuantConfig(
            format=args.format,
            activation_type=args.activation_type,
            weight_type=args.weight_type,
            per_channel=args.per_channel,
            percentile=args.percentile,
            calib_symmetric=not args.calib_asymmetric,
            exclude=tuple(args.exclude),
        ),
    )
    if args.worst < 0:
        raise ConfigError(f"--worst must be >= 0 (got {args.worst})")
    _check_outputs(args.model, {"--json": args.json, "--output-model": args.output_model, "--html": args.html})
    show_progress = not (args.quiet or args.no_progress) and sys.stderr.isatty()
    progress = _RichProgress() if show_progress else None
    try:
        report = audit(cfg, progress)
    finally:
        if progress is not None:
            progress.done()
    if args.json:
        write_text(args.json, to_json(report))
    if args.html:
        from .html import default_label, render_html

        write_text(args.html, render_html([(default_label(report), report)], worst=args.worst))
    if not args.quiet:
        # human output to stderr when stdout carries the JSON or the HTML
        render(report, console(stderr="-" in (args.json, args.html)), worst=args.worst)
    return EXIT_OK


def _run_report(args) -> int:
    from .errors import ConfigError
    from .report import from_json
    from .terminal import console, render

    path = Path(args.report)
    if args.worst < 0:
        raise ConfigError(f"--worst must be >= 0 (got {args.worst})")
    if not path.is_file():
        raise ConfigError(f"report not found: {path} (give the JSON file written by --json)")
    _check_outputs(path, {"--html": args.html}, what="report")
    try:
        report = from_json(path.read_text(encoding="utf-8"))
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} is not a readable qaudit JSON report: {e}") from None
    if args.html:
        from .html import default_label, render_html
        from .output import write_text

        write_text(args.html, render_html([(default_label(report), report)], worst=args.worst))
    if not args.quiet:
        render(report, console(stderr=args.html == "-"), worst=args.worst)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "report":
        args = build_report_parser().parse_args(argv[1:])
        run = _run_report
    else:
        args = build_parser().parse_args(argv)
        run = _run_audit
    try:
        return run(args)
    except QauditError as e:
        if args.debug:
            raise
        sys.stderr.write(f"qaudit: error: {e}\n")
        return e.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("qaudit: interrupted\n")
        return 130
    except Exception as e:  # a bug: never reported as a verdict
        if args.debug:
            raise
        sys.stderr.write(
            f"qaudit: internal error: {type(e).__name__}: {e} (run again with --debug for the traceback "
            "and report it)\n"
        )
        return EXIT_INTERNAL


def entry() -> None:
    raise SystemExit(main())


if __name__ == "__main__":
    entry()
