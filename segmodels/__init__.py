"""Bundled semantic-segmentation models (written from scratch, no weights)."""

from .deeplabv3 import deeplabv3
from .fcn import fcn8s

BUNDLED_MODELS = {"fcn8s": fcn8s, "deeplabv3": deeplabv3}

__all__ = ["BUNDLED_MODELS", "deeplabv3", "fcn8s"]
