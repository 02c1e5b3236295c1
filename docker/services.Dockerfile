# The MLflow tracking server and optuna-dashboard of docker/compose.yaml (one image, two commands), at the
# versions pinned in requirements-lock.txt, which are those ssl-bench's workers run with.
# Build context: docker/.
FROM python:3.12.12-slim-bookworm

ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
COPY requirements-lock.txt /opt/requirements-lock.txt
RUN pip install --only-binary=:all: --constraint /opt/requirements-lock.txt mlflow optuna optuna-dashboard psycopg2-binary \
    && pip check

RUN useradd --create-home --shell /usr/sbin/nologin bench \
    && mkdir /mlartifacts && chown bench: /mlartifacts
USER bench
