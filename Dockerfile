# The ris-jobs image (API, worker and reaper run the same image; docker-compose.yml picks the command).
# The base image brings a CUDA build of torch (pyproject allows torch>=2.4,<2.14); pip keeps it.
ARG BASE_IMAGE=pytorch/pytorch:2.11.0-cuda12.8-cudnn9-runtime
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY . /app
RUN pip install -e '.[worker]' && mkdir -p /data/artifacts

EXPOSE 8000
CMD ["ris-jobs", "api", "--host", "0.0.0.0", "--port", "8000"]
