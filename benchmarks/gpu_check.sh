#!/usr/bin/env bash
# One run of benchmarks/gpu_check.py on a GPU machine (no network).
#
#   bash benchmarks/gpu_check.sh [OUT_DIR] [extra gpu_check.py args]
#
# - If `import tvm` fails, installs apache-tvm / apache-tvm-ffi (and their wheels' deps) from
#   the `.whl/` folder carried next to the working tree (`pip install --no-index`).
# - TVM compiles the generated CUDA when a kernel is loaded: it needs nvcc on PATH or the
#   `cuda-bindings` package (NVRTC); the script looks for both and says which it uses.
# - The repository itself is used from the working tree (PYTHONPATH), not installed.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
OUT="${1:-$ROOT/benchmarks/results/gpu_check}"
shift || true
PY="${PYTHON:-python3}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

echo "== gpu_check: $(date -u +%FT%TZ) host=$(hostname) out=$OUT"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader

if ! "$PY" -c "import tvm" 2>/dev/null; then
    if [ -d "$ROOT/.whl" ] && ls "$ROOT"/.whl/*.whl >/dev/null 2>&1; then
        echo "== tvm not importable: installing from $ROOT/.whl (no index)"
        "$PY" -m pip install --no-index --find-links "$ROOT/.whl" \
            apache-tvm apache-tvm-ffi 2>&1 | tail -3
        # optional extras carried along (NVRTC bindings, ml_dtypes); ignore when absent
        "$PY" -m pip install --no-index --find-links "$ROOT/.whl" cuda-bindings \
            >/dev/null 2>&1 || true
    fi
    if ! "$PY" -c "import tvm" 2>/dev/null; then
        echo "!! NO TVM: 'import tvm' fails and no usable wheels in $ROOT/.whl" >&2
        echo "!! carry apache_tvm-0.27.0.post1 and apache_tvm_ffi-0.1.14.post1 wheels in .whl/" >&2
        exit 3
    fi
fi
"$PY" -c "import torch; assert torch.cuda.is_available(), 'torch sees no GPU'; print('torch', torch.__version__, torch.cuda.get_device_name(0))" || exit 4

for d in /usr/local/cuda/bin /usr/local/cuda-*/bin; do
    [ -x "$d/nvcc" ] && case ":$PATH:" in *":$d:"*) ;; *) export PATH="$PATH:$d";; esac
done
if command -v nvcc >/dev/null; then
    export TVM_CUDA_COMPILE_MODE="${TVM_CUDA_COMPILE_MODE:-nvcc}"
    echo "== CUDA compiler: nvcc ($(nvcc --version | tail -1))"
elif "$PY" -c "import cuda.bindings.nvrtc" 2>/dev/null; then
    export TVM_CUDA_COMPILE_MODE="${TVM_CUDA_COMPILE_MODE:-nvrtc}"
    echo "== CUDA compiler: NVRTC (cuda-bindings)"
else
    echo "!! NO CUDA COMPILER: TVM needs nvcc on PATH or the cuda-bindings package (NVRTC)" >&2
    echo "!! to compile its kernels at load time; carry a cuda-bindings wheel in .whl/" >&2
    exit 5
fi
"$PY" -c "import tvm; print('tvm', tvm.__version__, 'cuda visible:', tvm.cuda(0).exist)"

mkdir -p "$OUT"
timeout "${GPU_CHECK_TIMEOUT:-470}" "$PY" "$ROOT/benchmarks/gpu_check.py" --out "$OUT" "$@" 2>&1 | tee "$OUT/gpu_check.log"
rc=${PIPESTATUS[0]}
echo "== gpu_check.py exit code $rc (0: all correct; 1: some case wrong; 124: timed out)"
exit "$rc"
