"""What a cluster would get from the Helm chart: parsed `helm template` output per CI scenario."""

from __future__ import annotations

import hashlib

import pytest

from tests.deploy.conftest import (
    CHART,
    SCENARIOS,
    Manifest,
    Render,
    container,
    one,
    run_helm_template,
)

pytestmark = pytest.mark.deploy


def pod_labels(deployment: Manifest) -> dict[str, str]:
    labels: dict[str, str] = deployment["spec"]["template"]["metadata"]["labels"]
    return labels


def config(docs: list[Manifest]) -> dict[str, str]:
    maps = [
        d for d in docs if d["kind"] == "ConfigMap" and not d["metadata"]["name"].endswith("-fetch")
    ]
    assert len(maps) == 1
    data: dict[str, str] = maps[0]["data"]
    return data


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_ci_scenarios_exist() -> None:
    assert {"default", "gpu", "pvc", "url", "no-autoscaling"} <= set(SCENARIOS)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_selectors_of_service_pdb_and_deployment_pick_the_pods(
    render: Render, scenario: str
) -> None:
    docs = render(scenario)
    deployment = one(docs, "Deployment")
    labels = pod_labels(deployment)
    assert selects(deployment["spec"]["selector"]["matchLabels"], labels)
    assert selects(one(docs, "Service")["spec"]["selector"], labels)
    pdbs = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    for pdb in pdbs:
        assert (
            pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
        )
        assert selects(pdb["spec"]["selector"]["matchLabels"], labels)
        assert ("minAvailable" in pdb["spec"]) != ("maxUnavailable" in pdb["spec"])
    for constraint in deployment["spec"]["template"]["spec"].get("topologySpreadConstraints", []):
        assert selects(constraint["labelSelector"]["matchLabels"], labels)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_probes_hit_healthz_and_readyz_on_the_named_port(render: Render, scenario: str) -> None:
    main = container(one(render(scenario), "Deployment"))
    port_names = {p["name"] for p in main["ports"]}
    assert main["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert main["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert main["startupProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert main[probe]["httpGet"]["port"] in port_names


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_pods_are_non_root_read_only_with_a_writable_tmp(render: Render, scenario: str) -> None:
    pod = one(render(scenario), "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    for c in pod["containers"] + pod.get("initContainers", []):
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        tmp = [m for m in c["volumeMounts"] if m["mountPath"] == "/tmp"]
        assert tmp, f"container {c['name']} has no /tmp mount"
        volume = next(v for v in pod["volumes"] if v["name"] == tmp[0]["name"])
        assert "emptyDir" in volume


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_resources_requested_and_memory_limited(render: Render, scenario: str) -> None:
    pod = one(render(scenario), "Deployment")["spec"]["template"]["spec"]
    for c in pod["containers"] + pod.get("initContainers", []):
        assert {"cpu", "memory"} <= set(c["resources"]["requests"]), c["name"]
        assert "memory" in c["resources"]["limits"], c["name"]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_grace_period_covers_prestop_and_drain(render: Render, scenario: str) -> None:
    docs = render(scenario)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    drain = float(config(docs)["CAPTION_DRAIN_TIMEOUT_S"])
    sleep = container(one(docs, "Deployment"))["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep[0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] >= drain + float(sleep[1])


def test_grace_period_shorter_than_drain_is_refused(helm: str) -> None:
    proc = run_helm_template(helm, sets=["terminationGracePeriodSeconds=10"])
    assert proc.returncode != 0
    assert "terminationGracePeriodSeconds (10) must be >=" in proc.stderr


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_settings_reach_the_container_through_the_configmap(render: Render, scenario: str) -> None:
    docs = render(scenario)
    main = container(one(docs, "Deployment"))
    cm_names = [e["configMapRef"]["name"] for e in main["envFrom"]]
    data = config(docs)
    assert [d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap" and d["data"] is data]
    assert cm_names == [next(d for d in docs if d.get("data") is data)["metadata"]["name"]]
    assert all(key.startswith("CAPTION_") for key in data)
    assert data["CAPTION_HOST"] == "0.0.0.0"
    assert data["CAPTION_PORT"] == str(main["ports"][0]["containerPort"])
    assert all(isinstance(v, str) for v in data.values())


def test_config_checksum_changes_with_settings(render: Render) -> None:
    def checksum(*sets: str) -> str:
        deployment = one(render("default", *sets), "Deployment")
        value: str = deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
        return value

    base = checksum()
    assert len(base) == len(hashlib.sha256().hexdigest())
    assert checksum("settings.maxBatchSize=32") != base
    assert checksum("settings.maxBatchSize=16") == base


def test_hpa_scales_on_cpu_and_pending_requests(render: Render) -> None:
    docs = render("default")
    hpa = one(docs, "HorizontalPodAutoscaler")
    deployment = one(docs, "Deployment")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    metrics = {m["type"]: m for m in hpa["spec"]["metrics"]}
    cpu = metrics["Resource"]["resource"]
    assert cpu["name"] == "cpu" and cpu["target"]["type"] == "Utilization"
    pods = metrics["Pods"]["pods"]
    assert pods["metric"]["name"] == "caption_pending_requests"
    assert pods["target"]["type"] == "AverageValue"
    assert float(pods["target"]["averageValue"]) > 0
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    requests = container(deployment)["resources"]["requests"]
    assert "cpu" in requests, "CPU utilisation needs a CPU request"


def test_autoscaling_off_gives_fixed_replicas_and_no_hpa(render: Render) -> None:
    docs = render("no-autoscaling")
    assert not [d for d in docs if d["kind"] == "HorizontalPodAutoscaler"]
    assert one(docs, "Deployment")["spec"]["replicas"] == 1


def test_gpu_scenario_requests_a_gpu_and_cuda(render: Render) -> None:
    docs = render("gpu")
    deployment = one(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    main = container(deployment)
    assert main["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert main["image"].endswith("-gpu")
    assert pod["nodeSelector"]["cloud.google.com/gke-accelerator"]
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    assert config(docs)["CAPTION_PROVIDER"] == "cuda"


def test_cpu_scenario_has_no_gpu(render: Render) -> None:
    docs = render("default")
    main = container(one(docs, "Deployment"))
    assert "nvidia.com/gpu" not in main["resources"].get("limits", {})
    assert config(docs)["CAPTION_PROVIDER"] == "auto"


def test_service_monitor_scrapes_the_service_port_by_name(render: Render) -> None:
    docs = render("gpu")
    service = one(docs, "Service")
    monitor = one(docs, "ServiceMonitor")
    service_ports = {p["name"] for p in service["spec"]["ports"]}
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["http"]
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= service_ports
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    assert selects(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == ["ml"]


def test_service_targets_the_container_port_by_name(render: Render) -> None:
    docs = render("default")
    port = one(docs, "Service")["spec"]["ports"][0]
    assert port["name"] == "http" and port["targetPort"] == "http"
    assert "http" in {p["name"] for p in container(one(docs, "Deployment"))["ports"]}


def test_ingress_routes_to_the_service_port(render: Render) -> None:
    docs = render("gpu")
    ingress = one(docs, "Ingress")
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": one(docs, "Service")["metadata"]["name"], "port": {"name": "http"}}


def test_baked_model_source_points_at_the_image_bundle(render: Render) -> None:
    docs = render("default")
    assert config(docs)["CAPTION_BUNDLE_DIR"] == "/app/models/default"
    assert "initContainers" not in one(docs, "Deployment")["spec"]["template"]["spec"]


def test_pvc_model_source_mounts_the_claim_read_only(render: Render) -> None:
    docs = render("pvc")
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "model")
    assert volume["persistentVolumeClaim"] == {"claimName": "captioner-models", "readOnly": True}
    mount = next(
        m for m in container(one(docs, "Deployment"))["volumeMounts"] if m["name"] == "model"
    )
    assert mount["readOnly"] is True and mount["subPath"] == "default"
    assert config(docs)["CAPTION_BUNDLE_DIR"] == mount["mountPath"]


def test_url_model_source_downloads_with_the_service_image(render: Render) -> None:
    docs = render("url")
    deployment = one(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    main = container(deployment)
    assert init["image"] == main["image"], "no extra image: the service image's python"
    args = init["args"]
    dest = args[args.index("--dest") + 1]
    assert config(docs)["CAPTION_BUNDLE_DIR"] == dest
    assert args[args.index("--url") + 1].startswith("https://")
    assert len(args[args.index("--archive-sha256") + 1]) == 64
    model = next(v for v in pod["volumes"] if v["name"] == "model")
    assert "emptyDir" in model
    init_mount = next(m for m in init["volumeMounts"] if m["name"] == "model")
    main_mount = next(m for m in main["volumeMounts"] if m["name"] == "model")
    assert (
        dest.startswith(init_mount["mountPath"])
        and init_mount["mountPath"] == main_mount["mountPath"]
    )
    assert main_mount["readOnly"] is True
    script = next(
        d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-fetch")
    )
    assert init["command"][-1].endswith("/fetch_bundle.py")
    assert "verify_files" in script["data"]["fetch_bundle.py"]
    script_volume = next(v for v in pod["volumes"] if v["name"] == "fetch-script")
    assert script_volume["configMap"]["name"] == script["metadata"]["name"]
    assert pod["terminationGracePeriodSeconds"] == 40


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["model.source=pvc"], "needs model.pvc.claimName"),
        (["model.source=url"], "needs model.url.archive"),
        (["settings.provider=tpu"], "provider"),
        (["model.url.archive=ftp://example.com/b.tgz"], "archive"),
        (["autoscaling.minReplicas=5", "autoscaling.maxReplicas=2"], "minReplicas"),
        (["unknownValue=1"], "unknownValue"),
    ],
)
def test_bad_values_are_refused_at_render_time(helm: str, sets: list[str], message: str) -> None:
    proc = run_helm_template(helm, sets=sets)
    assert proc.returncode != 0
    assert message in proc.stderr


def test_every_value_is_documented() -> None:
    """helm-docs style: each value, or a block holding it, carries a `# --` comment above it."""
    undocumented = []
    stack: list[tuple[int, bool]] = []  # (indent, documented) of the enclosing keys
    pending_doc = False
    for line in (CHART / "values.yaml").read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            pending_doc = True
            continue
        if not stripped or stripped.startswith("#"):
            continue
        indent = len(line) - len(line.lstrip())
        if stripped.startswith("-") or ":" not in stripped:
            continue  # list items belong to the key above
        while stack and stack[-1][0] >= indent:
            stack.pop()
        documented = pending_doc or any(doc for _, doc in stack)
        pending_doc = False
        if stripped.endswith(":"):
            stack.append((indent, documented))
        elif not documented:
            undocumented.append(stripped)
    assert not undocumented, f"values without a `# --` comment: {undocumented}"


def test_default_grace_period_leaves_room_after_the_drain(render: Render) -> None:
    pod = one(render("default"), "Deployment")["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 5 + 20 + 10


def test_any_service_setting_can_be_passed_in_camel_case(render: Render) -> None:
    data = config(render("default", "settings.defaultBeamSize=1", "settings.useInt8=true"))
    assert data["CAPTION_DEFAULT_BEAM_SIZE"] == "1"
    assert data["CAPTION_USE_INT8"] == "true"


def test_gke_pod_monitoring_scrapes_the_pods_named_port(render: Render) -> None:
    docs = render("url")
    monitor = one(docs, "PodMonitoring")
    deployment = one(docs, "Deployment")
    assert monitor["apiVersion"] == "monitoring.googleapis.com/v1"
    assert selects(monitor["spec"]["selector"]["matchLabels"], pod_labels(deployment))
    ports = {p["name"] for p in container(deployment)["ports"]}
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["http"]
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= ports
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"


def test_helm_test_pod_polls_readyz_through_the_service(render: Render) -> None:
    docs = render("default")
    service = one(docs, "Service")
    pod = one(docs, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    script = pod["spec"]["containers"][0]["command"][-1]
    name, port = service["metadata"]["name"], service["spec"]["ports"][0]["port"]
    assert f"http://{name}:{port}/readyz" in script
    assert pod["spec"]["containers"][0]["image"] == container(one(docs, "Deployment"))["image"]
    assert pod["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
