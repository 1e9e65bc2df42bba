# defectgen on a CUDA runtime with PyTorch preinstalled. Build: docker build -t defectgen .
# Run:   docker run --gpus all -v "$PWD:/data" -w /data defectgen train-ddpm --normals good/ --out runs/ddpm
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /opt/defectgen
COPY pyproject.toml README.md ./
COPY defectgen ./defectgen
COPY examples ./examples
# A plain (non-editable) install: the presets and the prompt library are package data (defectgen/data/).
RUN pip install . && defectgen --version
ENTRYPOINT ["defectgen"]
CMD ["--help"]
