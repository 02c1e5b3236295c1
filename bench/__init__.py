"""ssl-bench: a declarative benchmark harness for self-supervised representation learning."""

__version__ = "0.1.0"
