"""Calibration data readers for ONNX Runtime's quantization tooling.

ONNX Runtime's ``CalibrationDataReader`` is an abstract class whose
``__subclasshook__`` accepts any object with a ``get_next`` method, so these
readers need no import of onnxruntime at all: the device can import this
module on a board that only has TensorRT. Python 3.8.
"""
from typing import Dict, Iterator, List, Optional, Sequence

import numpy as np

from .images import ImageBatch, load_images
from .preprocess import PreprocessSpec


class ImageBatchReader(object):
    """Feeds decoded images one at a time as ``{input_name: tensor}``.

    ``set_range`` restricts it to a slice (ONNX Runtime's strided calibration
    uses it; edgekit uses it to calibrate in bounded-memory chunks).
    """

    def __init__(self, batch: ImageBatch, input_name: str, indices: Optional[Sequence[int]] = None) -> None:
        self.batch = batch
        self.input_name = input_name
        self._indices: List[int] = list(indices) if indices is not None else list(range(len(batch)))
        self._start = 0
        self._end = len(self._indices)
        self._pos = 0

    def get_next(self) -> Optional[Dict[str, np.ndarray]]:
        if self._start + self._pos >= self._end:
            return None
        i = self._indices[self._start + self._pos]
        self._pos += 1
        return {self.input_name: self.batch.tensor(i)}

    def __iter__(self) -> Iterator[Dict[str, np.ndarray]]:
        return self

    def __next__(self) -> Dict[str, np.ndarray]:
        item = self.get_next()
        if item is None:
            raise StopIteration
        return item

    def __len__(self) -> int:
        return len(self._indices)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._start = max(0, int(start_index))
        self._end = min(len(self._indices), int(end_index))
        self._pos = 0

    def rewind(self) -> None:
        self._pos = 0


def folder_reader(folder: str, spec: PreprocessSpec, input_name: str, count: Optional[int] = None, seed: int = 0) -> ImageBatchReader:
    """A reader over ``count`` deterministically sampled images of a folder."""
    return ImageBatchReader(load_images(folder, spec, count, seed), input_name)
