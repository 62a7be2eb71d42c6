# The clinfuse image: the worker (`clinfuse serve`), and the MLflow server, Prefect server and
# Dask processes of compose.yaml, so every service runs the exact versions the tests ran with.
#
# CPU build (default):   docker build -t clinfuse:0.1.0 .
# CUDA build:            docker build -t clinfuse:0.1.0-cuda \
#                          --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
# (any CUDA index the PyTorch project lists for torch 2.13.0; the wheels bundle the CUDA
# runtime, the host needs only the NVIDIA driver and the container toolkit, docs/deploy.md).
#
# Pin the base by digest in your registry mirror for byte-identical rebuilds:
#   --build-arg PYTHON_IMAGE=python:3.11.13-slim-bookworm@sha256:<digest>
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm
FROM ${PYTHON_IMAGE}

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# What only the MLflow server needs, not clinfuse: boto3 to proxy artifacts to MinIO (clients
# upload through the server, so only the mlflow service holds storage credentials) and
# Flask-WTF for the basic-auth app (its version is in the lock, tested in tests/deploy).
ARG BOTO3_VERSION=1.44.5

# Offline by default (HF_*): no code path may fetch weights or data at run time.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false

# A fixed, unprivileged uid/gid so volume ownership is predictable across rebuilds.
RUN groupadd --system --gid 10001 clinfuse \
    && useradd --system --uid 10001 --gid clinfuse --create-home --home-dir /home/clinfuse \
       --shell /usr/sbin/nologin clinfuse \
    && python -m venv "$VIRTUAL_ENV"

# torch first, from the PyTorch index: a bare `pip install torch` would pull the multi-GB CUDA
# build from PyPI; the CPU index keeps the default image small.
RUN pip install --index-url "$TORCH_INDEX_URL" "torch==${TORCH_VERSION}"

# Dependencies in their own layer (cached while only the code changes), constrained to the
# versions the test suite ran with.
WORKDIR /opt/clinfuse
COPY deploy/requirements.lock deploy/requirements.lock
RUN grep -v -E '^(#|torch==)' deploy/requirements.lock > /tmp/deps.txt \
    && pip install -c deploy/requirements.lock -r /tmp/deps.txt \
       "boto3==${BOTO3_VERSION}" Flask-WTF \
    && rm /tmp/deps.txt

# The project itself. A dependency added to pyproject.toml after the lock was written still
# installs (the lock only constrains). The recipes go where workflows.config looks for them
# outside a source checkout: sys.prefix/share/clinfuse/configs.
COPY pyproject.toml README.md ./
COPY modalities modalities
COPY fusion fusion
COPY scoring scoring
COPY registry registry
COPY workflows workflows
COPY synth synth
COPY deploy deploy
RUN pip install -c deploy/requirements.lock . && mkdir -p "$VIRTUAL_ENV/share/clinfuse"
COPY configs /opt/venv/share/clinfuse/configs

# Writable places for the unprivileged user: Prefect's home (UI static files, local state) and
# the data root the compose file mounts volumes under.
RUN mkdir -p /data /home/clinfuse/.prefect \
    && chown -R clinfuse:clinfuse /data /home/clinfuse
ENV PREFECT_HOME=/home/clinfuse/.prefect \
    PREFECT_UI_STATIC_DIRECTORY=/home/clinfuse/.prefect/ui \
    CLINFUSE_DATA_ROOT=/data

USER clinfuse:clinfuse
WORKDIR /home/clinfuse

# Fails the build (not the first night) when an import or the CLI entry point is broken.
RUN clinfuse --help > /dev/null

# compose.yaml gives each service its own probe (MLflow /health, Prefect /api/health, the
# runner's /health); this default checks that the Python environment itself is usable.
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import workflows.cli"]

ENTRYPOINT ["clinfuse"]
CMD ["--help"]
