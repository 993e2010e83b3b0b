# syntax=docker/dockerfile:1
# Two images from the one pyproject.toml:
#   operator  slim, no torch: `flywheel operator` and `flywheel exporter` (the Helm chart runs it)
#   trainer   CUDA base chosen by build argument: `flywheel-train curate|reward|sft|rl|eval` in the stage Jobs
#
#   docker build --target operator -t ghcr.io/characterflywheel/operator:0.1.0 .
#   docker build --target trainer --build-arg CUDA_BASE=nvidia/cuda:12.8.1-cudnn-devel-ubuntu24.04 \
#       -t ghcr.io/characterflywheel/trainer:0.1.0 .
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm
# A devel image: DeepSpeed compiles its CUDA ops just in time, which needs nvcc in the running container.
ARG CUDA_BASE=nvidia/cuda:12.8.1-cudnn-devel-ubuntu24.04
ARG TORCH_VERSION=2.13.0

# ------------------------------------------------------------------------------------------------ operator
FROM ${PYTHON_IMAGE} AS operator-build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
COPY trainer ./trainer
COPY sim ./sim
COPY local ./local
# The operator reconciles, gates and exports: it never trains. Its requirements are pyproject's dependencies
# minus the training stack and the object-store clients (stages read storage; the operator reads results from
# termination messages), so the pins stay in one place; the package itself goes in without dependencies.
RUN python -c "import tomllib; \
train = {'torch', 'transformers', 'tokenizers', 'trl', 'peft', 'datasets', 'accelerate', 'matplotlib', 's3fs', 'gcsfs'}; \
deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; \
name = lambda d: d.split('[')[0].split('=')[0].split('>')[0].split('<')[0].split('~')[0].strip(); \
print('\n'.join(d for d in deps if name(d) not in train))" > /tmp/operator-requirements.txt \
 && python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir -r /tmp/operator-requirements.txt \
 && /opt/venv/bin/pip install --no-cache-dir --no-deps /src

FROM ${PYTHON_IMAGE} AS operator
COPY --from=operator-build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# Numeric non-root user: Kubernetes can verify runAsNonRoot without reading /etc/passwd.
USER 65532:65532
EXPOSE 8080 8081 9101
ENTRYPOINT ["flywheel"]
CMD ["operator"]

# ------------------------------------------------------------------------------------------------- trainer
FROM ${CUDA_BASE} AS trainer-build
ARG TORCH_VERSION
ENV DEBIAN_FRONTEND=noninteractive
# Ubuntu's own python3 (3.12 on 24.04): the CUDA base fixes the distribution, so pinning its versions here would
# break on every base update.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
COPY trainer ./trainer
COPY sim ./sim
COPY local ./local
# torch first, pinned: pyproject leaves it unpinned so CPU machines and CUDA images each choose their build.
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir "torch==${TORCH_VERSION}" \
 && /opt/venv/bin/pip install --no-cache-dir "/src[gpu]"

FROM ${CUDA_BASE} AS trainer
ENV DEBIAN_FRONTEND=noninteractive
# A compiler and ninja for DeepSpeed's just-in-time CUDA ops.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 build-essential ninja-build \
 && rm -rf /var/lib/apt/lists/*
COPY --from=trainer-build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/tmp \
    HF_HUB_DISABLE_TELEMETRY=1 \
    TORCH_EXTENSIONS_DIR=/tmp/torch_extensions \
    PYTHONUNBUFFERED=1
USER 65532:65532
ENTRYPOINT ["flywheel-train"]
