"""Shared test set-up: one intra-op thread (fastest on a shared 2-core machine), CPU only, the slow tests first."""

import os

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import torch  # noqa: E402

torch.set_num_threads(1)

import pytest  # noqa: E402
from suite_fixtures import run_ablation_suite, run_search_suite  # noqa: E402


@pytest.fixture(scope="session")
def report_base(tmp_path_factory):
    """The two report suites of tests/suite_fixtures.py, run once per session in one folder.

    The report test modules share it (and one xdist worker: ``pytest.mark.xdist_group("report")``).
    """
    base = tmp_path_factory.mktemp("report_suites")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        run_ablation_suite(base)
        run_search_suite(base)
    return base


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests marked ``slow`` run first, each module's in their order (a stable sort).

    ``make test`` hands the tests to its workers in this order (``--dist loadgroup``; after the xdist groups,
    which go first as the largest work units): the long tests start early and the short ones fill the end, so
    the workers finish together instead of one waiting for the other's last long test.
    """
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
