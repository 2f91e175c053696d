#!/usr/bin/env bash
# Pack built models into TorchServe archives: model_store/<name>.mar for each name given.
#
# Thin glue around torch-model-archiver. Every input was made by `python -m resnet_mar build`:
#   build/<name>.pt (.onnx, .pt2: one per FORMAT)  build/<name>.json (provenance, names it)
#   build/<name>/index_to_name.json  build/<name>/model-config.yaml
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
# The handler's package, staged without bytecode caches: torch-model-archiver copies the contents
# of a folder given in --extra-files, so the folder holding the package is what it gets.
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
cp -r "$here/handlers/resnet_serving" "$stage/"
find "$stage" -name __pycache__ -prune -exec rm -rf {} +
mkdir -p "$model_store"

for name in "$@"; do
  # The model file the last build wrote and checked, as its provenance names it: a build in
  # another FORMAT leaves the previous format's file behind, which must never be packed.
  provenance="$build_dir/$name.json"
  model_file=$([ -f "$provenance" ] && python3 -c \
    'import json, sys; print(json.load(open(sys.argv[1]))["model_file"])' "$provenance" || true)
  for needed in "$provenance" "$build_dir/$model_file" "$build_dir/$name/index_to_name.json" \
      "$build_dir/$name/model-config.yaml"; do
    if [ ! -f "$needed" ]; then
      echo "archive.sh: $name: missing $needed; build it first (make script)" >&2
      exit 1
    fi
  done
  if ! "$archiver" \
      --model-name "$name" \
      --version "$version" \
      --serialized-file "$build_dir/$model_file" \
      --handler "$here/handlers/resnet_handler.py" \
      --extra-files "$stage,$build_dir/$name/index_to_name.json" \
      --config-file "$build_dir/$name/model-config.yaml" \
      --export-path "$model_store" \
      --force; then
    echo "archive.sh: $name: torch-model-archiver failed" >&2
    exit 1
  fi
  echo "archived $name -> $model_store/$name.mar ($(du -h "$model_store/$name.mar" | cut -f1), version $version)"
done
