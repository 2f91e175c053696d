# The serving image: TorchServe 0.12 with this toolkit's doors and every format's runtime.
# make image builds it (IMAGE, BASE, TORCH_INDEX); plain `docker build .` works too:
#   docker build -t resnet-mar .                     # torch from PyTorch's CPU wheel index
#   docker run -p 8080:8080 -p 8081:8081 -p 8082:8082 resnet-mar   (archives baked in, or:)
#   docker run -p 8080:8080 -v $PWD/build/kserve:/mnt/models:ro resnet-mar   (KServe's layout)
ARG BASE=debian:bookworm-slim
FROM ${BASE} AS system
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv openjdk-17-jre-headless \
      socat curl tini ca-certificates \
 && rm -rf /var/lib/apt/lists/*

# The Python packages, pinned as pyproject.toml pins them (resnet_mar/image_requirements.py),
# computed in a stage of their own: the install below is rebuilt only when a pin changes.
FROM system AS pins
COPY pyproject.toml resnet_mar/image_requirements.py /pins/
RUN python3 /pins/image_requirements.py /pins/pyproject.toml > /pins/requirements.txt

FROM system
# torch from TORCH_INDEX (PyPI's build carries the CUDA libraries; the CPU index's does not),
# then the rest. PIP_CERT, PIP_FIND_LINKS, PIP_NO_INDEX: builds behind a TLS-inspecting proxy,
# from a wheelhouse.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG PIP_CERT
ARG PIP_FIND_LINKS
ARG PIP_NO_INDEX
COPY --from=pins /pins/requirements.txt /opt/resnet-mar/requirements.txt
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check \
      --index-url "$TORCH_INDEX" "$(head -n 1 /opt/resnet-mar/requirements.txt)" \
 && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check \
      -r /opt/resnet-mar/requirements.txt

# The serving side of this toolkit (no editable install, no handler module: the archives carry
# their handler), the settings, and the archives make archive built, if any.
COPY pyproject.toml config.properties /opt/resnet-mar/
COPY resnet_mar/ /opt/resnet-mar/resnet_mar/
COPY model_store/ /opt/resnet-mar/model-store/

RUN useradd --create-home --uid 1000 --shell /usr/sbin/nologin serve
USER serve
WORKDIR /home/serve
ENV PATH=/opt/venv/bin:$PATH PYTHONPATH=/opt/resnet-mar PYTHONDONTWRITEBYTECODE=1
EXPOSE 8080 8081 8082
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
  CMD curl -fsS http://127.0.0.1:8080/ping || exit 1
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/tini", "--", "python", "-m", "resnet_mar.container"]
