"""Non-learnable representations (hand-crafted features, frozen teachers) and their disk cache."""

from bench.representations import teacher  # noqa: F401  (registers "teacher")
from bench.representations.cache import cached_representation
from bench.representations.features import AUGMENTED, REPRESENTATIONS, augmented

__all__ = ["AUGMENTED", "REPRESENTATIONS", "augmented", "cached_representation"]
