"""``edgekit-agent``: the command the board runs (also ``python3 edgekit-agent.pyz``
and ``python3 -m edgekit.device``).

Commands: info, doctor [BUNDLE], verify BUNDLE, bench BUNDLE, eval BUNDLE,
run BUNDLE (bench + eval). Results are JSON on stdout (or --out FILE), a
readable table instead when stdout is a terminal (--json forces JSON);
progress is JSON lines on stderr (text when stderr is a terminal).

Exit codes: 0 ok (a variant this board cannot run is "skipped", not a failure);
1 the command ran but something failed (a run failed, every run was skipped,
the accuracy gate failed, doctor found something missing); 2 bad
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

from edgekit.contract._version import __version__
from edgekit.contract.agent_command import EXIT_FAILED, EXIT_INPUT, EXIT_INTERRUPTED, EXIT_OK, EXIT_TIMEOUT, add_measure_options
from edgekit.contract.errors import EdgekitError
from edgekit.contract.words import BACKEND_CHOICES

_emit_lock = threading.Lock()


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
    p.add_argument("--backend", choices=BACKEND_CHOICES, default="auto")
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
        add_measure_options(p, name)
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
    from edgekit.device.text_table import render_info

    emit(collect(), args, render_info)
    return EXIT_OK


def cmd_doctor(args: argparse.Namespace) -> int:
    from .doctor import diagnose
    from edgekit.device.text_table import render_doctor

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
    from edgekit.contract.agent_events import Progress
    from edgekit.contract.result import finish
    from .runner import Options, run_bundle
    from edgekit.device.text_table import render_result

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
        profile_layers=getattr(args, "profile_layers", False),
        energy=getattr(args, "energy", "auto"),
        batch=getattr(args, "batch", None),
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
    if result["bundle"].get("manifest_sha256") is None and not result["runs"] and result["errors"]:
        # The bundle could not be opened: there is no result to give, only the error.
        raise EdgekitError(result["errors"][0], "")
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
