# bt-agent container image: `docker build -t bt-agent .`, then
#   docker run --rm -v $PWD/job.json:/job.json bt-agent --job /job.json
#
# Stage 1 compiles the Cython extensions into a wheel; stage 2 installs only
# that wheel and its runtime dependencies, and runs as a non-root user.

FROM python:3.11-slim AS builder
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY _native/ _native/
COPY agent/ agent/
# Build isolation installs the pinned Cython from pyproject.toml's build-system table.
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
    && python -m zipfile -l /wheels/bt_agent-*.whl | grep -q '_crc32c_c.*\.so'

FROM python:3.11-slim
COPY --from=builder /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl \
    && rm -rf /wheels \
    && useradd --create-home --uid 10001 --shell /usr/sbin/nologin bt
USER bt
WORKDIR /home/bt
ENTRYPOINT ["bt-agent"]
CMD ["--help"]
