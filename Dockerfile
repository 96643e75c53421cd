# A slim image running the all-in-one process. Mount a volume at /data for the embedded store.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY kelemetry_py ./kelemetry_py
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --system --uid 10001 kelemetry && mkdir /data && chown kelemetry /data
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER kelemetry
WORKDIR /data
ENV KELEMETRY_STORE__PATH=/data/traces.db
# A container is reached from outside: listen on every interface. serve refuses to start like this unless ingest
# and query authentication are configured (ingest.tokens, auth.mode) or security.allow_unauthenticated is set.
ENV KELEMETRY_HTTP__HOST=0.0.0.0
EXPOSE 8080
ENTRYPOINT ["kelemetry-py"]
CMD ["serve"]
