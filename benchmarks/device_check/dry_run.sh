#!/usr/bin/env bash
# The borrowed-H100 check's dry run on a machine without a GPU: the device's constraints, as far as they can be
# had here, up to the first GPU call.
#
#   benchmarks/device_check/dry_run.sh VENV PACK_DIR [OUT]
#
# VENV: a fresh virtual environment holding only what the borrowed machine holds (made with --make-venv below,
#   the one step that uses the registry); PACK_DIR: what pack.py wrote for this VENV's Python (--python, --out).
# What it does:
# 1. copies what a device call sends (git's tracked and untracked-not-ignored files) into a new folder, and
#    PACK_DIR into its .device_check/, as `carry` would, and prints the size that would travel;
# 2. runs run.py --dry-run there with no network (a user and network namespace of its own: unshare -rn), an
#    empty environment and a HOME with nothing in it, so nothing of this machine's caches or stores is used;
# 3. passes when run.py stops at the GPU check with its "no GPU" status (3), and fails on any other.
#
#   benchmarks/device_check/dry_run.sh --make-venv VENV [PYTHON]     (PYTHON: python3.12 where there is one)
set -u
if [ "${1:-}" = "--make-venv" ]; then
    # The borrowed machine's Python packages that the check touches, at its versions (numpy 2.5 needs Python
    # 3.12: 2.4.6 where the venv is 3.11). torch 2.11.0 from the registry is the CUDA 13 build, with its CUDA
    # and cuDNN wheels, as there. No polars, onnxslim or LoadGen: the machine has none (onnxslim travels).
    "${3:-python3}" -m venv "$2" || exit 1
    numpy=numpy==2.5.2
    "$2/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 12))' || numpy=numpy==2.4.6
    exec "$2/bin/pip" install -q torch==2.11.0 torchvision==0.26.0 onnx==1.23.1 onnxruntime==1.30.0 onnxscript==0.7.2 \
        "$numpy" pyarrow psutil tqdm matplotlib nvidia-ml-py colorama ml-dtypes sympy packaging
fi
VENV=$(realpath "${1:?usage: dry_run.sh VENV PACK_DIR [OUT]}")
PACK=$(realpath "${2:?usage: dry_run.sh VENV PACK_DIR [OUT]}")
REPO=$(cd "$(dirname "$0")/../.." && pwd)
STAGE=$(mktemp -d /tmp/device-dry-run.XXXXXX)
OUT=$(realpath -m "${3:-$STAGE/out}")
mkdir -p "$STAGE/repo" "$STAGE/home" "$OUT"
(cd "$REPO" && git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$STAGE/repo" 2>/dev/null)
cp -r "$PACK" "$STAGE/repo/.device_check"
echo "travelling: $(du -sb "$STAGE/repo" | cut -f1) bytes ($(du -sm "$STAGE/repo" | cut -f1) MiB, the limit is 64 MiB)"
echo "python: $("$VENV/bin/python" --version); no network: unshare -rn; out: $OUT"
started=$(date +%s)
unshare -rn env -i HOME="$STAGE/home" PATH="$VENV/bin:/usr/bin:/bin" \
    "$VENV/bin/python" "$STAGE/repo/benchmarks/device_check/run.py" --dry-run --out "$OUT" --work "$STAGE/work" \
    --budget-s "${DRY_RUN_BUDGET_S:-1800}"
status=$?
echo "dry run: run.py exit $status after $(($(date +%s) - started)) s (3, no GPU, is the expected end here)"
[ "$status" -eq 3 ]
