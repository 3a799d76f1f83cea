"""Runs a bundle's variants and builds the result (edgekit.contract.result).

One variant's failure never stops the others: each run ends ``ok``, ``failed``
(a fault: tampered file, corrupt model, out of memory, ...) or ``skipped`` (the
board lacks a capability, e.g. fp16 without a GPU), with its reason. A skipped
run does not make the result fail; only a result where every run was skipped does. Problems
with the bundle as a whole (unreadable manifest, unknown variant) end the
command before any run, still with a result that says why.
"""
import threading
import traceback
from typing import Any, Callable, Dict, List, Optional

from edgekit.contract import result as result_mod
from .backends.base import CannotRun, one_line, out_of_memory
from edgekit.contract.errors import EdgekitError
from edgekit.contract.agent_events import Progress

COMMANDS = ("bench", "eval", "run")
DEFAULT_MAX_DRIFT = 0.01
# Warm-up inferences before the per-image pass, so lazy initialisation is not timed.
IMAGE_WARMUP = 3


class Options(object):
    """What the command line asked for; None means "the profile's default"."""

    def __init__(
        self,
        command: str = "run",
        variants: Optional[List[str]] = None,
        backend: str = "auto",
        providers: Optional[List[str]] = None,
        warmup: Optional[int] = None,
        warmup_seconds: Optional[float] = None,
        iterations: Optional[int] = None,
        min_seconds: Optional[float] = None,
        threads: Optional[int] = None,
        max_drift: Optional[float] = None,
        max_images: Optional[int] = None,
        stage_images: int = 20,
        engines_dir: Optional[str] = None,
        timeout: float = 0.0,
        debug: bool = False,
        trt_int8: str = "auto",
        profile_layers: bool = False,
        energy: str = "auto",
        batch: Optional[List[int]] = None,
    ) -> None:
        if command not in COMMANDS:
            raise ValueError("command must be one of %s" % (COMMANDS,))
        self.command = command
        self.variants = variants
        self.backend = backend
        self.providers = providers
        self.warmup = warmup
        self.warmup_seconds = warmup_seconds
        self.iterations = iterations
        self.min_seconds = min_seconds
        self.threads = threads
        self.max_drift = max_drift
        self.max_images = max_images
        self.stage_images = stage_images
        self.engines_dir = engines_dir
        self.timeout = timeout
        self.debug = debug
        self.trt_int8 = trt_int8
        self.profile_layers = profile_layers
        self.energy = energy
        self.batch = list(batch) if batch else None


def resolve_settings(options: Options, profile: Dict[str, Any]) -> Dict[str, Any]:
    bench = profile.get("benchmark") or {}

    def pick(value: Any, key: str, default: Any) -> Any:
        return value if value is not None else bench.get(key, default)

    max_drift = options.max_drift
    if max_drift is None:
        max_drift = profile.get("max_drift", DEFAULT_MAX_DRIFT)
    return {
        "backend": options.backend,
        "providers": options.providers or profile.get("providers"),
        "warmup": int(pick(options.warmup, "warmup", 10)),
        "warmup_seconds": float(pick(options.warmup_seconds, "warmup_seconds", 0.0)),
        "iterations": int(pick(options.iterations, "iterations", 100)),
        "min_seconds": float(pick(options.min_seconds, "min_seconds", 0.0)),
        "threads": int(pick(options.threads, "threads", 0)),
        "max_drift": float(max_drift),
        "max_images": options.max_images,
        "stage_images": options.stage_images,
        "timeout_s": options.timeout,
        "trt_int8": options.trt_int8,
        "profile_layers": bool(options.profile_layers),
        "energy": options.energy,
        "batch": options.batch,
        "bench_input": None,
    }


class Session(object):
    """The result being built, shared with the watchdog (which may end a hung run)."""

    def __init__(self, result: Dict[str, Any]) -> None:
        self.result = result
        self.current = None  # type: Optional[Dict[str, Any]]
        self.lock = threading.Lock()
        self.finished = False


def _fail_run(run: Dict[str, Any], status: str, message: str) -> None:
    run["status"] = status
    run["error"] = message


def run_bundle(
    bundle_path: str,
    options: Options,
    progress: Optional[Progress] = None,
    info: Optional[Dict[str, Any]] = None,
    on_session: Optional[Callable[[Session], None]] = None,
    on_timeout: Optional[Callable[[Session], None]] = None,
) -> Dict[str, Any]:
    """Measure a bundle; always returns a result (its ``errors`` say what stopped it)."""
    from .bundle import Bundle
    from .sysinfo import collect

    progress = progress or Progress("none")
    info = info if info is not None else collect()
    bundle = None
    try:
        bundle = Bundle.open(bundle_path)
    except EdgekitError as exc:
        result = result_mod.new_result(options.command, info, {"name": None, "manifest_sha256": None, "path": bundle_path}, resolve_settings(options, {}))
        result["errors"].append(exc.one_line())
        return result_mod.finish(result)
    try:
        profile = bundle.manifest.get("profile") or {}
        settings = resolve_settings(options, profile)
        result = result_mod.new_result(options.command, info, bundle.describe(), settings)
        session = Session(result)
        if on_session is not None:
            on_session(session)
        try:
            require_packages(info)
            _run_all(bundle, options, settings, info, progress, session, on_timeout)
        except EdgekitError as exc:
            result["errors"].append(exc.one_line())
        except Exception as exc:  # a bug: still return a result that says so
            if options.debug:
                traceback.print_exc()
            result["errors"].append("internal error (%s: %s); rerun with --debug and report it" % (type(exc).__name__, one_line(exc)))
        with session.lock:
            session.finished = True
            result_mod.finish(result)
        return result
    finally:
        bundle.close()


def require_packages(info: Dict[str, Any]) -> None:
    """numpy and pillow are needed by every measurement; say which is missing and how to install it."""
    from .doctor import install_lines

    lines = install_lines(info)
    for module, name in (("numpy", "numpy"), ("PIL", "pillow")):
        try:
            __import__(module)
        except Exception as exc:  # ImportError, or a broken binary wheel
            raise EdgekitError("%s is not usable by this python3 (%s)" % (name, one_line(exc)), lines[name])


def _run_all(bundle: Any, options: Options, settings: Dict[str, Any], info: Dict[str, Any], progress: Progress, session: Session, on_timeout: Optional[Callable[[Session], None]]) -> None:
    from .backends.select import choose_backend

    result = session.result
    manifest = bundle.manifest
    profile = manifest.get("profile") or {}
    bundle.check_consistency()
    for rel in bundle.missing_files():
        _warn(result, progress, "the bundle declares %s but it is missing; copy the bundle again or rebuild it" % rel)
    variants = bundle.variants(options.variants)
    backend, warnings = choose_backend(options.backend, profile, info)
    for w in warnings:
        _warn(result, progress, w)
    progress.event("start", command=options.command, bundle=bundle.name, backend=backend, variants=[v["name"] for v in variants])

    task = None
    wants_accuracy = options.command in ("eval", "run")
    if options.command == "run" and not bundle.eval_spec():
        # Built without an evaluation set (`edgekit build --eval none`): latency is what
        # can be measured, and a result that only lacks what nobody packed is not a failure.
        _warn(result, progress, "accuracy not measured: the bundle has no evaluation set; rebuild it with --eval DIR (COCO json or YOLO labels) to measure mAP here")
        wants_accuracy = False
    try:
        task = _prepare_task(bundle, options, wants_accuracy)
    except EdgekitError as exc:
        if options.command == "eval":
            raise
        if wants_accuracy:
            result["errors"].append("accuracy not measured: %s" % exc.one_line())
        else:
            _warn(result, progress, "stage timing on real images skipped: %s" % exc.one_line())
        task = None
        wants_accuracy = False
    if task is not None and not task.images:
        _warn(result, progress, "the bundle has no evaluation images; preprocess/postprocess are not timed")
    for variant in variants:
        run = result_mod.new_run(variant["name"], variant["precision"], backend)
        with session.lock:
            result["runs"].append(run)
            session.current = run
        timer = None
        if options.timeout and options.timeout > 0 and on_timeout is not None:
            timer = threading.Timer(options.timeout, on_timeout, args=(session,))
            timer.daemon = True
            timer.start()
        try:
            _run_variant(bundle, variant, backend, run, task, wants_accuracy, options, settings, info, progress, result)
        finally:
            if timer is not None:
                timer.cancel()
        summary = {"variant": run["variant"], "status": run["status"], "error": run["error"]}
        if run["latency_ms"]:
            summary["p50_ms"] = run["latency_ms"]["p50"]
        if run["accuracy"] and run["accuracy"].get("metric") == "coco_map":
            summary["map"] = run["accuracy"]["stats"].get("map")
        progress.event("run", **summary)
    session.current = None


def _prepare_task(bundle: Any, options: Options, wants_accuracy: bool) -> Any:
    from .accuracy import make_task

    if wants_accuracy:
        task = make_task(bundle, options.max_images, annotations=True)
        bundle.require_verified(bundle.eval_files(), "the evaluation set")
        return task
    if not bundle.eval_spec():
        return None
    task = make_task(bundle, options.stage_images, annotations=False)
    bundle.require_verified([rel for _key, rel in task.images], "the evaluation images")
    return task


def _warn(result: Dict[str, Any], progress: Progress, message: str) -> None:
    if message not in result["warnings"]:
        result["warnings"].append(message)
        progress.warning(message)


def _bench_input(bundle: Any, task: Any, runner: Any, settings: Dict[str, Any]) -> Any:
    """A fixed input for the timing loop: the first evaluation image, else a grey image."""
    import numpy as np

    if task is not None and task.images:
        from edgekit.calibration.preprocess import preprocess_file

        rel = task.images[0][1]
        settings["bench_input"] = rel
        x, _ = preprocess_file(bundle.path_of(rel), task.pre)
        return x
    settings["bench_input"] = "synthetic (grey)"
    pre = bundle.manifest.get("preprocess") or {}
    value = float(pre.get("pad_value", 114)) * float(pre.get("scale", 1.0 / 255.0))
    return np.full(runner.input_shape or bundle.manifest["input"]["shape"], value, dtype=np.float32)


def _run_variant(
    bundle: Any,
    variant: Dict[str, Any],
    backend: str,
    run: Dict[str, Any],
    task: Any,
    wants_accuracy: bool,
    options: Options,
    settings: Dict[str, Any],
    info: Dict[str, Any],
    progress: Progress,
    result: Dict[str, Any],
) -> None:
    name = variant["name"]
    runner = None
    try:
        progress.event("phase", variant=name, phase="verify")
        bundle.require_verified(bundle.variant_files(variant), "variant %s" % name)
        from . import environment
        from .backends.select import create_runner

        environment.reset_peak_rss()
        progress.event("phase", variant=name, phase="load")
        runner = create_runner(
            backend,
            bundle,
            variant,
            info,
            providers=options.providers,
            threads=options.threads,
            engines_dir=options.engines_dir,
            log=lambda level, msg: progress.event("log", source=backend, level=level, message=msg),
            on_phase=lambda phase: progress.event("phase", variant=name, phase=phase),
            trt_int8=options.trt_int8,
            max_batch=max(settings["batch"] or [1]),
        )
        run["provider"] = runner.provider
        run["engine"] = runner.engine
        for w in runner.warnings:
            # The same runtime fact for every variant (e.g. a missing execution provider) is said once.
            if not any(seen.endswith(": " + w) for seen in result["warnings"]):
                _warn(result, progress, "%s: %s" % (name, w))
        if options.command in ("bench", "run"):
            _time_inference(bundle, runner, run, task, settings, progress, result)
            if options.batch:
                _time_batches(bundle, runner, run, task, settings, progress)
            if options.profile_layers:
                _profile_layers(bundle, runner, run, task, settings, progress, result)
        if task is not None and task.images:
            _image_pass(bundle, runner, run, task, wants_accuracy, variant, settings, progress, result)
        run["memory"] = {"peak_rss_mb": environment.peak_rss_mb(), "gpu_mb": runner.gpu_memory_mb()}
        if run["latency_ms"] is None:
            raise EdgekitError("variant %s: nothing was timed" % name, "add evaluation images to the bundle or use 'bench'")
        run["status"] = "ok"
    except CannotRun as exc:
        # Not a fault: the run's error says why, once (the "run" event and the table
        # show it; a warning as well would print it twice). It does not fail the result.
        _fail_run(run, "skipped", exc.one_line())
    except EdgekitError as exc:
        _fail_run(run, "failed", exc.one_line())
    except MemoryError as exc:
        _fail_run(run, "failed", out_of_memory("running variant %s" % name, one_line(exc) or "MemoryError").one_line())
    except Exception as exc:  # a bug or an unexpected runtime failure: record it, go on with the next variant
        if options.debug:
            traceback.print_exc()
        _fail_run(run, "failed", "internal error (%s: %s); rerun with --debug and report it" % (type(exc).__name__, one_line(exc)))
    finally:
        if runner is not None:
            runner.close()


def _time_inference(bundle: Any, runner: Any, run: Dict[str, Any], task: Any, settings: Dict[str, Any], progress: Progress, result: Dict[str, Any]) -> None:
    from . import environment
    from .energy import meter_for
    from .latency import measure, summarize, throughput_fps

    name = run["variant"]
    x = _bench_input(bundle, task, runner, settings)
    runner.prepare(x)
    marks = {}  # type: Dict[str, Any]
    meter = meter_for(settings)  # power rails (edgekit.device.energy): idle now, sampled in the timed loop only
    meter.measure_idle()

    def measure_started() -> None:
        marks["start"] = environment.snapshot(with_power_mode=True)
        meter.start()

    progress.event("phase", variant=name, phase="warmup")
    try:
        samples, warm, _wall = measure(
            runner.timed_step,
            warmup=settings["warmup"],
            warmup_seconds=settings["warmup_seconds"],
            iterations=settings["iterations"],
            min_seconds=settings["min_seconds"],
            on_progress=lambda phase, done, total: progress.progress(name, phase, done, total),
            on_measure_start=measure_started,
        )
    finally:
        meter.stop()
    run["energy"] = meter.result(len(samples))
    end = environment.snapshot()
    run["latency_ms"] = summarize(samples)
    run["throughput_fps"] = throughput_fps(run["latency_ms"]["mean"])
    run["iterations"] = len(samples)
    run["warmup"] = warm
    run["environment"] = environment.compare(marks.get("start") or end, end, environment.passive_trips_c())
    if run["environment"]["throttled"]:
        _warn(result, progress, "%s: the board throttled during the run (%s); latency is not steady-state" % (name, "; ".join(run["environment"]["throttle_reasons"])))


def _time_batches(bundle: Any, runner: Any, run: Dict[str, Any], task: Any, settings: Dict[str, Any], progress: Progress) -> None:
    """run["throughput"]: the timing loop again per --batch size, on the bench input repeated.

    A size the bundle cannot run (its graphs have a fixed batch of 1) is
    skipped with its reason, not failed. TensorRT engines are built with one
    optimisation profile up to the largest size asked (create_runner's max_batch).
    """
    import numpy as np

    from .latency import batch_entry, measure, summarize

    name = run["variant"]
    dynamic = (bundle.manifest.get("input") or {}).get("batch") == "dynamic"
    x = _bench_input(bundle, task, runner, settings)
    entries = []  # type: List[Dict[str, Any]]
    for size in settings["batch"]:
        reason = None
        if size > 1 and not dynamic:
            reason = "the bundle's graphs have a fixed batch of 1; rebuild with edgekit build --dynamic-batch"
        if reason is not None:
            entries.append(batch_entry(size, None, reason=reason))
            continue
        runner.prepare(np.repeat(x, size, axis=0) if size > 1 else x)
        progress.event("phase", variant=name, phase="batch %d" % size)
        samples, _warm, _wall = measure(
            runner.timed_step,
            warmup=settings["warmup"],
            warmup_seconds=settings["warmup_seconds"],
            iterations=settings["iterations"],
            min_seconds=settings["min_seconds"],
        )
        entries.append(batch_entry(size, summarize(samples), iterations=len(samples)))
    runner.prepare(x)  # later passes see the batch-1 input again
    run["throughput"] = entries


def _profile_layers(bundle: Any, runner: Any, run: Dict[str, Any], task: Any, settings: Dict[str, Any], progress: Progress, result: Dict[str, Any]) -> None:
    """run["layers"]: where the inference time goes, node by node (after the timed loop, never inside it).

    A backend without a profiler, or a profiler failure, is a warning: the
    variant's latency and accuracy still count.
    """
    from .layer_profile import PROFILE_RUNS, PROFILE_WARMUP

    name = run["variant"]
    progress.event("phase", variant=name, phase="profile")
    try:
        run["layers"] = runner.profile_layers(_bench_input(bundle, task, runner, settings), PROFILE_WARMUP, PROFILE_RUNS)
    except EdgekitError as exc:
        _warn(result, progress, "%s: per-layer times not measured: %s" % (name, exc.one_line()))


def _image_pass(
    bundle: Any,
    runner: Any,
    run: Dict[str, Any],
    task: Any,
    wants_accuracy: bool,
    variant: Dict[str, Any],
    settings: Dict[str, Any],
    progress: Progress,
    result: Dict[str, Any],
) -> None:
    from edgekit.calibration.preprocess import preprocess_file

    from .accuracy import image_pass, judge
    from .latency import stage_summary, summarize, throughput_fps

    name = run["variant"]
    phase = "eval" if wants_accuracy else "stages"
    # Warm up on the first image so the first timed inference is not the runtime's lazy start.
    x, _ = preprocess_file(bundle.path_of(task.images[0][1]), task.pre)
    for _ in range(IMAGE_WARMUP):
        runner.infer(x)
    progress.event("phase", variant=name, phase=phase)
    stages, collector = image_pass(
        runner, bundle, task, task.images, collect=wants_accuracy, on_progress=lambda done, total: progress.progress(name, phase, done, total)
    )
    run["stages_ms"] = {stage: stage_summary(values) for stage, values in stages.items()}
    per_image = [a + b + c for a, b, c in zip(stages["preprocess"], stages["inference"], stages["postprocess"])]
    run["end_to_end_ms"] = stage_summary(per_image)
    if run["latency_ms"] is None:
        # eval alone: the inference latency is what the images measured (host copies included).
        run["latency_ms"] = summarize(stages["inference"])
        run["throughput_fps"] = throughput_fps(run["latency_ms"]["mean"])
        run["iterations"] = len(stages["inference"])
        run["warmup"] = IMAGE_WARMUP
    if wants_accuracy:
        stats = task.finish(collector)
        run["accuracy"] = judge(task.metric, stats, len(task.images), task.total, variant, settings["max_drift"], curves=task.curves)
        if run["accuracy"]["passed"] is False:
            _warn(result, progress, "%s failed the accuracy gate: %s" % (name, run["accuracy"]["note"]))
