"""Self-supervised methods, one per file; ``bench.methods.registry`` maps their names to their classes."""

from bench.methods.base import Method, MethodParams
from bench.methods.registry import METHODS, all_methods, baseline_methods, method_class

__all__ = ["Method", "MethodParams", "METHODS", "method_class", "all_methods", "baseline_methods"]
