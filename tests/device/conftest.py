"""Fixtures of the agent tests: bundles to measure, the agent zipapp, helpers
that run the agent as a board would (a subprocess, JSON on stdout)."""
import json
import os
import shutil
import subprocess
import sys
from typing import Dict, List, Optional, Tuple

import numpy as np
import pytest

AGENT_TIMEOUT = 300  # seconds; a test that hits it has found a hang
# The untrained demo scores ~0 mAP; below this the mAP comparison would prove nothing.
MIN_USEFUL_MAP = 0.05


class AgentRun(object):
    def __init__(self, rc: int, stdout: str, stderr: str, result: Optional[dict]) -> None:
        self.rc = rc
        self.stdout = stdout
        self.stderr = stderr
        self.result = result

    def events(self) -> List[dict]:
        return [json.loads(line) for line in self.stderr.splitlines() if line.startswith("{")]

    def run_of(self, variant: str) -> dict:
        assert self.result is not None, self.stderr
        for run in self.result["runs"]:
            if run["variant"] == variant:
                return run
        raise AssertionError("no run for %s in %s" % (variant, [r["variant"] for r in self.result["runs"]]))


def run_agent(args: List[str], python: Optional[List[str]] = None, env: Optional[Dict[str, str]] = None, cwd: Optional[str] = None, timeout: int = AGENT_TIMEOUT, preexec_fn=None) -> AgentRun:
    """Run ``edgekit-agent ARGS`` in a subprocess and parse its stdout as JSON when it is JSON."""
    argv = (python or [sys.executable, "-m", "edgekit.device"]) + list(args)
    full_env = dict(os.environ)
    full_env.pop("PYTHONPATH", None)
    full_env.update(env or {})
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=full_env, cwd=cwd, preexec_fn=preexec_fn)
    result = None
    out = proc.stdout.strip()
    if out.startswith("{"):
        result = json.loads(out)
    return AgentRun(proc.returncode, proc.stdout, proc.stderr, result)


def quick(command: str, bundle: str, *extra: str) -> List[str]:
    """Agent arguments with small iteration counts (the suite runs on 2 shared cores)."""
    args = [command, bundle, "--progress", "json"]
    if command in ("bench", "run"):
        args += ["--iterations", "10", "--warmup", "2", "--stage-images", "4"]
    return args + list(extra)


def copy_bundle(src: str, dst: str) -> str:
    shutil.copytree(src, dst)
    return dst


def load_manifest(bundle: str) -> dict:
    with open(os.path.join(bundle, "manifest.json"), encoding="utf-8") as f:
        return json.load(f)


def rewrite_bundle(src: str, dst: str, edit_manifest=None, replace_files: Optional[Dict[str, bytes]] = None) -> str:
    """A consistent new bundle (hashes recomputed by BundleWriter) from an existing one."""
    from edgekit.host.bundle.writer import BundleWriter

    manifest = load_manifest(src)
    replace_files = replace_files or {}
    with BundleWriter(dst) as writer:
        for rel in manifest["files"]:
            if rel in replace_files:
                writer.add_bytes(rel, replace_files[rel])
            else:
                writer.add_file(rel, os.path.join(src, *rel.split("/")))
        for rel, data in replace_files.items():
            if rel not in manifest["files"]:
                writer.add_bytes(rel, data)
        if edit_manifest is not None:
            manifest = edit_manifest(manifest) or manifest
        writer.commit(manifest)
    return dst


def _iou(a, b) -> float:
    w = max(min(a[2], b[2]) - max(a[0], b[0]), 0.0)
    h = max(min(a[3], b[3]) - max(a[1], b[1]), 0.0)
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter + 1e-9)


def _pseudo_labels(bundle: str) -> dict:
    """COCO ground truth made from the fp32 model's own detections, jittered, plus a missed box per image.

    An untrained network finds nothing real, so its mAP on the true labels is 0 and
    comparing the board with the host would prove nothing; against these labels the
    model scores well above 0 and every variant's mAP is a real number to match.
    """
    import onnxruntime as ort

    from edgekit.calibration.preprocess import PreprocessSpec, preprocess_file
    from edgekit.device.postprocess import PostprocessSpec, postprocess

    manifest = load_manifest(bundle)
    pre = PreprocessSpec.from_dict(manifest["preprocess"])
    post = PostprocessSpec.from_dict(manifest["postprocess"])
    fp32 = [v for v in manifest["variants"] if v["precision"] == "fp32"][0]
    session = ort.InferenceSession(os.path.join(bundle, fp32["file"]), providers=["CPUExecutionProvider"])
    with open(os.path.join(bundle, manifest["eval"]["annotations"]), encoding="utf-8") as f:
        coco = json.load(f)
    rng = np.random.default_rng(0)
    found = []
    for img in coco["images"]:
        path = os.path.join(bundle, manifest["eval"]["images"], img["file_name"])
        x, transform = preprocess_file(path, pre)
        boxes, scores, classes = postprocess(session.run(None, {manifest["input"]["name"]: x})[0], post)
        found.append((img, transform.boxes_to_original(boxes), scores, classes))
    # Objects: the detections that rank highest across all images (so the true
    # positives outrank the rest, as a trained model's would), at most 4 per image,
    # barely overlapping each other.
    all_scores = np.sort(np.concatenate([f[2] for f in found]))[::-1]
    cut = all_scores[min(len(all_scores) - 1, 4 * len(found))]
    anns = []
    for n, (img, boxes, scores, classes) in enumerate(found):
        chosen = []
        for b, sc, c in zip(boxes, scores, classes):
            if sc < cut or len(chosen) == 4:
                break
            if all(_iou(b, other) < 0.05 for other, _ in chosen):
                chosen.append((b, c))
        if n % 4 == 0 and chosen:  # an object the model misses: recall below 1
            chosen.append((np.array([5, 5, 5 + img["width"] / 4.0, 5 + img["height"] / 4.0], np.float32), chosen[0][1]))
        for box, cls in chosen:
            x1, y1, x2, y2 = [float(v) for v in box]
            w, h = x2 - x1, y2 - y1
            if w < 2 or h < 2:
                continue
            jitter = rng.normal(0, 0.04, 4) * [w, h, w, h]
            x1, y1, w, h = x1 + jitter[0], y1 + jitter[1], max(w + jitter[2], 2.0), max(h + jitter[3], 2.0)
            anns.append(
                {"id": len(anns) + 1, "image_id": img["id"], "category_id": int(post.category_ids[int(cls)]), "bbox": [x1, y1, w, h], "area": w * h, "iscrowd": 0}
            )
    coco["annotations"] = anns
    return coco


def relabelled_bundle(src: str, dst: str) -> str:
    """The bundle with pseudo-labels and host reference metrics recomputed by the host's own code."""
    from edgekit.calibration.preprocess import PreprocessSpec
    from edgekit.device.postprocess import PostprocessSpec
    from edgekit.host.bundle.reference import evaluate_onnx

    manifest = load_manifest(src)
    ann_rel = manifest["eval"]["annotations"]
    labels = json.dumps(_pseudo_labels(src)).encode("utf-8")
    tmp = dst + ".stage1"
    rewrite_bundle(src, tmp, replace_files={ann_rel: labels})
    pre = PreprocessSpec.from_dict(manifest["preprocess"])
    post = PostprocessSpec.from_dict(manifest["postprocess"])

    def with_host_metrics(m: dict) -> dict:
        for v in m["variants"]:
            if v.get("host_metrics") is None:
                continue
            stats = evaluate_onnx(os.path.join(tmp, v["file"]), os.path.join(tmp, m["eval"]["images"]), os.path.join(tmp, ann_rel), pre, post)
            v["host_metrics"] = dict(stats, runtime="onnxruntime-cpu")
        m["name"] = os.path.basename(dst)
        return m

    rewrite_bundle(tmp, dst, edit_manifest=with_host_metrics)
    shutil.rmtree(tmp)
    return dst


@pytest.fixture(scope="session")
def scored_bundle(cpu_bundle, tmp_path_factory) -> str:
    """The shared cpu demo bundle when its fp32 variant scores a useful mAP, else a pseudo-labelled copy."""
    manifest = load_manifest(cpu_bundle)
    fp32 = [v for v in manifest["variants"] if v["precision"] == "fp32"][0]
    if (fp32.get("host_metrics") or {}).get("map", 0.0) >= MIN_USEFUL_MAP:
        return cpu_bundle
    return relabelled_bundle(cpu_bundle, str(tmp_path_factory.mktemp("agent") / "scored"))


@pytest.fixture(scope="session")
def scored_run(scored_bundle, tmp_path_factory) -> AgentRun:
    """One full ``run`` of the scored bundle, shared by the tests that only read its result."""
    out = str(tmp_path_factory.mktemp("agent-run") / "result.json")
    run = run_agent(quick("run", scored_bundle, "--out", out))
    with open(out, encoding="utf-8") as f:
        run.result = json.load(f)
    return run


def _package_dir(module_name: str) -> Tuple[str, List[str]]:
    module = __import__(module_name)
    pkg_dir = os.path.dirname(module.__file__)
    site = os.path.dirname(pkg_dir)
    # Binary wheels keep their shared libraries beside the package (numpy.libs, pillow.libs).
    extras = [os.path.join(site, n) for n in os.listdir(site) if n.endswith(".libs") and n.split(".")[0].lower() in (module_name.lower(), "pillow")]
    return pkg_dir, extras


def deps_dir(root: str, modules: List[str]) -> str:
    """A folder holding only these packages (symlinked): a board's site-packages without edgekit."""
    os.makedirs(root, exist_ok=True)
    for name in modules:
        pkg, extras = _package_dir(name)
        for path in [pkg] + extras:
            link = os.path.join(root, os.path.basename(path))
            if not os.path.exists(link):
                os.symlink(path, link)
    return root


BOARD_MODULES = ["numpy", "PIL", "pycocotools", "onnxruntime"]


@pytest.fixture(scope="session")
def board_site(tmp_path_factory) -> str:
    """numpy, pillow, pycocotools and onnxruntime, and nothing else (no edgekit)."""
    return deps_dir(str(tmp_path_factory.mktemp("board-site")), BOARD_MODULES)


@pytest.fixture(scope="session")
def agent_pyz(tmp_path_factory) -> str:
    from edgekit.host.agent_pyz import build_agent_pyz

    return build_agent_pyz(str(tmp_path_factory.mktemp("pyz") / "edgekit-agent.pyz"))


def board_python(site: str) -> Tuple[List[str], Dict[str, str]]:
    """This interpreter without its site-packages (-S), seeing only ``site``."""
    return [sys.executable, "-S"], {"PYTHONPATH": site}


class AgentTools(object):
    """The helpers above, for test modules (pytest's importlib mode cannot import conftest)."""

    MIN_USEFUL_MAP = MIN_USEFUL_MAP
    run = staticmethod(run_agent)
    quick = staticmethod(quick)
    load_manifest = staticmethod(load_manifest)
    copy_bundle = staticmethod(copy_bundle)
    rewrite_bundle = staticmethod(rewrite_bundle)
    deps_dir = staticmethod(deps_dir)
    board_python = staticmethod(board_python)


@pytest.fixture(scope="session")
def tools() -> AgentTools:
    return AgentTools()
