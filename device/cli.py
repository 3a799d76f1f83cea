"""``edgekit-agent``: the command the board runs (also ``python3 edgekit-agent.pyz``
and ``python3 -m edgekit.device``).

Commands: info, doctor [BUNDLE], verify BUNDLE, bench BUNDLE, eval BUNDLE,
run BUNDLE (bench + eval). Results are JSON on stdout (or --out FILE), a
readable table instead when stdout is a terminal (--json forces JSON);
progress is JSON lines on stderr (text when stderr is a terminal).

Exit codes: 0 ok; 1 the command ran but something failed (a run failed or was
skipped, the accuracy gate failed, doctor found something missing); 2 bad
input (EdgekitError: one line ``error: ...`` on stderr); 3 timed out; 130
interrupted.

This module imports only the standard library, so ``info`` and ``doctor`` work
on a board that has no numpy or onnxruntime yet.
"""
import argparse
import json
import os
import sys
import tempfile
import threading
import traceback
from typing import Any, Callable, Dict, List, Optional

from ._version import __version__
from .errors import EdgekitError

EXIT_OK, EXIT_FAILED, EXIT_INPUT, EXIT_TIMEOUT, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
_emit_lock = threading.Lock()


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def _nonneg_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgekit-agent", description="Measure an edgekit bundle on this board: latency and accuracy, as JSON.")
    parser.add_argument("--version", action="version", version="edgekit-agent %s" % __version__)
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def output_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--out", metavar="FILE", help="write the JSON here instead of stdout")
        p.add_argument("--json", action="store_true", help="print JSON even when stdout is a terminal")

    p = sub.add_parser("info", help="describe this board: model, L4T/JetPack, CPU, memory, GPU, runtimes, power mode")
    output_options(p)

    p = sub.add_parser("doctor", help="say what this board lacks to run a bundle, with install lines")
    p.add_argument("bundle", nargs="?", help="bundle folder or .tar (optional)")
    p.add_argument("--backend", choices=("auto", "tensorrt", "onnxruntime"), default="auto")
    output_options(p)

    p = sub.add_parser("verify", help="check every file of a bundle against its sha256")
    p.add_argument("bundle", help="bundle folder or .tar")
    output_options(p)

    for name, text in (
        ("bench", "time inference (warm-up, iterations) and the pre/infer/post split on real images"),
        ("eval", "measure accuracy on the bundle's evaluation set (COCO mAP or top-1/top-5)"),
        ("run", "bench then eval, for every variant"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("bundle", help="bundle folder or .tar")
        p.add_argument("--variant", action="append", metavar="NAME", help="only this variant (repeatable); default all")
        p.add_argument("--backend", choices=("auto", "tensorrt", "onnxruntime"), default="auto", help="default: the profile's runtime when it works here")
        p.add_argument("--providers", metavar="LIST", help="ONNX Runtime execution providers, comma-separated (default: the profile's)")
        p.add_argument("--threads", type=_positive_int, metavar="N", help="ONNX Runtime intra-op threads (0: its default)")
        p.add_argument("--engine-cache", metavar="DIR", help="TensorRT engine cache (default ~/.edgekit/engines or $EDGEKIT_HOME/engines)")
        p.add_argument(
            "--trt-int8",
            choices=("auto", "explicit", "implicit"),
            default="auto",
            help="TensorRT INT8 from the Q/DQ graph (explicit) or the fp32 graph + calibration cache (implicit); auto: Q/DQ when present",
        )
        p.add_argument("--timeout", type=_nonneg_float, default=1800.0, metavar="S", help="give up on a variant after S seconds (0: never; default 1800)")
        p.add_argument("--progress", choices=("auto", "json", "text", "none"), default="auto", help="stderr progress (auto: text on a terminal, else JSON lines)")
        if name in ("bench", "run"):
            p.add_argument("--warmup", type=_positive_int, metavar="N", help="warm-up iterations (default: the profile's)")
            p.add_argument("--warmup-seconds", type=_nonneg_float, metavar="S", help="warm up for at least S seconds")
            p.add_argument("--iterations", type=_positive_int, metavar="N", help="timed iterations, at least (default: the profile's)")
            p.add_argument("--min-seconds", type=_nonneg_float, metavar="S", help="time for at least S seconds")
            p.add_argument("--stage-images", type=_positive_int, default=20, metavar="N", help="images for the pre/infer/post split in bench (default 20)")
        if name in ("eval", "run"):
            p.add_argument("--max-drift", type=_nonneg_float, metavar="F", help="fail a variant whose mAP (or top-1) differs from the host's by more (default: the profile's, 0.01)")
            p.add_argument("--max-images", type=_positive_int, metavar="N", help="evaluate only the first N images (no drift gate then)")
        output_options(p)
    return parser


# --- output --------------------------------------------------------------------------


def _write_atomic(path: str, text: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".%s." % os.path.basename(path), suffix=".partial", dir=directory)
    except OSError as exc:
        raise EdgekitError("cannot write %s (%s)" % (path, exc.strerror), "choose a writable --out path")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def emit(obj: Dict[str, Any], args: argparse.Namespace, render: Callable[[Dict[str, Any]], str]) -> None:
    """JSON to --out or stdout; a table instead of JSON on a terminal."""
    text = json.dumps(obj, indent=2, default=str) + "\n"
    with _emit_lock:
        if getattr(args, "out", None):
            _write_atomic(args.out, text)
        if sys.stdout.isatty() and not getattr(args, "json", False):
            sys.stdout.write(render(obj))
        elif not getattr(args, "out", None):
            sys.stdout.write(text)
        sys.stdout.flush()


def _error_line(message: str) -> None:
    sys.stderr.write("error: %s\n" % message)
    sys.stderr.flush()


# --- commands ------------------------------------------------------------------------


def cmd_info(args: argparse.Namespace) -> int:
    from .sysinfo import collect
    from .table import render_info

    emit(collect(), args, render_info)
    return EXIT_OK


def cmd_doctor(args: argparse.Namespace) -> int:
    from .doctor import diagnose
    from .table import render_doctor

    report = diagnose(args.bundle, args.backend)
    emit(report, args, render_doctor)
    return EXIT_OK if report["ok"] else EXIT_FAILED


def cmd_verify(args: argparse.Namespace) -> int:
    from .bundle import Bundle

    with Bundle.open(args.bundle) as bundle:
        problems = bundle.verify_all()
        report = {"ok": not problems, "bundle": bundle.describe(), "files": len(bundle.manifest["files"]), "problems": problems}

    def render(r: Dict[str, Any]) -> str:
        head = "%s: %d files, %s\n" % (r["bundle"]["name"], r["files"], "all match their sha256" if r["ok"] else "%d problems" % len(r["problems"]))
        return head + "".join("  %s\n" % p for p in r["problems"])

    emit(report, args, render)
    if problems:
        more = " (and %d more)" % (len(problems) - 1) if len(problems) > 1 else ""
        raise EdgekitError("bundle %s failed verification: %s%s" % (args.bundle, problems[0], more), "copy the bundle again or rebuild it")
    return EXIT_OK


def cmd_measure(args: argparse.Namespace) -> int:
    from .progress import Progress
    from .result import finish
    from .runner import Options, run_bundle
    from .table import render_result

    options = Options(
        command=args.command,
        variants=args.variant,
        backend=args.backend,
        providers=[p.strip() for p in args.providers.split(",") if p.strip()] if args.providers else None,
        warmup=getattr(args, "warmup", None),
        warmup_seconds=getattr(args, "warmup_seconds", None),
        iterations=getattr(args, "iterations", None),
        min_seconds=getattr(args, "min_seconds", None),
        threads=args.threads,
        max_drift=getattr(args, "max_drift", None),
        max_images=getattr(args, "max_images", None),
        stage_images=getattr(args, "stage_images", 20),
        engines_dir=args.engine_cache,
        timeout=args.timeout,
        debug=args.debug,
        trt_int8=args.trt_int8,
    )
    progress = Progress(args.progress)

    def on_timeout(session: Any) -> None:
        # The main thread is stuck (a hung driver call cannot be interrupted):
        # report what we have, then leave without waiting for it.
        with session.lock:
            if session.finished:
                return
            session.finished = True
            message = "timed out after %g s (--timeout)" % args.timeout
            if session.current is not None:
                session.current["status"] = "failed"
                session.current["error"] = "%s; the board or runtime may be hung, check dmesg" % message
            session.result["errors"].append(message)
            finish(session.result)
        try:
            emit(session.result, args, render_result)
            _error_line("variant %s %s" % (session.current["variant"] if session.current else "?", message))
        finally:
            os._exit(EXIT_TIMEOUT)

    result = run_bundle(args.bundle, options, progress, on_timeout=on_timeout)
    progress.event("done", ok=result["ok"])
    progress.close()
    emit(result, args, render_result)
    if not result["runs"] and result["errors"]:
        _error_line(result["errors"][0])
        return EXIT_INPUT
    return EXIT_OK if result["ok"] else EXIT_FAILED


COMMANDS = {"info": cmd_info, "doctor": cmd_doctor, "verify": cmd_verify, "bench": cmd_measure, "eval": cmd_measure, "run": cmd_measure}


def main(argv: Optional[List[str]] = None) -> None:
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if not args.command:
        parser.print_help(sys.stderr)
        sys.exit(EXIT_INPUT)
    try:
        code = COMMANDS[args.command](args)
    except EdgekitError as exc:
        if args.debug:
            traceback.print_exc()
        _error_line(exc.one_line())
        code = exc.exit_code
    except KeyboardInterrupt:
        _error_line("interrupted")
        code = EXIT_INTERRUPTED
    except Exception as exc:  # a bug: one line, traceback on request
        if args.debug:
            traceback.print_exc()
        _error_line("internal error (%s: %s); rerun with --debug and report it" % (type(exc).__name__, " ".join(str(exc).split())))
        code = EXIT_FAILED
    sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    main()
