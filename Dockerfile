# megaclap on a CUDA PyTorch image (the base image supplies torch, CUDA and NCCL).
#
#   docker build -t megaclap .
#   docker run --gpus all --ipc=host --rm -it megaclap \
#       bash examples/pretrain_gpt/pretrain_gpt_distributed.sh          # CONFIG=..., TP=..., PP=...
#
# Optional NVIDIA apex, compiled from a source tree you put inside the build context (never
# `pip install apex`: that name on PyPI is an unrelated package):
#   git clone https://github.com/NVIDIA/apex third_party/apex
#   docker build --build-arg APEX_SRC=third_party/apex -t megaclap:apex .
# No GPU is visible while building, so name the GPU architectures to compile for
# (TORCH_CUDA_ARCH_LIST, e.g. "9.0" for H100 only).
ARG BASE_IMAGE=pytorch/pytorch:2.7.1-cuda12.8-cudnn9-devel
FROM ${BASE_IMAGE}

ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /workspace/megaclap

# --- optional apex, before the sources so that editing megaclap does not rebuild it -------
ARG APEX_SRC=""
ARG TORCH_CUDA_ARCH_LIST="8.0;8.6;9.0"
# COPY needs a source that exists: without APEX_SRC this copies setup.py to a plain file,
# which the test below tells apart from a copied source directory.
COPY ${APEX_SRC:-setup.py} /tmp/apex-src
RUN if [ -d /tmp/apex-src ]; then \
        cd /tmp/apex-src && \
        TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST}" APEX_CPP_EXT=1 APEX_CUDA_EXT=1 \
        pip install -v --no-cache-dir --no-build-isolation \
            --config-settings "--build-option=--cpp_ext" \
            --config-settings "--build-option=--cuda_ext" . && \
        python -c "import apex; print('apex from', apex.__file__)"; \
    fi && rm -rf /tmp/apex-src

# --- megaclap and its extras (the base image's torch satisfies torch>=2.5) -----------------
COPY setup.py README.md ./
COPY megaclap ./megaclap
RUN pip install --no-cache-dir -e ".[test,hf,plots]"
COPY . .

CMD ["bash"]
