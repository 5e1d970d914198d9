# ws_sandbox service image: the Starlette/uvicorn service that drives sandboxes through the
# Docker socket. Build it on the same offline base as the runtime image (no registry needed):
#
#   scripts/compose-check.sh         # makes the wheels below, then builds and tests it all
#
# or by hand:
#   .venv/bin/pip wheel . -w build/wheels
#   docker build --build-arg BASE_IMAGE=ws-sandbox-base:bookworm -t ws-sandbox-service .
#
# Python dependencies come from build/wheels (made on the host), so the build reaches only
# Debian's mirror, exactly like the runtime image.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}

RUN set -eux; \
    export DEBIAN_FRONTEND=noninteractive; \
    apt-get update; \
    apt-get install -y --no-install-recommends python3 python3-venv ca-certificates curl; \
    apt-get clean; \
    rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/log/apt /var/log/dpkg.log

COPY build/wheels/ /tmp/wheels/
RUN set -eux; \
    python3 -m venv /opt/venv; \
    /opt/venv/bin/pip install --no-index --find-links /tmp/wheels --no-cache-dir \
        $(ls /tmp/wheels | grep -v '^ws_sandbox-' | sed 's|^|/tmp/wheels/|'); \
    rm -rf /tmp/wheels

# The source tree (not a wheel) so that the web demo is found beside the package.
WORKDIR /app
COPY ws_sandbox/ /app/ws_sandbox/
COPY web-demo/ /app/web-demo/
COPY runtime/seccomp.json /app/runtime/seccomp.json
COPY pyproject.toml README.md /app/

ENV PYTHONPATH=/app \
    PYTHONDONTWRITEBYTECODE=1 \
    SANDBOX_HOST=0.0.0.0 \
    SANDBOX_PORT=8090 \
    AUDIT_LOG_PATH=/var/lib/ws-sandbox/audit.log \
    HISTORY_DB_PATH=/var/lib/ws-sandbox/history.sqlite3

# Root inside this container is what talking to the Docker socket needs anyway; the
# sandboxes it starts each run as a non-root uid of their own with every hardening default.
VOLUME /var/lib/ws-sandbox
EXPOSE 8090
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8090/api/v1/health || exit 1
ENTRYPOINT ["/opt/venv/bin/python", "-m", "ws_sandbox", "serve"]
