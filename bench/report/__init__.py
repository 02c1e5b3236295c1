"""Reports: a suite's MLflow runs as tables (md, csv, LaTeX, HTML), published reference numbers, run comparisons."""
