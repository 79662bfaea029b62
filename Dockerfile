# ssmtl's demo in a container: CPU-only torch 2.13.0, the project installed as the Makefile
# installs it, then `make demo` (phantom cache -> multi-task pre-training -> fine-tuning from it
# and from scratch -> evaluation -> compare -> report).
#
#   docker build -t ssmtl-demo .
#   docker run --rm -v "$PWD/demo:/home/ssmtl/app/demo" ssmtl-demo      # keeps the demo's outputs
#   docker run --rm -e PRETRAIN_STEPS=2000 ssmtl-demo                    # the demo's knobs are variables
#
# The image is built where Docker runs (ssmtl's CI has no Docker daemon: tests/test_dockerfile.py
# checks this file's instructions instead). The build needs the network: PyPI, the PyTorch CPU
# index and Debian's archive.
FROM python:3.11-slim

RUN apt-get update \
    && apt-get install -y --no-install-recommends make \
    && rm -rf /var/lib/apt/lists/*

# not root: the demo writes only under the user's own folder
RUN useradd --create-home --shell /bin/bash ssmtl
USER ssmtl
WORKDIR /home/ssmtl/app
ENV PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    OMP_NUM_THREADS=2

# torch first, from PyTorch's CPU index (PyPI's default wheel is the multi-GB CUDA build); the
# Makefile's own `pip install torch==2.13.0` then finds it installed. No torchvision, no timm.
RUN python -m venv .venv \
    && .venv/bin/pip install --quiet --index-url https://download.pytorch.org/whl/cpu torch==2.13.0

COPY --chown=ssmtl:ssmtl . .
# what `make demo` would do first: the project and its test extra, and the example plugin
RUN make venv

CMD ["make", "demo"]
