"""A real PostgreSQL server for tests: an existing one named by an environment variable, or a throwaway cluster.

The throwaway cluster lives in a fresh directory, listens on a unix socket in that directory and on 127.0.0.1
with a free port, trusts every local connection and is deleted on exit. PostgreSQL refuses to run as root, so
under root the server binaries run as the `postgres` system user (the Debian package creates it).

Run as a script (CI does, see .ci/run), it serves such a cluster until stopped:
`python tests/postgres_server.py DIR` prints the URL once the server answers, and stops and deletes the
cluster on SIGTERM or SIGINT.
"""

import argparse
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy

ENV_VAR = "SSL_BENCH_TEST_POSTGRES"
DATABASE = "ssl_bench"
SUPERUSER = "postgres"
START_TIMEOUT_S = 120  #: initdb and the start take tens of seconds on a loaded machine
TOOLS = ("initdb", "pg_ctl", "createdb")
INSTALL_HINT = (f"install PostgreSQL (Debian/Ubuntu: `apt-get install -y postgresql`) or set {ENV_VAR} to the "
                "SQLAlchemy URL of an existing server")
# The socket path `<dir>/.s.PGSQL.<port>` must fit in sockaddr_un.sun_path (107 characters on Linux).
MAX_SOCKET_DIR_LEN = 107 - len("/.s.PGSQL.65535")
FALLBACK_PARENT = Path("/tmp")


class PostgresUnavailable(Exception):
    """No PostgreSQL server can be had here; `reason` says why and how to get one."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def postgres_url_from_env() -> str | None:
    """The URL of an existing server from `SSL_BENCH_TEST_POSTGRES`, or None when unset or empty."""
    return os.environ.get(ENV_VAR, "").strip() or None


@contextmanager
def postgres_url(base: Path) -> Iterator[str]:
    """The server tests use: the one named by `SSL_BENCH_TEST_POSTGRES` if set, else a throwaway one under `base`."""
    url = postgres_url_from_env()
    if url is not None:
        yield url
        return
    with postgres_server(base) as url:
        yield url


@contextmanager
def fresh_database(server_url: str, prefix: str) -> Iterator[str]:
    """Create an empty database `<prefix>_<random>` on the server of `server_url`, yield its URL, drop it."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    engine = sqlalchemy.create_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
        yield sqlalchemy.make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()


def find_postgres_bin() -> Path:
    """The directory with initdb, pg_ctl and createdb: initdb's on PATH, else the newest /usr/lib/postgresql/*/bin."""
    on_path = shutil.which("initdb")
    candidates = [Path(on_path).parent] if on_path else []
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version, reverse=True)
    for directory in candidates:
        if all((directory / tool).is_file() for tool in TOOLS):
            return directory
    raise PostgresUnavailable(f"no PostgreSQL server binaries ({', '.join(TOOLS)}) on PATH or under "
                              f"/usr/lib/postgresql/<version>/bin; {INSTALL_HINT}")


@contextmanager
def postgres_server(base: Path) -> Iterator[str]:
    """Start a throwaway cluster in a fresh directory under `base` (or /tmp), yield its URL, stop and delete it.

    The URL is `postgresql+psycopg2://postgres@127.0.0.1:<port>/ssl_bench`. Raises `PostgresUnavailable` when
    binaries or the server account are missing or the server does not come up within 20 s.
    """
    bin_dir = find_postgres_bin()
    account = _server_account()
    root = Path(tempfile.mkdtemp(prefix="pg-", dir=_cluster_parent(base, account)))
    data, log, port = root / "data", root / "postgres.log", free_port()
    try:
        root.chmod(0o755)
        account.take(root)
        account.run([bin_dir / "initdb", "-D", data, "-U", SUPERUSER, "--auth=trust", "-E", "UTF8", "--no-locale",
                     "--no-sync"], cwd=root)
        _configure(data / "postgresql.conf", socket_dir=root, port=port)
        account.run([bin_dir / "pg_ctl", "-D", data, "-l", log, "-w", "-t", str(START_TIMEOUT_S), "start"],
                    cwd=root, log=log)
        account.run([bin_dir / "createdb", "-h", root, "-p", str(port), "-U", SUPERUSER, DATABASE], cwd=root)
        yield f"postgresql+psycopg2://{SUPERUSER}@127.0.0.1:{port}/{DATABASE}"
    finally:
        if (data / "postmaster.pid").exists():
            account.run([bin_dir / "pg_ctl", "-D", data, "-m", "immediate", "-w", "stop"], cwd=root, check=False)
        shutil.rmtree(root, ignore_errors=True)


@dataclass(frozen=True)
class _Account:
    """The account that owns the cluster and runs the server binaries: `prefix` switches to it (empty: ourselves)."""

    prefix: tuple[str, ...] = ()
    uid_gid: tuple[int, int] | None = None

    def take(self, path: Path) -> None:
        """Give `path` to this account."""
        if self.uid_gid is not None:
            os.chown(path, *self.uid_gid)

    def run(self, argv: list[str | Path], cwd: Path, check: bool = True, log: Path | None = None) -> int:
        """Run `argv` as this account and return its exit code; a timeout, or with `check` a failure, raises
        `PostgresUnavailable` (quoting the tail of the server `log` when given)."""
        command = [*self.prefix, *map(str, argv)]
        timeout = START_TIMEOUT_S + 10
        try:
            done = subprocess.run(command, check=False, cwd=cwd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            problem = f"did not finish within {timeout} s"
        else:
            if not check or done.returncode == 0:
                return done.returncode
            problem = f"failed (exit {done.returncode}): {(done.stderr or done.stdout).strip()}"
        detail = f"\nserver log {log} ends with:\n{log_tail(log)}" if log else ""
        raise PostgresUnavailable(f"`{' '.join(command)}` {problem}{detail}")


def _server_account() -> _Account:
    """Ourselves, or under root the `postgres` system user reached through runuser or setpriv."""
    if os.geteuid() != 0:
        return _Account()
    try:
        user = pwd.getpwnam(SUPERUSER)
    except KeyError:
        raise PostgresUnavailable(f"running as root, which PostgreSQL refuses, and there is no `{SUPERUSER}` system "
                                  f"user to run it as; {INSTALL_HINT} (the package creates the user)") from None
    uid_gid = (user.pw_uid, user.pw_gid)
    if shutil.which("runuser"):
        return _Account(("runuser", "-u", SUPERUSER, "--"), uid_gid)
    if shutil.which("setpriv"):
        return _Account(("setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups", "--"), uid_gid)
    raise PostgresUnavailable(f"running as root, and neither runuser nor setpriv (util-linux) is there to run "
                              f"PostgreSQL as `{SUPERUSER}`; install util-linux or run the tests as a normal user")


def _cluster_parent(base: Path, account: _Account) -> Path:
    """`base` when the server account can traverse it and a socket path under it fits, else /tmp."""
    base = base.resolve()
    base.mkdir(parents=True, exist_ok=True)
    fits = len(str(base)) + len("/pg-xxxxxxxx") <= MAX_SOCKET_DIR_LEN
    if fits and account.run(["test", "-x", base], cwd=Path("/"), check=False) == 0:
        return base
    return FALLBACK_PARENT


def _configure(conf: Path, socket_dir: Path, port: int) -> None:
    """Listen on `socket_dir` and 127.0.0.1:`port`; trade durability for speed (the cluster is thrown away)."""
    quoted_dir = str(socket_dir).replace("'", "''")
    with conf.open("a") as f:
        f.write(f"\nlisten_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{quoted_dir}'\n"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _version(bin_dir: Path) -> tuple[int, ...]:
    """The version in /usr/lib/postgresql/<version>/bin as numbers, for sorting; () when not numeric."""
    try:
        return tuple(int(part) for part in bin_dir.parent.name.split("."))
    except ValueError:
        return ()


def log_tail(log: Path, lines: int = 15) -> str:
    """The last lines of a log file, or a note that it is missing."""
    if not log.is_file():
        return "(no log written)"
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def serve(service: AbstractContextManager[str]) -> None:
    """Enter `service`, print its URL once it answers, and leave it (cleaning up) on SIGTERM or SIGINT."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _exit)
    with service as url:
        print(url, flush=True)
        while True:
            signal.pause()


def _exit(signum: int, frame: object) -> None:
    """A stop signal: leave through `SystemExit`, so `with` blocks clean up."""
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    """`postgres_server.py DIR`: serve a throwaway cluster under DIR until SIGTERM or SIGINT (see the module doc)."""
    parser = argparse.ArgumentParser(description="Serve a throwaway PostgreSQL cluster; print its URL once it answers.")
    parser.add_argument("dir", type=Path, help="where the cluster directory goes (/tmp when a socket path would not fit)")
    args = parser.parse_args(argv)
    try:
        serve(postgres_server(args.dir))
    except PostgresUnavailable as error:
        print(f"error: {error.reason}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
