"""A real PostgreSQL server as the Optuna work queue: two worker processes pop enqueued trials, none twice."""

import multiprocessing
import socket
import uuid
import warnings
from collections.abc import Iterator
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from postgres_server import (
    ENV_VAR,
    PostgresUnavailable,
    postgres_server,
    postgres_url,
    postgres_url_from_env,
)

N_TRIALS = 10
WAIT_S = 300  #: a hang, not a slow machine (spawning and importing can take a minute under load)


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One server for the module: `SSL_BENCH_TEST_POSTGRES` or a throwaway cluster; skip when neither exists."""
    try:
        with postgres_url(tmp_path_factory.mktemp("postgres")) as server_url:
            yield server_url
    except PostgresUnavailable as error:
        pytest.skip(error.reason)


def _storage(url: str) -> optuna.storages.RDBStorage:
    """The queue storage as the workers open it: heartbeat every second, stale after two."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(url, heartbeat_interval=1, grace_period=2)


def _worker(url: str, study_name: str, start: Barrier, held: Barrier, ran: Queue) -> None:
    """Pop waiting trials until none is left; report the cells this process ran.

    The first trial is held until the other worker holds one too (``held``): both run at the same time however
    the machine schedules them."""
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
    study = optuna.load_study(study_name=study_name, storage=_storage(url))
    cells: list[int] = []
    start.wait(WAIT_S)
    while study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)):
        trial = study.ask()
        if trial.number >= N_TRIALS:  # not an enqueued trial: the queue emptied between the check and ask()
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            break
        cell = trial.suggest_int("cell", 0, N_TRIALS - 1)
        if not cells:
            held.wait(WAIT_S)
        cells.append(cell)
        study.tell(trial, float(cell))
    ran.put(cells)


def test_postgres_url_from_env_reads_and_strips_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, "  postgresql+psycopg2://u@db:5432/x \n")
    assert postgres_url_from_env() == "postgresql+psycopg2://u@db:5432/x"
    monkeypatch.setenv(ENV_VAR, " ")
    assert postgres_url_from_env() is None
    monkeypatch.delenv(ENV_VAR)
    assert postgres_url_from_env() is None


def test_throwaway_server_answers_then_is_gone(tmp_path: Path) -> None:
    try:
        with postgres_server(tmp_path) as server_url:
            port = sqlalchemy.make_url(server_url).port
            engine = sqlalchemy.create_engine(server_url)
            with engine.connect() as connection:
                row = connection.execute(sqlalchemy.text("select current_user, current_database()")).one()
            engine.dispose()
    except PostgresUnavailable as error:
        pytest.skip(error.reason)
    assert server_url == f"postgresql+psycopg2://postgres@127.0.0.1:{port}/ssl_bench"
    assert tuple(row) == ("postgres", "ssl_bench")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass


def test_two_workers_pop_each_enqueued_trial_exactly_once(url: str) -> None:
    study_name = f"queue-{uuid.uuid4().hex}"
    study = optuna.create_study(study_name=study_name, storage=_storage(url))
    for cell in range(N_TRIALS):
        study.enqueue_trial({"cell": cell})
    context = multiprocessing.get_context("spawn")
    start, held, ran = context.Barrier(2), context.Barrier(2), context.Queue()
    workers = [context.Process(target=_worker, args=(url, study_name, start, held, ran)) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=WAIT_S)
    try:
        assert [worker.exitcode for worker in workers] == [0, 0]
        per_worker = [ran.get(timeout=5) for _ in workers]
        assert all(per_worker), f"one worker ran every cell, so nothing ran concurrently: {per_worker}"
        assert sorted(per_worker[0] + per_worker[1]) == list(range(N_TRIALS))
        complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
        assert sorted((t.params["cell"], t.value) for t in complete) == [(c, float(c)) for c in range(N_TRIALS)]
        assert not study.get_trials(states=(optuna.trial.TrialState.WAITING, optuna.trial.TrialState.RUNNING))
    finally:
        for worker in workers:
            worker.kill()
        optuna.delete_study(study_name=study_name, storage=url)
