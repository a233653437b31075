# One image for the api, the worker and the migrate step; the command picks the role.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

# torch first and pinned: it is the largest layer and changes least often.
ARG TORCH_VERSION=2.13.0
RUN pip install "torch==${TORCH_VERSION}"

COPY pyproject.toml README.md ./
COPY api ./api
COPY core ./core
COPY trainers ./trainers
COPY worker ./worker
COPY migrations ./migrations
RUN pip install .

RUN useradd --create-home --uid 1000 rlhf && mkdir -p /data/artifacts /data/models && chown -R rlhf /data
USER rlhf
ENV ARTIFACTS_DIR=/data/artifacts MODELS_DIR=/data/models HF_HOME=/data/hf
EXPOSE 8000
CMD ["rlhf-service", "api", "--host", "0.0.0.0", "--port", "8000"]
