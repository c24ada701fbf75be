# syntax=docker/dockerfile:1
#
# One image for all three commands:
#   docker run IMAGE                  -> zai-proxy serve     (needs ZAI_API_KEY)
#   docker run IMAGE dashboard        -> zai-proxy dashboard (SCRAPE_TARGETS, DB_PATH)
#   docker run -p 8080-8082:8080-8082 IMAGE demo --host 0.0.0.0   (dashboard, proxy, canary)
#
# Build:
#   docker build \
#     --build-arg VERSION=$(python -c 'import tomllib;print(tomllib.load(open("pyproject.toml","rb"))["project"]["version"])') \
#     --build-arg COMMIT=$(git rev-parse --short HEAD) \
#     --build-arg BUILD_TIME=$(date -u +%Y-%m-%dT%H:%M:%SZ) \
#     -t zai-proxy:dev .
#
# Stages: `build` turns the source and the page (static/, its chart library committed in
# static/vendor/) into a wheel and installs it into a virtualenv, `runtime` gets that
# virtualenv and nothing else (no compiler, no pip cache, no source tree).

ARG PYTHON_IMAGE=python:3.11-slim

# --------------------------------------------------------------------------- build
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
COPY static ./static
RUN python -m pip wheel --no-deps --wheel-dir /dist . \
 && python -m venv /opt/venv \
 && /opt/venv/bin/pip install /dist/*.whl \
 && /opt/venv/bin/pip uninstall --yes pip setuptools wheel \
 && /opt/venv/bin/python -c "import zoneinfo, tiktoken, zai_proxy; zoneinfo.ZoneInfo('America/New_York')" \
 && /opt/venv/bin/python -c "from zai_proxy.dashboard import STATIC_DIR; assert (STATIC_DIR / 'vendor' / 'uPlot.iife.min.js').is_file(), STATIC_DIR"

# --------------------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE} AS runtime
ARG VERSION=0.0.0-dev
ARG COMMIT=unknown
ARG BUILD_TIME=unknown

LABEL org.opencontainers.image.title="zai-proxy" \
      org.opencontainers.image.description="Credential-keeping reverse proxy for Z.AI's Anthropic-compatible API, with a live dashboard" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${COMMIT}" \
      org.opencontainers.image.created="${BUILD_TIME}" \
      org.opencontainers.image.licenses="MIT"

# BUILD_COMMIT and BUILD_TIME become zai_proxy_build_info{commit,build_time}.
ENV ZAI_PROXY_VERSION="${VERSION}" \
    BUILD_COMMIT="${COMMIT}" \
    BUILD_TIME="${BUILD_TIME}" \
    PATH="/opt/venv/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LISTEN_ADDR=":8080" \
    DB_PATH="/data/dashboard.db"

# A fixed numeric uid/gid, so Kubernetes' runAsNonRoot can check it without a passwd lookup.
RUN groupadd --system --gid 10001 zai \
 && useradd --system --uid 10001 --gid zai --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin zai \
 && mkdir -p /data \
 && chown zai:zai /data

COPY --from=build /opt/venv /opt/venv

USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
# 8080: proxy or dashboard; the demo also uses 8081 (proxy) and 8082 (canary).
EXPOSE 8080 8081 8082

# No curl in a slim image: the interpreter asks /healthz on the port LISTEN_ADDR names.
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import os,urllib.request;port=os.environ.get('LISTEN_ADDR',':8080').rsplit(':',1)[1];urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz',timeout=4)"]

ENTRYPOINT ["zai-proxy"]
CMD ["serve"]
