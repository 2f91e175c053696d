#!/usr/bin/env bash
# Pack built models into TorchServe archives: model_store/<name>.mar for each name given.
#
# Thin glue around torch-model-archiver. Every input was made by `python -m resnet_mar build`:
#   build/<name>.pt (or .onnx)  build/<name>/index_to_name.json  build/<name>/model-config.yaml
# Usage: archive.sh [-b BUILD_DIR] [-s MODEL_STORE] [-v VERSION] NAME...
set -euo pipefail

build_dir=build
model_store=model_store
version=1.0
while getopts "b:s:v:" opt; do
  case "$opt" in
    b) build_dir=$OPTARG ;;
    s) model_store=$OPTARG ;;
    v) version=$OPTARG ;;
    *) echo "usage: $0 [-b BUILD_DIR] [-s MODEL_STORE] [-v VERSION] NAME..." >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
[ $# -gt 0 ] || { echo "usage: $0 [-b BUILD_DIR] [-s MODEL_STORE] [-v VERSION] NAME..." >&2; exit 2; }

here=$(cd "$(dirname "$0")" && pwd)
archiver=${ARCHIVER:-$(command -v torch-model-archiver || echo "$here/.venv/bin/torch-model-archiver")}
handler_extras=$(ls "$here"/handlers/*.py | grep -v '/resnet_handler.py$' | paste -sd, -)
mkdir -p "$model_store"

for name in "$@"; do
  model_file=$(ls "$build_dir/$name".pt "$build_dir/$name".onnx 2>/dev/null | head -n 1 || true)
  for needed in "$model_file" "$build_dir/$name/index_to_name.json" "$build_dir/$name/model-config.yaml"; do
    if [ -z "$needed" ] || [ ! -f "$needed" ]; then
      echo "archive.sh: $name: missing ${needed:-$build_dir/$name.pt}; build it first (make script)" >&2
      exit 1
    fi
  done
  if ! "$archiver" \
      --model-name "$name" \
      --version "$version" \
      --serialized-file "$model_file" \
      --handler "$here/handlers/resnet_handler.py" \
      --extra-files "$handler_extras,$build_dir/$name/index_to_name.json" \
      --config-file "$build_dir/$name/model-config.yaml" \
      --export-path "$model_store" \
      --force; then
    echo "archive.sh: $name: torch-model-archiver failed" >&2
    exit 1
  fi
  echo "archived $name -> $model_store/$name.mar ($(du -h "$model_store/$name.mar" | cut -f1), version $version)"
done
