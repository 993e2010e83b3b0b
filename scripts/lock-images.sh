#!/usr/bin/env bash
# Regenerates the image lock files in requirements/ (exact versions and sha256 hashes, used by the Dockerfile with
# `pip install --require-hashes`). Run after changing pyproject.toml's dependencies or requirements/operator.in.
#   operator.txt           the operator image (Python 3.11, python:*-slim base): requirements/operator.in
#   trainer.txt            the trainer image (Ubuntu 24.04's Python 3.12): pyproject's dependencies + the serving
#                          extra, torch pinned
#   trainer-deepspeed.txt  DeepSpeed, installed after torch so its CUDA ops compile in the builder stage
# The versions the test suite runs with (this checkout's .venv, or $PYTHON's) constrain the resolution, so the
# images carry what the tests ran. Needs uv (`pip install uv`) and network access to PyPI; linux/amd64 images.
set -euo pipefail
cd "$(dirname "$0")/.."
uv=${UV:-uv}
py=${PYTHON:-.venv/bin/python}
torch=$(sed -n 's/^TORCH_PIN *:= *//p' Makefile)
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
"$py" -m pip freeze --exclude-editable | grep -v -e '^-e' -e ' @ ' -e '^torch==' > "$tmp/tested.txt"  # torch: the CPU build here, the CUDA one in the image
echo "torch==$torch" > "$tmp/torch.txt"
common=(--generate-hashes --no-header --python-platform x86_64-manylinux_2_28 -c "$tmp/tested.txt")
"$uv" pip compile requirements/operator.in --python-version 3.11 "${common[@]}" -o requirements/operator.txt
"$uv" pip compile pyproject.toml --extra serving -c "$tmp/torch.txt" --python-version 3.12 "${common[@]}" \
  -o requirements/trainer.txt
printf 'deepspeed==%s\n' "$(sed -n 's/^ *"deepspeed==\([^"]*\)".*/\1/p' pyproject.toml | head -n1)" > "$tmp/deepspeed.in"
"$uv" pip compile "$tmp/deepspeed.in" -c requirements/trainer.txt --python-version 3.12 "${common[@]}" \
  -o requirements/trainer-deepspeed.txt
# uv writes the temporary paths of the constraint files into the `# via` comments: keep the files stable
sed -i -e "s|$tmp/tested.txt|the tested venv|" -e "s|$tmp/torch.txt|Makefile TORCH_PIN|" \
  -e "s|$tmp/deepspeed.in|pyproject gpu extra|" requirements/*.txt
echo "==> requirements/: $(grep -c '==' requirements/operator.txt) operator pins, $(grep -c '==' requirements/trainer.txt) trainer pins"
