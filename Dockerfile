# gradserve: one image for the server and the trainer (see docs/docker.md).
#
#   docker build -t gradserve .
#   docker run --rm -p 50051:50051 gradserve                      # the server
#   docker run --rm gradserve python client/train.py --help       # the trainer
#
# Build arguments:
#   PYTHON_IMAGE     base image; anything with python3 + venv on Debian works (the tests use a
#                    locally built stand-in, since no registry can be reached there)
#   TORCH_VERSION    the torch release, matching pyproject.toml
#   TORCH_INDEX_URL  where torch comes from: PyTorch's CPU-only index (no CUDA download)
#   PYPI_INDEX_URL   where everything else comes from
#   WHEELHOUSE_URL   if set, install from this find-links location only (a local or offline
#                    wheelhouse, e.g. `python3 -m http.server` over a folder of wheels, built with
#                    --network host); the two indexes are then not used
ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

RUN python3 -m venv /opt/venv

# torch first and alone: the biggest layer, and the one that changes least.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG PYPI_INDEX_URL=https://pypi.org/simple
ARG WHEELHOUSE_URL=
# DL3013 (unpinned pip install) is a false positive here: torch is pinned, to the build
# argument TORCH_VERSION, which hadolint cannot read through "torch==${TORCH_VERSION}".
# hadolint ignore=DL3013
RUN set -eu; \
    if [ -n "$WHEELHOUSE_URL" ]; then \
        set -- --no-index --find-links "$WHEELHOUSE_URL"; \
    else \
        set -- --index-url "$TORCH_INDEX_URL" --extra-index-url "$PYPI_INDEX_URL"; \
    fi; \
    pip install --no-cache-dir "$@" "torch==${TORCH_VERSION}"

# The other dependencies and the build backend, read from pyproject.toml alone so that source
# edits keep this layer.
WORKDIR /app
COPY pyproject.toml ./
RUN set -eu; \
    if [ -n "$WHEELHOUSE_URL" ]; then \
        set -- --no-index --find-links "$WHEELHOUSE_URL"; \
    else \
        set -- --index-url "$PYPI_INDEX_URL"; \
    fi; \
    python -c 'import tomllib; m = tomllib.load(open("pyproject.toml", "rb")); print("\n".join(m["project"]["dependencies"] + m["build-system"]["requires"]))' \
        > /tmp/requirements.txt; \
    pip install --no-cache-dir "$@" -r /tmp/requirements.txt; \
    rm /tmp/requirements.txt

# Sources last, installed as the package (pyproject.toml maps server/ and client/ onto
# gradserve.server and gradserve.client, src/gradserve onto gradserve, proto/ onto
# gradserve/proto); the dependencies are already there. Installed while root, then the build
# files go.
COPY server/ server/
COPY client/ client/
COPY src/ src/
COPY proto/ proto/
COPY README.md LICENSE ./
RUN pip install --no-cache-dir --no-deps --no-build-isolation . \
    && rm -rf build src/*.egg-info

# A named volume mounted on the checkpoint folder starts with this owner and mode. USER by
# number (hadolint DL3066): Kubernetes' runAsNonRoot can only verify a numeric user.
RUN groupadd --gid 10001 gradserve \
    && useradd --uid 10001 --gid 10001 --home-dir /app --no-create-home --shell /usr/sbin/nologin gradserve \
    && install -d -o gradserve -g gradserve -m 0750 /var/lib/gradserve/checkpoints
USER 10001:10001

ENV GRADSERVE_HOST=0.0.0.0 \
    GRADSERVE_PORT=50051 \
    GRADSERVE_METRICS_HOST=0.0.0.0 \
    GRADSERVE_METRICS_PORT=8001
EXPOSE 50051 8001

# Inside a container Python sees every core of the host; the wrapper sets torch's thread count
# from the container's CPU budget (cgroup cpu.max / cpuset), then execs the command.
ENTRYPOINT ["python", "-m", "gradserve.server.cpu_budget"]
CMD ["python", "server/serve.py"]
