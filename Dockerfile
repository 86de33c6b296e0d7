# One image for the node and the workers (CPU build of torch; a GPU site swaps the base
# image and TORCH_SPEC).
FROM python:3.11-slim
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
RUN useradd --system --home /var/lib/fracture-triage triage \
    && mkdir -p /var/lib/fracture-triage && chown triage /var/lib/fracture-triage
USER triage
WORKDIR /var/lib/fracture-triage
EXPOSE 11112
CMD ["fracture-triage", "serve"]
