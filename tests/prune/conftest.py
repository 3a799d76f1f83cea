"""Fixtures for the pruning tests: small synthetic models covering the
structures that make channel pruning hard, and helpers to put them on disk.

The models are written as source text (ZOO_SOURCE) so that the same classes
can be imported as a module (for deep copies and pickling), written into a
folder as ``file.py:factory`` for the loader and the CLI, and pickled into a
YOLOv5-style checkpoint whose classes live only in that folder.
"""
import contextlib
import importlib
import sys
import types
import uuid

import pytest
import torch

ZOO_SOURCE = '''
import torch
from torch import nn


def cbr(c1, c2, k=3, s=1, g=1):
    return nn.Sequential(nn.Conv2d(c1, c2, k, s, k // 2, groups=g, bias=False), nn.BatchNorm2d(c2), nn.ReLU())


class Depthwise(nn.Module):
    """MobileNetV2-like: an inverted residual with a depthwise conv, a strided depthwise conv, a Linear classifier."""

    def __init__(self):
        super().__init__()
        self.stem = cbr(3, 24, 3, 2)
        self.expand = cbr(24, 72, 1)
        self.dw = cbr(72, 72, 3, 1, g=72)
        self.project = nn.Sequential(nn.Conv2d(72, 24, 1, bias=False), nn.BatchNorm2d(24))
        self.dw2 = cbr(24, 24, 3, 2, g=24)
        self.pw2 = cbr(24, 48, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(48, 10)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.project(self.dw(self.expand(x)))
        x = self.pw2(self.dw2(x))
        return self.fc(self.pool(x).flatten(1))


class Grouped(nn.Module):
    """Grouped convolutions (4 and 2 groups) between plain ones."""

    def __init__(self):
        super().__init__()
        self.stem = cbr(3, 32, 3, 2)
        self.g1 = cbr(32, 64, 3, 1, g=4)
        self.g2 = cbr(64, 48, 3, 2, g=2)
        self.head = nn.Conv2d(48, 7, 1)

    def forward(self, x):
        return self.head(self.g2(self.g1(self.stem(x)))).flatten(2).transpose(1, 2)


class Concat(nn.Module):
    """Two branches of unequal width (24 and 40) concatenated."""

    def __init__(self):
        super().__init__()
        self.a1 = cbr(3, 16, 3, 2)
        self.a2 = cbr(16, 24)
        self.b1 = cbr(3, 8, 3, 2)
        self.b2 = cbr(8, 40)
        self.fuse = cbr(64, 32, 1)
        self.out = nn.Conv2d(32, 5, 1)

    def forward(self, x):
        y = torch.cat([self.a2(self.a1(x)), self.b2(self.b1(x))], 1)
        return self.out(self.fuse(y)).flatten(2).transpose(1, 2)


class Residual(nn.Module):
    """A chain of residual adds: every block's output is tied to the stem's channels."""

    def __init__(self, n=4):
        super().__init__()
        self.stem = cbr(3, 32, 3, 2)
        self.blocks = nn.ModuleList(nn.Sequential(cbr(32, 32), nn.Conv2d(32, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32)) for _ in range(n))
        self.out = nn.Conv2d(32, 6, 1)

    def forward(self, x):
        x = self.stem(x)
        for b in self.blocks:
            x = torch.relu(x + b(x))
        return self.out(x).flatten(2).transpose(1, 2)


class LinearHead(nn.Module):
    """Conv features flattened into a two-layer Linear classifier (32x32 input)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(cbr(3, 16, 3, 2), cbr(16, 32, 3, 2))
        self.fc1 = nn.Linear(32 * 8 * 8, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(self.features(x).flatten(1))))


class Unaligned(nn.Module):
    """Widths 12 and 20 (not multiples of 8) and one layer of 4 (less than 8)."""

    def __init__(self):
        super().__init__()
        self.a = cbr(3, 12)
        self.b = cbr(12, 20)
        self.c = cbr(20, 4)
        self.d = cbr(4, 16)
        self.out = nn.Conv2d(16, 3, 1)

    def forward(self, x):
        return self.out(self.d(self.c(self.b(self.a(x))))).flatten(2).transpose(1, 2)


class C2f(nn.Module):
    """YOLOv8's block: one conv's output cut in two with chunk."""

    def __init__(self, c1=16, c2=32):
        super().__init__()
        self.c = c2 // 2
        self.cv1 = cbr(c1, 2 * self.c, 1)
        self.m = cbr(self.c, self.c)
        self.cv2 = cbr(3 * self.c, c2, 1)

    def forward(self, x):
        y = list(self.cv1(x).chunk(2, 1))
        y.append(self.m(y[-1]))
        return self.cv2(torch.cat(y, 1))


class SplitNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = cbr(3, 16, 3, 2)
        self.block = C2f(16, 32)
        self.out = nn.Conv2d(32, 6, 1)

    def forward(self, x):
        return self.out(self.block(self.stem(x))).flatten(2).transpose(1, 2)


class Detect(nn.Module):
    """A YOLOv5-style head: anchors, an export flag, (predictions, raw maps) in eval mode."""

    def __init__(self, nc=3, ch=(16, 32)):
        super().__init__()
        self.nc, self.no, self.na = nc, nc + 5, 2
        self.export = False
        self.register_buffer("anchors", torch.tensor([[10.0, 13, 16, 30], [30, 61, 62, 45]]).view(2, 2, 2))
        self.m = nn.ModuleList(nn.Conv2d(c, self.no * self.na, 1) for c in ch)

    def forward(self, xs):
        raw, z = [], []
        for i, x in enumerate(xs):
            y = self.m[i](x)
            bs, _, ny, nx = y.shape
            y = y.view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous()
            raw.append(y)
            z.append(y.sigmoid().view(bs, -1, self.no))
        if self.training:
            return raw
        return (torch.cat(z, 1),) if self.export else (torch.cat(z, 1), raw)


class TinyYolo(nn.Module):
    def __init__(self):
        super().__init__()
        self.b1 = cbr(3, 16, 3, 2)
        self.b2 = cbr(16, 32, 3, 2)
        self.detect = Detect(3, (16, 32))
        self.names = {0: "cat", 1: "dog", 2: "bird"}

    def forward(self, x):
        p1 = self.b1(x)
        return self.detect([p1, self.b2(p1)])


def depthwise():
    return Depthwise()


def tiny_yolo():
    return TinyYolo()
'''

ZOO_NAMES = ("Depthwise", "Grouped", "Concat", "Residual", "LinearHead", "Unaligned")


@pytest.fixture(scope="session")
def zoo() -> types.ModuleType:
    """The synthetic models as an importable module (a unique name, registered in sys.modules)."""
    name = "edgekit_prune_zoo_%s" % uuid.uuid4().hex[:8]
    module = types.ModuleType(name)
    sys.modules[name] = module
    exec(compile(ZOO_SOURCE, "<%s>" % name, "exec"), module.__dict__)
    yield module
    sys.modules.pop(name, None)


@pytest.fixture()
def zoo_file(tmp_path) -> str:
    """The synthetic models written as a .py file (for ``file.py:factory``)."""
    path = tmp_path / "zoo_models.py"
    path.write_text(ZOO_SOURCE)
    return str(path)


@pytest.fixture()
def yolo_checkpoint(tmp_path):
    """A YOLOv5-style checkpoint {'model': model.half()} whose classes live only in a code folder.

    Returns (checkpoint path, code folder, package name). The package name is
    unique, so that it cannot already be importable; it is removed from
    sys.modules and sys.path afterwards.
    """
    with fake_yolo_module(tmp_path) as (mod, code, package):
        torch.manual_seed(0)
        model = mod.TinyYolo().eval()
        ckpt = tmp_path / "tiny.pt"
        torch.save({"model": model.half(), "epoch": 3}, str(ckpt))
    yield str(ckpt), str(code), package
    _forget(package, code)


@contextlib.contextmanager
def fake_yolo_module(tmp_path):
    """ZOO_SOURCE as ``<unique package>.yolo`` in a code folder, imported for the body:
    yields (module, code folder, package name); the package is forgotten again after."""
    package = "fakeyolo_%s" % uuid.uuid4().hex[:8]
    code = tmp_path / "code"
    (code / package).mkdir(parents=True)
    (code / package / "__init__.py").write_text("")
    (code / package / "yolo.py").write_text(ZOO_SOURCE)
    sys.path.insert(0, str(code))
    try:
        importlib.invalidate_caches()
        yield importlib.import_module("%s.yolo" % package), str(code), package
    finally:
        _forget(package, code)


def _forget(package, code):
    if str(code) in sys.path:
        sys.path.remove(str(code))
    for key in [k for k in sys.modules if k == package or k.startswith(package + ".")]:
        del sys.modules[key]


@pytest.fixture(scope="session")
def demo_model():
    """The demo detector architecture with seeded random weights and BatchNorm statistics estimated on noise (eval mode)."""
    from edgekit.host.demo.model import DemoDetector

    from edgekit.host.prune import recalibrate_bn

    torch.manual_seed(0)
    model = DemoDetector()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.2, 1.5)
                m.bias.uniform_(-0.3, 0.3)
    # Statistics that match what the layers see, so signals reach the outputs.
    recalibrate_bn(model, torch.rand(8, 3, 64, 64))
    return model.eval()


@pytest.fixture(scope="session")
def demo_input() -> torch.Tensor:
    # The demo detector takes any multiple of 32; 64 keeps the tests quick.
    torch.manual_seed(1)
    return torch.rand(1, 3, 64, 64)


@pytest.fixture(scope="session")
def run_cli():
    """Run `edgekit ...` in-process; returns (exit code, stdout, stderr)."""
    from edgekit.host.cli.main import main

    def run(args, capsys):
        try:
            main(list(args))
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        out, err = capsys.readouterr()
        return code, out, err

    return run


def conv_widths(model) -> dict:
    return {n: (m.in_channels, m.out_channels) for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}


@pytest.fixture(scope="session")
def widths():
    return conv_widths


@pytest.fixture(scope="session")
def small_images():
    torch.manual_seed(2)
    return [torch.rand(1, 3, 32, 32) for _ in range(4)]



@pytest.fixture(autouse=True, scope="package")
def one_thread():
    """One intra-op thread: on a busy 2-core machine two threads spin against each other
    (measured 20x slower forward passes); restored afterwards for the other areas' tests."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture()
def image_dir(tmp_path):
    """Six small random RGB images: unlabelled calibration/recovery input."""
    import numpy as np
    from PIL import Image

    folder = tmp_path / "calib"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(str(folder / ("img%d.png" % i)))
    return str(folder)
