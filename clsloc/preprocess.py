"""Preprocessing: the one definition of how an RGB image becomes network input.

Resize policy, input size and normalization are properties of a model; they
are written in its manifest at export and read back here by serving, batch
scoring and training's validation path, never retyped.

Policy ``stretch``: the whole image is resized to the input size, ignoring its
aspect ratio. Its virtue is that a box normalized to the network input is the
same box normalized to the original image, so mapping predictions back to
pixels is a plain scale (``clsloc.boxes.denormalize_boxes``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import cached_property

import numpy as np
from PIL import Image

# EfficientNet-Lite weights are TF ports: input scaled to about [-1, 1].
LITE_MEAN = (0.498, 0.498, 0.498)
LITE_STD = (0.502, 0.502, 0.502)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_INTERPOLATION = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


@dataclass(frozen=True)
class Preprocessing:
    """How to turn an RGB uint8 image into a float32 NCHW input."""

    size: tuple[int, int] = (224, 224)  # (height, width) of the network input
    resize: str = "stretch"
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = LITE_MEAN
    std: tuple[float, float, float] = LITE_STD
    scale: float = 255.0  # pixel values are divided by this before mean/std
    layout: str = "NCHW"

    def __post_init__(self) -> None:
        if self.resize != "stretch":
            raise ValueError(f"resize policy {self.resize!r} is not supported (known: 'stretch')")
        if self.interpolation not in _INTERPOLATION:
            raise ValueError(f"interpolation {self.interpolation!r} is not supported (known: {sorted(_INTERPOLATION)})")
        if self.layout != "NCHW":
            raise ValueError(f"layout {self.layout!r} is not supported (known: 'NCHW')")
        object.__setattr__(self, "size", tuple(int(v) for v in self.size))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if len(self.size) != 2 or min(self.size) < 1:
            raise ValueError(f"size must be (height, width) of positive ints, got {self.size}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0 or float(self.scale) <= 0:
            raise ValueError(
                f"mean and std need 3 values each, std and scale > 0 (got mean={self.mean}, std={self.std}, scale={self.scale})"
            )

    # -- the two steps -------------------------------------------------------
    def resize_image(self, rgb: np.ndarray | Image.Image) -> np.ndarray:
        """RGB uint8 (H, W, 3), or an RGB Pillow image, of any size -> RGB uint8 array at the input size."""
        height, width = self.size
        if isinstance(rgb, np.ndarray):
            if rgb.shape[:2] == (height, width):
                return rgb
            rgb = Image.fromarray(rgb)
        if rgb.size != (width, height):
            rgb = rgb.resize((width, height), _INTERPOLATION[self.interpolation])
        return np.asarray(rgb)

    def normalize(self, resized: np.ndarray) -> np.ndarray:
        """RGB uint8 (H, W, 3) or (N, H, W, 3) -> float32 (3, H, W) or (N, 3, H, W)."""
        if resized.dtype != np.uint8:
            return np.ascontiguousarray(np.moveaxis(self._arithmetic(resized), -1, -3))
        # A uint8 channel has 256 possible values: look them up, channel by channel, straight into
        # the CHW output. Bit-identical to the arithmetic and half its time (serving's hot path).
        out = np.empty((*resized.shape[:-3], 3, *resized.shape[-3:-1]), dtype=np.float32)
        for channel in range(3):
            np.take(self._table[channel], resized[..., channel], out=out[..., channel, :, :])
        return out

    def _arithmetic(self, x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float32) / np.float32(self.scale)
        x -= np.asarray(self.mean, dtype=np.float32)
        x /= np.asarray(self.std, dtype=np.float32)
        return x

    @cached_property
    def _table(self) -> np.ndarray:
        """(3, 256) float32: what ``_arithmetic`` makes of each uint8 value in each channel."""
        return np.ascontiguousarray(self._arithmetic(np.arange(256, dtype=np.uint8)[:, None].repeat(3, 1)).T)

    def __call__(self, rgb: np.ndarray | Image.Image) -> np.ndarray:
        return self.normalize(self.resize_image(rgb))

    def batch(self, images: list[np.ndarray]) -> np.ndarray:
        """Several RGB images of any sizes -> one float32 (N, 3, H, W) batch."""
        return self.normalize(np.stack([self.resize_image(im) for im in images]))

    # -- manifest round trip ---------------------------------------------------
    def to_dict(self) -> dict:
        d = asdict(self)
        d["size"] = list(self.size)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessing:
        known = {"size", "resize", "interpolation", "mean", "std", "scale", "layout"}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown preprocessing fields {sorted(unknown)} (known: {sorted(known)})")
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()})
