# defectgen on a CUDA runtime with PyTorch preinstalled. Build: docker build -t defectgen .
# Run:   docker run --gpus all -v "$PWD:/data" -w /data defectgen train-ddpm --normals good/ --out runs/ddpm
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /opt/defectgen
COPY pyproject.toml README.md ./
COPY defectgen ./defectgen
COPY masks ./masks
COPY prompts ./prompts
COPY examples ./examples
# Editable install keeps masks/ and prompts/ (presets and prompt library) next to the package, where it looks.
RUN pip install -e . && defectgen --version
ENTRYPOINT ["defectgen"]
CMD ["--help"]
