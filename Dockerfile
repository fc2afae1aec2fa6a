# bt-agent container image: `docker build -t bt-agent .`, then
#   docker run --rm -v $PWD/job.json:/job.json bt-agent --job /job.json
# With podman 4.3 (Debian 12), spell the default out: its buildah does not read an ARG's
# default when it picks the stages to build (`podman build --build-arg WHEELS=built .`).
#
# Where the bt-agent wheel comes from is the WHEELS build argument (deploy/image/README.md):
#   WHEELS=built (the default): the wheels-built stage compiles the Cython extensions
#     into a wheel from this directory; the runtime dependencies come from the package
#     index. Needs registry and index access, nothing else.
#   WHEELS=context: the build context holds a wheelhouse/ directory with the compiled
#     bt-agent wheel and every runtime dependency, made outside the build (`pip wheel`);
#     the image installs from it with --no-index, so the build needs no network.
#     `make image` (deploy/image/build.py) builds this way with podman, on a Debian base
#     it makes itself: --build-arg BASE=localhost/bt-agent-base:bookworm.
# Only the stages WHEELS names are built (BuildKit and buildah skip the others; Docker's
# legacy builder, DOCKER_BUILDKIT=0, builds them all and is not supported), so
# WHEELS=context never pulls python:3.11-slim and WHEELS=built needs no wheelhouse/.
#
# The runtime stage installs into a virtual environment (/opt/bt-agent), which works the
# same on python:3.11-slim and on Debian's python3, and runs as a non-root user.

ARG BASE=python:3.11-slim
ARG WHEELS=built

FROM python:3.11-slim AS wheels-built
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY _native/ _native/
COPY agent/ agent/
# Build isolation installs the pinned Cython from pyproject.toml's build-system table.
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
    && python -m zipfile -l /wheels/bt_agent-*.whl | grep '_crc32c_c.*\.so' >/dev/null

FROM scratch AS wheels-context
COPY wheelhouse/ /wheels/

# The stage the final one mounts: BuildKit takes no variable in RUN --mount's from=,
# so this alias names the chosen one. Its WORKDIR step is there for buildah 1.28
# (podman 4.3): without --layers it fails removing a stage that only renames another.
FROM wheels-${WHEELS} AS wheels
WORKDIR /wheels

FROM ${BASE}
ARG WHEELS
# The wheels are mounted for this step only, so no layer of the image keeps them.
# The bt-agent wheel is named by its path (never resolved by name from an index);
# its dependencies come from /wheels first, and only from /wheels with WHEELS=context.
RUN --mount=type=bind,from=wheels,source=/wheels,target=/wheels \
    if [ "$WHEELS" = context ]; then offline=--no-index; else offline=; fi \
    && python3 -m venv /opt/bt-agent \
    && /opt/bt-agent/bin/pip install --no-cache-dir --disable-pip-version-check $offline \
        --find-links /wheels /wheels/bt_agent-*.whl \
    && useradd --create-home --uid 10001 --shell /usr/sbin/nologin bt
ENV PATH=/opt/bt-agent/bin:$PATH
USER bt
WORKDIR /home/bt
ENTRYPOINT ["bt-agent"]
CMD ["--help"]
