# defectgen on a CUDA runtime: the tested torch/torchvision pair (CUDA build; also runs on the CPU).
# Build: docker build -t defectgen .
# Run:   docker run --gpus all -v "$PWD:/data" -w /data defectgen train-ddpm --normals good/ --out runs/ddpm
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /opt/defectgen
RUN pip install torch==2.14.1 torchvision==0.29.1
COPY pyproject.toml README.md MANIFEST.in ./
COPY defectgen ./defectgen
COPY masks ./masks
COPY prompts ./prompts
COPY examples ./examples
# A plain (non-editable) install: the presets (masks/) and the prompt library (prompts/) become package data through
# the links in defectgen/data/.
RUN pip install . && defectgen --version
ENTRYPOINT ["defectgen"]
CMD ["--help"]
