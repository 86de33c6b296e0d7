# One image for the node and the workers (CPU build of torch; a GPU site swaps the base
# image and TORCH_SPEC). The base is pinned; rebuild to take its security updates.
FROM python:3.11.11-slim-bookworm
ARG TORCH_SPEC="torch==2.13.0"
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY config config
COPY db db
COPY models models
COPY dicom_node dicom_node
COPY flows flows
RUN pip install --index-url https://download.pytorch.org/whl/cpu "${TORCH_SPEC}" \
    && pip install .
# The services run as triage, uid and gid 10001 (docker-compose.yml's secrets are read as
# this user; tests/test_compose.py checks it). The state folders exist here, owned by it,
# so that a new named volume mounted on one starts with that owner.
RUN groupadd --system --gid 10001 triage \
    && useradd --system --uid 10001 --gid 10001 --home /var/lib/fracture-triage triage \
    && mkdir -p /var/lib/fracture-triage/store /var/lib/fracture-triage/outputs \
        /var/lib/fracture-triage/bundles \
    && chown -R triage:triage /var/lib/fracture-triage
USER triage
WORKDIR /var/lib/fracture-triage
EXPOSE 11112 9112
CMD ["fracture-triage", "serve"]
