"""edgekit.device: the agent that runs on the board.

Python >= 3.8; needs numpy, pillow, pycocotools and onnxruntime or tensorrt.
Never imports torch or edgekit.host: it travels to the board as one zipapp.
"""
from edgekit.contract._version import __version__

__all__ = ["__version__"]
