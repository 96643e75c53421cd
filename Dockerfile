# A slim, reproducible image running the all-in-one process (`serve`); mount a volume at /data.
#
#   docker build -t kelemetry-py:0.1.0 .
#   docker build --build-arg INSTALL_EXAMPLE_PLUGINS=true -t kelemetry-py:0.1.0-examples .
#
# Reproducible: the base image is pinned by digest and every Python package by constraints.txt (exact versions).
# The digest below is a published python:3.11-slim-bookworm image (the one public Dockerfiles pin); to move to a newer
# base, resolve it once (`docker buildx imagetools inspect python:3.11-slim-bookworm --format '{{json .Manifest.Digest}}'`)
# and commit the new digest. `--build-arg BASE=...` overrides it (e.g. a mirror), and should also name a digest.
ARG BASE=python:3.11-slim-bookworm@sha256:a36c24f9cbdf4fd0f52d67f0823eeac19c2028c637cecc392d97f980d4fec56b

FROM ${BASE} AS build
ARG INSTALL_EXAMPLE_PLUGINS=false
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY kelemetry_py ./kelemetry_py
COPY plugins ./plugins
# Wheels of kelemetry-py and its exact dependency set; with the build argument, the example plugins as well.
RUN pip wheel --wheel-dir /wheels -c constraints.txt . \
 && if [ "$INSTALL_EXAMPLE_PLUGINS" = "true" ]; then \
      for plugin in plugins/kelemetry-*/; do pip wheel --no-deps --wheel-dir /wheels "$plugin"; done; \
    fi \
 && cp constraints.txt /wheels/

FROM ${BASE}
RUN useradd --system --uid 10001 --user-group --no-create-home kelemetry \
 && mkdir /data && chown 10001:10001 /data
COPY --from=build /wheels /wheels
# Only the wheels built above, nothing from an index.
RUN pip install --no-cache-dir --no-index --find-links /wheels -c /wheels/constraints.txt /wheels/*.whl \
 && rm -rf /wheels
USER 10001:10001
WORKDIR /data
# A container is reached from outside: listen on every interface. serve refuses to start like this unless ingest
# and query authentication are configured (ingest.tokens, auth.mode) or security.allow_unauthenticated is set.
# Listen on every address of the container's own network namespace (the built-in default is loopback only, which
# nothing outside the container could reach); what is exposed is decided by `docker run -p` or the NetworkPolicy.
ENV KELEMETRY_HTTP__HOST=0.0.0.0 \
    KELEMETRY_STORE__PATH=/data/traces.db \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
EXPOSE 8080 8443
ENTRYPOINT ["kelemetry-py"]
CMD ["serve"]
