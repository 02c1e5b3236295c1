"""Non-learnable representations (hand-crafted features, frozen teachers) and their disk cache."""

from bench.representations.cache import cached_representation
from bench.representations.features import AUGMENTED, augmented
from bench.representations.registry import REPRESENTATIONS

__all__ = ["AUGMENTED", "REPRESENTATIONS", "augmented", "cached_representation"]
