"""Suites: one YAML file that expands into cells (``suite``), its cells and axes (``cells``), where its results go and
how its workers start (``infra``), and the variants of it that ran (``as_run``). Above the run config and the
detection stage, whose schemas a suite holds."""
