# The ris-jobs images, two targets of one Dockerfile (docker-compose.yml builds each once):
#   api    — API and reaper: a slim Python image with the base dependencies, PostgreSQL and S3; no torch, no CUDA.
#   worker — GPU workers: the PyTorch CUDA image (its torch satisfies pyproject's torch>=2.4,<2.14; pip keeps it)
#            plus the `[worker]`, `[postgres]` and `[s3]` extras.
# Dependencies are installed from pyproject.toml before the source is copied, so a code change rebuilds only the
# last layers.
ARG API_BASE_IMAGE=python:3.12-slim
ARG WORKER_BASE_IMAGE=pytorch/pytorch:2.11.0-cuda12.8-cudnn9-runtime

# ------------------------------------------------------------------------------------------------ api
FROM ${API_BASE_IMAGE} AS api
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml /app/
COPY scripts/requirements_from_pyproject.py /app/scripts/
RUN python scripts/requirements_from_pyproject.py postgres s3 > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt
COPY . /app
RUN pip install --no-deps -e . && mkdir -p /data/artifacts
EXPOSE 8000
CMD ["ris-jobs", "api", "--host", "0.0.0.0", "--port", "8000"]

# ------------------------------------------------------------------------------------------------ worker
FROM ${WORKER_BASE_IMAGE} AS worker
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml /app/
COPY scripts/requirements_from_pyproject.py /app/scripts/
RUN python scripts/requirements_from_pyproject.py worker postgres s3 > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt
COPY . /app
RUN pip install --no-deps -e . && mkdir -p /data/artifacts
CMD ["ris-jobs", "worker"]
