# Multi-stage: build a wheel, then install it alone into a slim runtime image.
# The image expects METERING_DATABASE_URL (the embedded PostgreSQL is for
# laptops and is not installed here) and METERING_AUTH_FILE (a mounted callers
# file; without it the service refuses to start against a real database).

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
COPY clients/python ./clients/python
# The server's wheel and the client's (metering-client, which it depends on), then their dependencies
# (the client named as its own file, so that no index can supply another metering-client).
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . ./clients/python \
 && pip wheel --no-cache-dir --wheel-dir /wheels /wheels/metering-*.whl /wheels/metering_client-*.whl

FROM python:3.11-slim
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin metering
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels /wheels/metering-*.whl \
 && rm -rf /wheels
USER 10001
ENV METERING_GRPC_PORT=50051 \
    METERING_HTTP_PORT=8080 \
    METERING_METRICS_PORT=9464 \
    PYTHONUNBUFFERED=1
EXPOSE 50051 8080 9464
# Standard gRPC health check against the service itself (NOT_SERVING while
# the database is unreachable).
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 CMD ["metering", "healthcheck"]
ENTRYPOINT ["metering"]
CMD ["serve"]
