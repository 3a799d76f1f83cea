"""A test-only stand-in for torchvision, so that ``ultralytics`` imports here.

torchvision has no build for this torch on the test machine, and edgekit does
not need it. Ultralytics' model definitions (``ultralytics.nn.tasks``,
``ultralytics.nn.modules``) only reference it at import time: the installed
version (read from package metadata, hence the dist-info folder beside this
package) and a few names in ``ops``. Everything that would really compute with
torchvision (NMS, RoI ops, torchvision models) raises, so a test that reaches
it fails loudly instead of passing on a fake.
"""
import types

__version__ = "0.28.0"


def _unavailable(name):
    def call(*args, **kwargs):
        raise RuntimeError("torchvision.%s is not available: tests/ultralytics_shim provides import-time names only" % name)

    call.__name__ = name.rsplit(".", 1)[-1]
    return call


ops = types.ModuleType("torchvision.ops")
for _name in ("nms", "batched_nms", "box_iou", "roi_align", "deform_conv2d"):
    setattr(ops, _name, _unavailable("ops." + _name))
models = types.ModuleType("torchvision.models")
models.get_model = _unavailable("models.get_model")
transforms = types.ModuleType("torchvision.transforms")
