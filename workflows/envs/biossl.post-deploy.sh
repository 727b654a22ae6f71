#!/usr/bin/env bash
# Run by snakemake inside the new conda environment of envs/biossl.yaml: install biossl from this
# repository (the folder two levels above this script), keeping the torch the environment file pinned,
# and the exact tested versions of everything else where the repository has a constraints file.
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
constraints=()
if [ -f "$repo/constraints.txt" ]; then constraints=(--constraint "$repo/constraints.txt"); fi
python -m pip install --no-cache-dir ${constraints[@]+"${constraints[@]}"} "torch==2.13.0" "$repo"
biossl --version >/dev/null 2>&1 || biossl --help >/dev/null
