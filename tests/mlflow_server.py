"""A real MLflow tracking server for tests: an existing one named by an environment variable, or a throwaway one.

The throwaway server keeps its runs in a fresh database of a PostgreSQL server (see tests/postgres_server.py)
and proxies artifacts (`--serve-artifacts`) into a fresh directory, so clients log and read everything over
HTTP, as against a team's server. It listens on 127.0.0.1 with a free port; on exit it is stopped and its
database and directory are removed.

Run as a script (CI does, see .ci/run), it serves such a server until stopped:
`python tests/mlflow_server.py POSTGRES_URL DIR` prints the URL once the server answers `/health`, and cleans
up on SIGTERM or SIGINT.
"""

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from postgres_server import free_port, fresh_database, log_tail, serve

ENV_VAR = "SSL_BENCH_TEST_MLFLOW"
START_TIMEOUT_S = 120
STOP_TIMEOUT_S = 15
POLL_S = 0.25


def mlflow_url_from_env() -> str | None:
    """The URL of an existing server from `SSL_BENCH_TEST_MLFLOW`, or None when unset or empty."""
    return os.environ.get(ENV_VAR, "").strip() or None


@contextmanager
def mlflow_url(postgres_url: str, base: Path) -> Iterator[str]:
    """The server tests use: the one named by `SSL_BENCH_TEST_MLFLOW` if set, else a throwaway one on
    `postgres_url`'s server with its artifacts under `base`."""
    url = mlflow_url_from_env()
    if url is not None:
        yield url
        return
    with mlflow_server(postgres_url, base) as url:
        yield url


@contextmanager
def mlflow_server(postgres_url: str, base: Path) -> Iterator[str]:
    """Start `mlflow server` on a fresh database of `postgres_url`'s server, yield its URL, stop it and clean up.

    The URL is `http://127.0.0.1:<port>`. Raises `RuntimeError`, quoting the server's log, when it does not
    answer within 120 s.
    """
    base.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="mlflow-", dir=base))
    port, log = free_port(), root / "server.log"
    try:
        with fresh_database(postgres_url, "mlflow") as backend, log.open("w") as out:
            command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend, "--serve-artifacts",
                       "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
                       "--workers", "1"]
            # no job runner (GenAI jobs, seven extra processes); a session of its own, so that the server's
            # processes are stopped together as one process group
            env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
            server = subprocess.Popen(command, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT,
                                      start_new_session=True)
            try:
                url = f"http://127.0.0.1:{port}"
                _wait_until_healthy(url, server, log)
                yield url
            finally:
                _stop(server)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _wait_until_healthy(url: str, server: subprocess.Popen, log: Path) -> None:
    """Return once `url`/health answers 200; raise `RuntimeError` if the server exits or the time runs out."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"mlflow server exited with code {server.returncode}; its log ends with:\n{log_tail(log)}")
        if _healthy(url):
            return
        time.sleep(POLL_S)
    raise RuntimeError(f"mlflow server did not answer {url}/health within {START_TIMEOUT_S} s; "
                       f"its log ends with:\n{log_tail(log)}")


def _healthy(url: str) -> bool:
    """Whether `url`/health answers 200 now (False while the server is not listening yet)."""
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=5) as answer:
            return answer.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def _stop(server: subprocess.Popen) -> None:
    """SIGTERM the server's process group, SIGKILL it when it has not exited after 15 s."""
    try:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
    except ProcessLookupError:
        server.wait()


def main(argv: list[str] | None = None) -> int:
    """`mlflow_server.py POSTGRES_URL DIR`: serve a throwaway server until SIGTERM or SIGINT (see the module doc)."""
    parser = argparse.ArgumentParser(description="Serve a throwaway MLflow server; print its URL once it answers.")
    parser.add_argument("postgres_url", help="SQLAlchemy URL of a PostgreSQL server (a fresh database is made on it)")
    parser.add_argument("dir", type=Path, help="where the server's directory (artifacts, log) goes")
    args = parser.parse_args(argv)
    serve(mlflow_server(args.postgres_url, args.dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
