# The worker image: the worker replicas, the alert receiver and the load generator of
# docker-compose.yml all run it (`worker run`, `stack alert-receiver`, `stack loadgen`).
# It installs the runtime dependencies only (no `tools` extra: rendering, the local twin).
#
# Two stages: the first installs the package into a virtual environment; the final image
# gets that environment only, on the same slim base: no pip cache, no sources, no
# compiler (every dependency installs from a wheel), and a non-root user.
ARG PYTHON_IMAGE=python:3.11.10-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_PREFER_BINARY=1
RUN python -m venv /opt/venv
WORKDIR /src
# Dependencies first, so that a change in worker/ or stack/ does not reinstall them. The placeholder
# package and setuptools' build/ are removed afterwards: build/ keeps a copy of the empty
# __init__.py newer than the real one copied below, and would be installed instead of it.
COPY pyproject.toml README.md ./
RUN mkdir worker && touch worker/__init__.py \
    && /opt/venv/bin/pip install --no-compile . \
    && /opt/venv/bin/pip uninstall -y worker-monitoring \
    && rm -rf build worker *.egg-info
COPY worker ./worker
COPY stack ./stack
RUN /opt/venv/bin/pip install --no-compile --no-deps . \
    && /opt/venv/bin/python -m compileall -q /opt/venv/lib

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN groupadd --system --gid 10001 worker \
    && useradd --system --uid 10001 --gid worker --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin worker \
    && mkdir /data && chown worker:worker /data
COPY --from=build /opt/venv /opt/venv
USER 10001:10001
WORKDIR /data
EXPOSE 9191
CMD ["worker", "run"]
