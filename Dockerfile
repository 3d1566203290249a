# The image remote steps run in (Kubernetes, Argo Workflows, AWS Batch). It holds the
# dependencies only: Metaflow ships the flow and the monollm package to every task as its
# code package, so the image is rebuilt when requirements change, not when code does.
#
#   docker build -t REGISTRY/monollm:TAG .
#   docker push REGISTRY/monollm:TAG
#
# The base brings CUDA, cuDNN and a CUDA build of PyTorch; pick a tag whose torch is the one
# pinned in requirements.txt (the pin itself is skipped below so that pip does not replace
# the base's CUDA build). See docs/cluster.md.
ARG BASE_IMAGE=pytorch/pytorch:2.13.0-cuda12.8-cudnn9-runtime
FROM ${BASE_IMAGE}

# METAFLOW_SKIP_INSTALL_DEPENDENCIES: everything a task needs is installed here, so Metaflow's
# task bootstrap must not pip-install (boto3, requests) at every task start.
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TOKENIZERS_PARALLELISM=false \
    HF_HOME=/var/cache/huggingface \
    METAFLOW_SKIP_INSTALL_DEPENDENCIES=1

# a C compiler for Triton, which torch.compile (train.compile = true) builds kernels with
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/monollm
COPY requirements.txt requirements-cluster.txt ./
RUN grep -v '^torch==' requirements.txt > requirements-image.txt \
    && pip install -r requirements-image.txt -r requirements-cluster.txt \
    && python -c "import torch, transformers, datasets, metaflow, boto3, kubernetes, zstandard; \
print('torch', torch.__version__, 'cuda', torch.version.cuda)" \
    && python -c "import torch; assert torch.version.cuda, 'the base image has no CUDA build of torch'" \
    && mkdir -p "$HF_HOME" && chmod 0777 "$HF_HOME"
