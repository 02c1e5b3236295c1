"""docker/: the compose deployment and the worker image, checked by reading them (no docker engine needed).

The compose files are interpolated as Compose does (``${VAR:-default}``, ``${VAR:?message}``, ``$$``), with no
variable set unless a test sets one, so the defaults are what a user gets. Dockerfiles are read instruction by
instruction; every ``pip install`` must be pinned by ``==``, by the lock file, or by a git URL at a commit.
"""

import importlib.metadata
import re
import shlex
import subprocess
import sys
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

import optuna
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version
from sqlalchemy.engine import make_url

from bench.cli import build_parser, cmd_worker
from bench.config.run import TrainConfig
from bench.suite.infra import StorageConfig

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
WORKER_IMAGE = DOCKER / "Dockerfile"
SERVICES_IMAGE = DOCKER / "services.Dockerfile"
LOCK = DOCKER / "requirements-lock.txt"
VARIABLE = re.compile(r"\$\$|\$\{(\w+)(?:(:?[-?])([^}]*))?\}")
GIT_AT_FIXED_REF = re.compile(r"git\+https://\S+?\.git@([0-9a-f]{40}|v\d+(\.\d+)+)$")
#: pip options that take a value (the rest are flags)
PIP_VALUED = {"-c", "--constraint", "-r", "--requirement", "-e", "--editable", "--only-binary", "--no-binary"}


def interpolate(value, env: dict[str, str]):
    """A parsed compose file (or part of one) with its variables substituted as Compose substitutes them.

    A variable that is unset and has no default raises, where Compose would substitute an empty string.
    """
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match) -> str:
        if match[0] == "$$":
            return "$"
        name, op, arg = match.groups()
        current = env.get(name)
        missing = current is None or (current == "" and bool(op) and op.startswith(":"))
        if op and op.endswith("-"):
            return arg if missing else current
        if missing:
            raise ValueError(f"{name} is not set: {arg or 'no default'}")
        return current

    return VARIABLE.sub(substitute, value)


def compose(env: dict[str, str] | None = None, name: str = "compose.yaml") -> dict:
    return interpolate(yaml.safe_load((DOCKER / name).read_text()), env or {})


def published(service: dict) -> list[tuple[str, int, int]]:
    """(host address, host port, container port) of each port a service publishes (short syntax with an address)."""
    ports = []
    for spec in service.get("ports", []):
        parts = str(spec).split(":")
        assert len(parts) == 3, f"port {spec!r} does not name the host address to bind"
        ports.append((parts[0], int(parts[1]), int(parts[2])))
    return ports


def option(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def dashboard_commands(service: dict) -> tuple[list[str], list[str]]:
    """The dashboard's two commands, Optuna's tables first and then optuna-dashboard, with the script's $0 filled in."""
    shell, flag, script, storage = service["command"]
    assert (shell, flag) == ("sh", "-c")
    create, serve = script.split(" && exec ")
    return ([word.replace("$0", storage) for word in shlex.split(create)],
            [word.replace("$0", storage) for word in shlex.split(serve)])


def mounts(service: dict) -> dict[str, tuple[str, str]]:
    """Container path -> (source, mode) of a service's volumes (short syntax)."""
    out = {}
    for spec in service["volumes"]:
        source, target, *mode = spec.split(":")
        out[target] = (source, mode[0] if mode else "rw")
    return out


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments left out."""
    steps, current = [], ""
    for line in dockerfile.read_text().splitlines():
        if line.lstrip().startswith("#") or not (current or line.strip()):
            continue
        current += line.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        keyword, _, args = current.strip().partition(" ")
        steps.append((keyword.upper(), args.strip()))
        current = ""
    return steps


def pinned_tag(image: str) -> bool:
    """Whether an image reference names a version tag (not `latest`, not none) or a digest."""
    if "@sha256:" in image:
        return True
    _, colon, tag = image.rpartition(":")
    return bool(colon) and "/" not in tag and tag != "latest" and bool(re.search(r"\d", tag))


def lock_pins(path: Path) -> dict[str, Version]:
    pins = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = Version(version)
    return pins


def pip_installs(dockerfile: Path) -> list[tuple[list[str], dict[str, Path]]]:
    """Each ``pip install`` of the RUN steps: its words after ``install`` and the files COPY put in the image."""
    context = ROOT if dockerfile == WORKER_IMAGE else DOCKER
    copied, installs = {}, []
    for keyword, args in instructions(dockerfile):
        if keyword == "COPY":
            source, destination = args.split()
            copied[destination] = context / source
        if keyword != "RUN":
            continue
        for words in shell_commands(args):
            while words and re.fullmatch(r"\w+=\S*", words[0]):  # leading VAR=value assignments
                words.pop(0)
            if words[:2] == ["pip", "install"]:
                installs.append((words[2:], dict(copied)))
    return installs


def shell_commands(line: str) -> list[list[str]]:
    """The words of each command of a shell line, split at ``&&``, ``||``, ``;`` and ``|`` outside quotes."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token in ("&&", "||", ";", "|"):
            commands.append([])
        else:
            commands[-1].append(token)
    return commands


def test_the_four_services():
    assert set(compose()["services"]) == {"postgres", "mlflow", "dashboard", "worker"}


def test_only_mlflow_and_the_dashboard_are_published_on_loopback_by_default():
    services = compose()["services"]
    ports = {name: published(service) for name, service in services.items() if "ports" in service}
    mlflow_port = int(option(services["mlflow"]["command"], "--port"))
    dashboard_port = int(option(dashboard_commands(services["dashboard"])[1], "--port"))
    assert ports == {"mlflow": [("127.0.0.1", mlflow_port, mlflow_port)],
                     "dashboard": [("127.0.0.1", dashboard_port, dashboard_port)]}
    assert "network_mode" not in services["postgres"]


def test_the_bind_address_is_overridable_and_mlflow_accepts_its_host_header():
    from mlflow.server.security_utils import is_allowed_host_header

    for env, address in (({}, "127.0.0.1"), ({"SSL_BENCH_BIND": "10.1.2.3"}, "10.1.2.3")):
        services = compose(env)["services"]
        assert {published(services[name])[0][0] for name in ("mlflow", "dashboard")} == {address}
        allowed = option(services["mlflow"]["command"], "--allowed-hosts").split(",")
        for host in (f"{address}:5000", "localhost:5000", "mlflow:5000"):  # browser, ssh -L tunnel, workers
            assert is_allowed_host_header(allowed, host), host
        assert not is_allowed_host_header(allowed, "attacker.example:5000")


def test_the_cluster_override_publishes_postgres_only_on_an_address_given_explicitly():
    with pytest.raises(ValueError, match="SSL_BENCH_BIND is not set"):
        compose(name="compose.cluster.yaml")
    services = compose({"SSL_BENCH_BIND": "10.1.2.3"}, name="compose.cluster.yaml")["services"]
    assert {name: published(service) for name, service in services.items()} == {"postgres": [("10.1.2.3", 5432, 5432)]}


def test_named_volumes_keep_the_database_the_artifacts_and_the_cells():
    config = compose()
    named, services = set(config["volumes"]), config["services"]
    assert mounts(services["postgres"])["/var/lib/postgresql/data"][0] in named
    artifacts = option(services["mlflow"]["command"], "--artifacts-destination")
    assert mounts(services["mlflow"])[artifacts][0] in named

    workdir = PurePosixPath([args for keyword, args in instructions(WORKER_IMAGE) if keyword == "WORKDIR"][-1])
    worker = mounts(services["worker"])
    on_volumes = [PurePosixPath(target) for target, (source, _) in worker.items() if source in named]
    for default in (StorageConfig().runs_dir, TrainConfig().cache_dir):  # relative to the worker's directory
        assert any((workdir / default).is_relative_to(target) for target in on_volumes), default
    assert worker["/data"][1] == worker["/work/suites"][1] == "ro"


def test_the_worker_reserves_its_gpu():
    for env, gpu in (({}, "0"), ({"SSL_BENCH_GPU": "3"}, "3")):
        worker = compose(env)["services"]["worker"]
        assert worker["deploy"]["resources"]["reservations"]["devices"] == [
            {"driver": "nvidia", "device_ids": [gpu], "capabilities": ["gpu"]}]


def test_health_checks_gate_the_services_that_need_them():
    services = compose()["services"]
    postgres = services["postgres"]
    check = postgres["healthcheck"]["test"]
    assert check[0] == "CMD-SHELL" and check[1].startswith("pg_isready -h 127.0.0.1 ")
    for variable in re.findall(r"\$(\w+)", check[1]):  # expanded by the container's shell, from its environment
        assert variable in postgres["environment"]
    for name in ("mlflow", "dashboard", "worker"):
        assert services[name]["depends_on"]["postgres"] == {"condition": "service_healthy"}
    assert services["worker"]["depends_on"]["mlflow"] == {"condition": "service_healthy"}
    port = option(services["mlflow"]["command"], "--port")
    assert f"http://127.0.0.1:{port}/health" in " ".join(services["mlflow"]["healthcheck"]["test"])


def test_the_worker_command_is_ours_and_reaches_the_compose_services():
    services = compose()["services"]
    worker, postgres = services["worker"], services["postgres"]["environment"]
    assert worker["command"][0] == "ssl-bench"
    args = build_parser().parse_args(worker["command"][1:])
    assert args.func is cmd_worker
    assert yaml.safe_load((ROOT / "suites" / f"{args.study}.yaml").read_text())["name"] == args.study

    storage = make_url(args.storage)
    assert (storage.drivername, storage.host, storage.port) == ("postgresql+psycopg2", "postgres", 5432)
    assert storage.get_dialect().import_dbapi().__name__ == "psycopg2" and "psycopg2-binary" in lock_pins(LOCK)
    assert (storage.username, storage.database) == (postgres["POSTGRES_USER"], postgres["POSTGRES_DB"])
    assert storage.password is None  # libpq reads PGPASSWORD
    assert worker["environment"]["PGPASSWORD"] == postgres["POSTGRES_PASSWORD"]

    tracking = urlparse(worker["environment"]["MLFLOW_TRACKING_URI"])
    assert (tracking.scheme, tracking.hostname) == ("http", "mlflow")
    assert tracking.port == int(option(services["mlflow"]["command"], "--port"))

    create, serve = dashboard_commands(services["dashboard"])
    assert create[-1] == serve[1] == args.storage and serve[0] == "optuna-dashboard"
    assert services["dashboard"]["environment"]["PGPASSWORD"] == postgres["POSTGRES_PASSWORD"]


def test_the_dashboard_creates_the_tables_it_opens_without_creating(tmp_path):
    create, _ = dashboard_commands(compose()["services"]["dashboard"])
    assert create[:2] == ["python", "-c"]
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    subprocess.run([sys.executable, "-c", create[2], url], check=True, timeout=120)
    # optuna-dashboard's own way of opening an RDB storage (optuna_dashboard/_storage_url.py)
    storage = optuna.storages.RDBStorage(url, skip_compatibility_check=True, skip_table_creation=True)
    assert storage.get_current_version() == storage.get_head_version()


def test_the_mlflow_command_is_accepted_by_mlflow_and_uses_its_own_database():
    from mlflow.cli import server

    services = compose()["services"]
    command = services["mlflow"]["command"]
    assert command[:2] == ["mlflow", "server"]
    params = server.make_context("server", command[2:]).params
    store = make_url(params["backend_store_uri"])
    postgres = services["postgres"]["environment"]
    assert (store.host, store.username, store.password) == ("postgres", postgres["POSTGRES_USER"], None)
    assert store.database != postgres["POSTGRES_DB"]  # both keep an alembic_version table
    created = re.findall(r"CREATE DATABASE (\w+);", (DOCKER / "postgres-init.sql").read_text())
    init = mounts(services["postgres"])
    assert created == [store.database]
    assert any(source == "./postgres-init.sql" and target.startswith("/docker-entrypoint-initdb.d/")
               for target, (source, _) in init.items())
    assert params["serve_artifacts"] and params["host"] == "0.0.0.0"
    assert services["mlflow"]["environment"]["PGPASSWORD"] == postgres["POSTGRES_PASSWORD"]


def test_the_password_default_is_written_once_and_one_variable_sets_it_everywhere():
    assert (DOCKER / "compose.yaml").read_text().count("POSTGRES_PASSWORD:-") == 1
    services = compose({"POSTGRES_PASSWORD": "s3cret"})["services"]
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"] == "s3cret"
    assert {services[name]["environment"]["PGPASSWORD"] for name in ("mlflow", "dashboard", "worker")} == {"s3cret"}


@pytest.mark.parametrize("dockerfile", [WORKER_IMAGE, SERVICES_IMAGE], ids=lambda p: p.name)
def test_base_images_are_pinned(dockerfile):
    images = [args.split()[0] for keyword, args in instructions(dockerfile) if keyword == "FROM"]
    assert images and all(pinned_tag(image) for image in images), images


def test_compose_images_are_pinned_or_built_here():
    for name, service in compose()["services"].items():
        assert "build" in service or pinned_tag(service["image"]), name


def test_the_worker_builds_on_a_cuda_devel_image():
    image = next(args for keyword, args in instructions(WORKER_IMAGE) if keyword == "FROM")
    assert image.startswith("nvidia/cuda:") and "-devel-" in image  # nvcc, for detectron2's CUDA ops


def test_the_lock_pins_every_package_and_satisfies_ssl_bench():
    lines = [line for line in LOCK.read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+==[0-9][A-Za-z0-9.+]*", line) for line in lines)
    pins = lock_pins(LOCK)
    assert len(pins) == len(lines)
    for text in importlib.metadata.requires("ssl-bench"):
        requirement = Requirement(text)
        if requirement.marker and not any(requirement.marker.evaluate({"extra": e}) for e in ("dev", "postgres")):
            continue
        name = canonicalize_name(requirement.name)
        assert name in pins and requirement.specifier.contains(pins[name], prereleases=True), text
    assert {"torch", "torchvision", "mlflow", "optuna", "optuna-dashboard", "psycopg2-binary"} <= set(pins)


@pytest.mark.parametrize("dockerfile", [WORKER_IMAGE, SERVICES_IMAGE], ids=lambda p: p.name)
def test_every_pip_install_is_pinned(dockerfile):
    installs = pip_installs(dockerfile)
    assert installs
    for words, copied in installs:
        constraints, positional, i = {}, [], 0
        while i < len(words):
            word = words[i]
            flag, _, inline = word.partition("=")
            value = inline or (words[i + 1] if flag in PIP_VALUED and i + 1 < len(words) else "")
            i += 1 if inline or flag not in PIP_VALUED else 2
            if flag in ("-c", "--constraint", "-r", "--requirement"):
                assert value in copied, f"{value} is not copied into the image"
                pins = lock_pins(copied[value])  # asserts every line is a pin
                constraints |= pins if flag in ("-c", "--constraint") else {}
            elif flag in ("-e", "--editable"):
                assert value == ".", "only the project itself is installed from a path"
            elif not word.startswith("-"):
                positional.append(word)
        for text in positional:
            requirement = Requirement(text)
            if requirement.url:
                assert GIT_AT_FIXED_REF.search(requirement.url), text
            else:
                assert "==" in str(requirement.specifier) or canonicalize_name(requirement.name) in constraints, text


def test_detectron2_is_built_from_a_fixed_commit_for_the_gpus():
    steps = [args for keyword, args in instructions(WORKER_IMAGE) if keyword == "RUN" and "detectron2" in args]
    assert len(steps) == 1
    step = steps[0]
    assert re.search(r"git\+https://github\.com/facebookresearch/detectron2\.git@[0-9a-f]{40}\b", step)
    assert "--no-build-isolation" in step and "FORCE_CUDA=1" in step and "TORCH_CUDA_ARCH_LIST" in step
    arch = next(args for keyword, args in instructions(WORKER_IMAGE) if keyword == "ARG" and "TORCH_CUDA_ARCH_LIST" in args)
    assert re.fullmatch(r'TORCH_CUDA_ARCH_LIST="(\d+\.\d+;)*\d+\.\d+(\+PTX)?"', arch)


def test_the_image_runs_the_tests_after_installing_ssl_bench():
    steps = instructions(WORKER_IMAGE)
    copy = steps.index(("COPY", ". /work"))
    install = next(i for i, (keyword, args) in enumerate(steps) if keyword == "RUN" and "--editable ." in args)
    tests = [i for i, (keyword, args) in enumerate(steps) if keyword == "RUN" and "python -m pytest" in args]
    assert len(tests) == 1 and copy < install < tests[0]
    assert "||" not in steps[tests[0]][1]  # a failing test fails the build


def test_the_build_context_leaves_out_local_state_and_secrets():
    patterns = {line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")}
    assert {".git", ".venv", "results", "**/.env"} <= patterns
    assert not patterns & {"docker", "tests", "bench", "suites", "pyproject.toml"}
