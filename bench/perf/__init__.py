"""``ssl-bench perf``: a benchmark of named training scenarios, evaluation speed and memory.

Every ratio is measured side by side in one process on the current device, so the figures compare like
with like on whatever machine runs it: each scenario's engine against the classic torchvision/DataLoader
pipeline and against its compute bound (see ``references``), the cached linear probe against the
full-network protocol, kNN and feature extraction (``evaluation``), ImageFolder decoding against the PIL
DataLoader (``folder``), and on CUDA peak memory and the largest batch that fits (``memory``). Results are printed and written as JSON under ``results/perf/``.
"""

from bench.perf.run import PerfOptions, perf, scenario_table

__all__ = ["PerfOptions", "perf", "scenario_table"]
