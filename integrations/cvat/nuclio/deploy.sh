#!/usr/bin/env bash
# Build the sqsam wheel and deploy the nuclio functions into CVAT's serverless setup.
#
#   integrations/cvat/nuclio/deploy.sh              # interactor + detector
#   integrations/cvat/nuclio/deploy.sh interactor   # or just one of them
#
# Needs: docker, nuctl (the version matching CVAT's nuclio dashboard, see
# components/serverless/docker-compose.serverless.yml in CVAT), python3 with pip, and CVAT
# started with the serverless overlay (docker compose -f docker-compose.yml
# -f components/serverless/docker-compose.serverless.yml up -d).
# Env: NUCTL (default nuctl), CVAT_NETWORK (default cvat_cvat), PYTHON (default python3).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../../.." && pwd)"
nuctl="${NUCTL:-nuctl}"
network="${CVAT_NETWORK:-cvat_cvat}"
python="${PYTHON:-python3}"
which="${1:-all}"

stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT

# Build context = this folder + wheels/sqsam-*.whl (the wheel bundles the ONNX model).
cp "$here"/main.py "$here"/function*.yaml "$stage"/
"$python" -m pip wheel --no-deps --wheel-dir "$stage/wheels" "$repo"

"$nuctl" create project cvat --platform local 2>/dev/null || true

deploy() {
  "$nuctl" deploy --project-name cvat \
    --path "$stage" \
    --file "$stage/$1" \
    --platform local \
    --platform-config "{\"attributes\": {\"network\": \"$network\"}}"
}

case "$which" in
  all) deploy function.yaml; deploy function-detector.yaml ;;
  interactor) deploy function.yaml ;;
  detector) deploy function-detector.yaml ;;
  *) echo "usage: $0 [all|interactor|detector]" >&2; exit 2 ;;
esac

"$nuctl" get function --platform local
