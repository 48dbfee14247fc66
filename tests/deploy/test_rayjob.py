"""The bulk-captioning RayJob (batchJob): valid against KubeRay's CRD, and what its pods would run.

No KubeRay operator runs here: the render is checked against the RayJob CRD's openAPIV3Schema
(unknown fields are errors, as with `kubectl apply --validate=strict`) and its semantics are
asserted on the parsed `helm template` output.
"""

from __future__ import annotations

import copy
import os
import re
import shlex
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]  # via schemathesis (dev extra)
import pytest
import yaml

from tests.deploy.conftest import (
    CHART,
    REPO_ROOT,
    Manifest,
    Render,
    container,
    one,
    run_helm_template,
)

pytestmark = pytest.mark.deploy

CRD_DIR = Path(os.environ.get("CAPTIONER_K8S_CRDS", REPO_ROOT.parent / "shared" / "k8s-crds"))
RAYJOB_CRD = CRD_DIR / "ray.io_rayjobs.yaml"
SCENARIO = "batchjob"
INT32 = (-(2**31), 2**31 - 1)


def _strict(schema: Any) -> Any:
    """Structural schema -> JSON schema that refuses unknown fields (the API server prunes them)."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def _int32(value: object) -> bool:
    return not isinstance(value, int) or INT32[0] <= value <= INT32[1]


def rayjob_validator(crd_path: Path = RAYJOB_CRD) -> jsonschema.protocols.Validator:
    """A validator for `ray.io/v1` RayJob objects built from the CRD file."""
    crd = yaml.safe_load(crd_path.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema = _strict(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
    checker = jsonschema.FormatChecker()
    checker.checks("int32")(_int32)
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
    return cls(schema, format_checker=checker)


def crd_errors(validator: jsonschema.protocols.Validator, doc: Manifest) -> list[str]:
    """Schema errors, plus the metadata rules KubeRay enforces (name <= 47, DNS-1035)."""
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)
    ]
    name = doc.get("metadata", {}).get("name", "")
    if len(name) > 47 or not re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name):
        errors.append(f"metadata/name: {name!r} is not a DNS-1035 label of at most 47 characters")
    if doc.get("apiVersion") != "ray.io/v1" or doc.get("kind") != "RayJob":
        errors.append(f"not a ray.io/v1 RayJob: {doc.get('apiVersion')} {doc.get('kind')}")
    return errors


@pytest.fixture(scope="session")
def validator() -> jsonschema.protocols.Validator:
    if not RAYJOB_CRD.is_file():
        pytest.skip(f"KubeRay CRD not found at {RAYJOB_CRD} (set CAPTIONER_K8S_CRDS)")
    return rayjob_validator()


def rayjob(docs: list[Manifest]) -> Manifest:
    return one(docs, "RayJob")


def cluster(docs: list[Manifest]) -> dict[str, Any]:
    spec: dict[str, Any] = rayjob(docs)["spec"]["rayClusterSpec"]
    return spec


def head_pod(docs: list[Manifest]) -> dict[str, Any]:
    pod: dict[str, Any] = cluster(docs)["headGroupSpec"]["template"]["spec"]
    return pod


def worker_group(docs: list[Manifest]) -> dict[str, Any]:
    (group,) = cluster(docs)["workerGroupSpecs"]
    return group  # type: ignore[no-any-return]


def ray_container(pod: dict[str, Any]) -> dict[str, Any]:
    first: dict[str, Any] = pod["containers"][0]  # KubeRay runs `ray start` in the first container
    return first


def env(c: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}


def pods(docs: list[Manifest]) -> Iterator[tuple[str, dict[str, Any]]]:
    job = rayjob(docs)["spec"]
    yield "head", head_pod(docs)
    yield "worker", worker_group(docs)["template"]["spec"]
    if "submitterPodTemplate" in job:
        yield "submitter", job["submitterPodTemplate"]["spec"]


def entrypoint(docs: list[Manifest]) -> list[str]:
    return shlex.split(rayjob(docs)["spec"]["entrypoint"])


def flag(words: list[str], name: str) -> str:
    assert words.count(name) == 1, f"{name} appears {words.count(name)} times in {words}"
    return words[words.index(name) + 1]


# ---- rendered or not ----------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", ["default", "gpu", "url", "pvc", "no-autoscaling"])
def test_nothing_batch_is_rendered_when_disabled(render: Render, scenario: str) -> None:
    docs = render(scenario)
    assert not [d for d in docs if d["kind"] == "RayJob"]
    assert [d["metadata"]["name"] for d in docs if d["kind"] == "ServiceAccount"] == [
        "rel-captioner"
    ]


def test_helm_lint_strict_passes_with_the_batchjob_scenario(helm: str) -> None:
    proc = subprocess.run(
        [helm, "lint", "--strict", str(CHART), "-f", str(CHART / "ci" / f"{SCENARIO}-values.yaml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_service_is_unchanged_beside_the_job(render: Render) -> None:
    with_job, without = render(SCENARIO), render("default")
    strip = {"RayJob"}
    rest = [d for d in with_job if d["kind"] not in strip]
    batch_sa = [
        d
        for d in rest
        if d["kind"] == "ServiceAccount" and d["metadata"]["name"].endswith("-batch")
    ]
    assert len(batch_sa) == 1
    assert [d for d in rest if d not in batch_sa] == without


# ---- the CRD ------------------------------------------------------------------------------------


def test_rayjob_is_valid_against_the_kuberay_crd(
    render: Render, validator: jsonschema.protocols.Validator
) -> None:
    assert crd_errors(validator, rayjob(render(SCENARIO))) == []


@pytest.mark.parametrize(
    "sets",
    [
        (),
        ("batchJob.enabled=true", "batchJob.input=/in/", "batchJob.output=/out/c.jsonl"),
        ("batchJob.submissionMode=HTTPMode",),
        ("fullnameOverride=" + "a-very-long-release-name-that-goes-on-and-on-to-63-chars-xx",),
        ("batchJob.input={/data/a/,/data/it's here/}", "batchJob.extraArgs={--force,x y}"),
    ],
)
def test_variants_are_valid_against_the_crd(
    render: Render, validator: jsonschema.protocols.Validator, sets: tuple[str, ...]
) -> None:
    scenario = "default" if sets and sets[0] == "batchJob.enabled=true" else SCENARIO
    assert crd_errors(validator, rayjob(render(scenario, *sets))) == []


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (("spec", "rayClusterSpec", "workerGroupSpecs", 0, "minReplica"), 1, "minReplica"),
        (("spec", "ttlSecondsAfterFinished"), "600", "'600' is not of type 'integer'"),
        (("spec", "submitterConfig", "backoffLimit"), 2**40, "int32"),
        (("spec", "rayClusterSpec", "autoscalerOptions", "upscalingMode"), "Fast", "Fast"),
    ],
)
def test_the_crd_check_catches_wrong_names_types_and_values(
    render: Render,
    validator: jsonschema.protocols.Validator,
    path: tuple[str | int, ...],
    value: object,
    expected: str,
) -> None:
    """The validator is not vacuous: a misspelt field, a string for an int, int32 overflow."""
    doc = copy.deepcopy(rayjob(render(SCENARIO)))
    node: Any = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    errors = crd_errors(validator, doc)
    assert any(expected in e for e in errors), errors


# ---- what the pods run --------------------------------------------------------------------------


def test_every_ray_pod_runs_the_ray_image(render: Render) -> None:
    docs = render(SCENARIO)
    values = yaml.safe_load((CHART / "ci" / f"{SCENARIO}-values.yaml").read_text())["batchJob"]
    image = f"{values['image']['repository']}:{values['image']['tag']}"
    for role, pod in pods(docs):
        assert [c["image"] for c in pod["containers"]] == [image], role
    default = render("default", "batchJob.enabled=true", "batchJob.input=i", "batchJob.output=o")
    assert ray_container(head_pod(default))["image"] == "captioner:0.1.0-ray"
    assert (
        ray_container(head_pod(default))["image"] != container(one(default, "Deployment"))["image"]
    )


def test_ray_version_matches_the_pinned_ray_extra(render: Render) -> None:
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    (pin,) = [
        r for r in pyproject["project"]["optional-dependencies"]["ray"] if r.startswith("ray[")
    ]
    match = re.fullmatch(r"ray\[[a-z,]+\]==(\d+\.\d+)\.\*", pin)
    assert match, pin
    assert cluster(render(SCENARIO))["rayVersion"].startswith(match.group(1) + ".")


def test_entrypoint_runs_captioner_caption_with_the_values(render: Render) -> None:
    words = entrypoint(render(SCENARIO))
    assert words[:3] == ["captioner", "caption", "/data/images/flickr/"]
    assert flag(words, "--out") == "/data/captions/flickr.parquet"
    assert flag(words, "--engine") == "ray"
    assert flag(words, "--address") == "auto"
    assert flag(words, "--actors") == "2:8"
    assert flag(words, "--cpus-per-actor") == "4"
    assert flag(words, "--batch-size") == "64"
    assert flag(words, "--beam-size") == "3"
    assert flag(words, "--num-captions") == "2"


def test_inputs_and_extra_args_are_shell_quoted(render: Render) -> None:
    docs = render(
        SCENARIO,
        "batchJob.input={/data/a/,/data/it's here/,https://example.org/list.txt}",
        "batchJob.extraArgs={--force,$(rm -rf /)}",
    )
    words = entrypoint(docs)
    assert words[2:5] == ["/data/a/", "/data/it's here/", "https://example.org/list.txt"]
    assert words[5] == "--out"
    assert words[-2:] == ["--force", "$(rm -rf /)"]
    assert "'$(rm -rf /)'" in rayjob(docs)["spec"]["entrypoint"]


def test_onnx_threads_equal_the_actor_cpus_everywhere(render: Render) -> None:
    for scenario, sets, cpus in [
        (SCENARIO, (), "4"),
        (SCENARIO, ("batchJob.cpusPerActor=1",), "1"),
        ("default", ("batchJob.enabled=true", "batchJob.input=i", "batchJob.output=o"), "2"),
    ]:
        docs = render(scenario, *sets)
        assert flag(entrypoint(docs), "--cpus-per-actor") == cpus
        group = worker_group(docs)
        worker = ray_container(group["template"]["spec"])
        assert env(worker)["CAPTION_INTRA_OP_THREADS"] == cpus
        assert env(ray_container(head_pod(docs)))["CAPTION_INTRA_OP_THREADS"] == cpus
        assert worker["resources"]["requests"]["cpu"] == cpus
        assert worker["resources"]["limits"]["cpu"] == cpus
        assert group["rayStartParams"]["num-cpus"] == cpus


def test_ray_containers_have_usage_stats_off_and_the_baked_bundle(render: Render) -> None:
    docs = render(SCENARIO)
    for role, pod in pods(docs):
        assert env(ray_container(pod))["RAY_USAGE_STATS_ENABLED"] == "0", role
    assert env(cluster(docs)["autoscalerOptions"])["RAY_USAGE_STATS_ENABLED"] == "0"
    for pod in (head_pod(docs), worker_group(docs)["template"]["spec"]):
        assert env(ray_container(pod))["CAPTION_BUNDLE_DIR"] == "/app/models/default"


def test_no_runtime_env_installs_anything(render: Render) -> None:
    """Everything is in the image: no runtime_env (pip, conda, uv, working_dir) at job start."""
    job = rayjob(render(SCENARIO))
    assert "runtimeEnvYAML" not in job["spec"]
    text = yaml.safe_dump(job)
    for word in ("runtime_env", "runtimeEnv", "pip install", "pip:", "conda", "working_dir"):
        assert word not in text, word


def test_worker_group_scales_between_the_actor_bounds(render: Render) -> None:
    docs = render(SCENARIO)
    group = worker_group(docs)
    assert (group["minReplicas"], group["replicas"], group["maxReplicas"]) == (2, 2, 8)
    spec = cluster(docs)
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["autoscalerOptions"]["upscalingMode"] == "Default"
    assert spec["autoscalerOptions"]["idleTimeoutSeconds"] == 60
    worker = ray_container(group["template"]["spec"])
    assert worker["resources"]["requests"]["memory"] == worker["resources"]["limits"]["memory"]
    assert worker["resources"]["limits"]["memory"] == "6Gi"


def test_head_resources_and_start_params(render: Render) -> None:
    docs = render(SCENARIO)
    head = cluster(docs)["headGroupSpec"]
    assert head["rayStartParams"] == {"num-cpus": "1"}
    resources = ray_container(head["template"]["spec"])["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"]) and "memory" in resources["limits"]
    ports = {
        p["name"]: p["containerPort"] for p in ray_container(head["template"]["spec"])["ports"]
    }
    assert ports == {"gcs-server": 6379, "dashboard": 8265, "client": 10001}
    zero = render(SCENARIO, "batchJob.head.rayStartParams.num-cpus=0")
    assert cluster(zero)["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"


def test_job_lifecycle_fields_come_from_values(render: Render) -> None:
    spec = rayjob(render(SCENARIO))["spec"]
    assert spec["submissionMode"] == "K8sJobMode"
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["ttlSecondsAfterFinished"] == 600
    assert spec["activeDeadlineSeconds"] == 21600
    assert spec["submitterConfig"] == {"backoffLimit": 2}
    submitter = spec["submitterPodTemplate"]["spec"]
    assert submitter["restartPolicy"] == "Never"
    assert "command" not in submitter["containers"][0], "KubeRay fills in `ray job submit`"
    http = rayjob(render(SCENARIO, "batchJob.submissionMode=HTTPMode"))["spec"]
    assert http["submissionMode"] == "HTTPMode" and "submitterPodTemplate" not in http


def test_ray_pods_use_the_workload_identity_service_account(render: Render) -> None:
    docs = render(SCENARIO)
    accounts = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ServiceAccount"}
    batch = accounts["rel-captioner-batch"]
    assert batch["metadata"]["annotations"] == {
        "iam.gke.io/gcp-service-account": "captioner-batch@my-captioner.iam.gserviceaccount.com"
    }
    assert head_pod(docs)["serviceAccountName"] == "rel-captioner-batch"
    assert worker_group(docs)["template"]["spec"]["serviceAccountName"] == "rel-captioner-batch"
    # The head's autoscaler sidecar calls the Kubernetes API; the workers get no token.
    assert head_pod(docs)["automountServiceAccountToken"] is True
    assert worker_group(docs)["template"]["spec"]["automountServiceAccountToken"] is False
    # The service keeps its own account.
    deployment = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert deployment["serviceAccountName"] == "rel-captioner"
    assert "annotations" not in accounts["rel-captioner"]["metadata"]
    existing = render(
        SCENARIO, "batchJob.serviceAccount.create=false", "batchJob.serviceAccount.name=gcs-reader"
    )
    assert "rel-captioner-batch" not in {
        d["metadata"]["name"] for d in existing if d["kind"] == "ServiceAccount"
    }
    assert head_pod(existing)["serviceAccountName"] == "gcs-reader"


def test_ray_pods_are_not_picked_by_the_service_or_the_pdb(render: Render) -> None:
    docs = render(SCENARIO)
    selectors = [one(docs, "Service")["spec"]["selector"]] + [
        d["spec"]["selector"]["matchLabels"] for d in docs if d["kind"] == "PodDisruptionBudget"
    ]
    for role, _ in pods(docs):
        template = (
            cluster(docs)["headGroupSpec"]["template"]
            if role == "head"
            else worker_group(docs)["template"]
            if role == "worker"
            else rayjob(docs)["spec"]["submitterPodTemplate"]
        )
        labels = template["metadata"]["labels"]
        for selector in selectors:
            assert not all(labels.get(k) == v for k, v in selector.items()), role


def test_ray_pods_are_non_root_read_only_with_a_writable_tmp(render: Render) -> None:
    docs = render(SCENARIO)
    for role, pod in pods(docs):
        assert pod["securityContext"]["runAsNonRoot"] is True, role
        assert pod["securityContext"]["runAsUser"] == 10001, role
        for c in pod["containers"]:
            assert c["securityContext"]["readOnlyRootFilesystem"] is True, role
            assert c["securityContext"]["allowPrivilegeEscalation"] is False, role
            (tmp,) = [m for m in c["volumeMounts"] if m["mountPath"] == "/tmp"]
            volume = next(v for v in pod["volumes"] if v["name"] == tmp["name"])
            assert "emptyDir" in volume, role
    autoscaler = cluster(docs)["autoscalerOptions"]
    assert autoscaler["securityContext"]["readOnlyRootFilesystem"] is True
    assert {"name": "tmp", "mountPath": "/tmp"} in autoscaler["volumeMounts"]


def test_input_and_output_volumes_are_on_head_and_workers_only(render: Render) -> None:
    """Every Ray pod sees the same /data (Cloud Storage FUSE); the submitter mounts nothing."""
    docs = render(SCENARIO)
    for role, pod in pods(docs):
        names = {v["name"] for v in pod["volumes"]}
        mounts = {m["mountPath"] for c in pod["containers"] for m in c["volumeMounts"]}
        if role == "submitter":
            assert names == {"tmp"} and mounts == {"/tmp"}
            continue
        (data,) = [v for v in pod["volumes"] if v["name"] == "data"]
        assert data["csi"]["driver"] == "gcsfuse.csi.storage.gke.io", role
        assert "/data" in mounts, role
    words = entrypoint(docs)
    assert words[2].startswith("/data/") and flag(words, "--out").startswith("/data/")
    for template in (
        cluster(docs)["headGroupSpec"]["template"],
        worker_group(docs)["template"],
    ):
        assert template["metadata"]["annotations"] == {"gke-gcsfuse/volumes": "true"}


# ---- refused values -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["batchJob.actors.min=5", "batchJob.actors.max=2"], "batchJob.actors.min (5) must be <="),
        (["batchJob.cpusPerActor=0"], "cpusPerActor"),
        (["batchJob.cpusPerActor=1.5"], "cpusPerActor"),
        (["batchJob.batchSize=0"], "batchSize"),
        (["batchJob.input="], "input"),
        (["batchJob.output="], "output"),
        (["batchJob.output=s3://b/captions/"], "must be a path on batchJob.volumes or a gs://"),
        (["batchJob.input=ftp://b/images/"], "only paths on batchJob.volumes, gs:// objects"),
        (["batchJob.numCaptions=5"], "batchJob.numCaptions (5) must be <= batchJob.beamSize (3)"),
        (["batchJob.worker.rayStartParams.num-cpus=8"], "cannot set num-cpus"),
        (["batchJob.submissionMode=Batch"], "submissionMode"),
        (["batchJob.ttlSecondsAfterFinished=-1"], "ttlSecondsAfterFinished"),
        (["batchJob.autoscaler.upscalingMode=Fast"], "upscalingMode"),
        (["batchJob.workers=3"], "workers"),
    ],
)
def test_bad_batch_values_are_refused_at_render_time(
    helm: str, sets: list[str], message: str
) -> None:
    proc = run_helm_template(helm, [CHART / "ci" / f"{SCENARIO}-values.yaml"], sets)
    assert proc.returncode != 0, f"{sets} rendered"
    assert message in proc.stderr, proc.stderr


def test_enabled_without_input_is_refused(helm: str) -> None:
    proc = run_helm_template(helm, sets=["batchJob.enabled=true", "batchJob.output=/o/c.jsonl"])
    assert proc.returncode != 0
    assert "input" in proc.stderr


# ---- the image ----------------------------------------------------------------------------------


def test_dockerfile_ray_target_is_non_root_and_has_ray_and_captioner() -> None:
    text = (REPO_ROOT / "Dockerfile").read_text()
    stages = re.split(r"^FROM ", text, flags=re.M)
    (ray,) = [s for s in stages if re.match(r"\S+ AS ray\s*$", s.splitlines()[0])]
    (build,) = [s for s in stages if re.match(r"\S+ AS ray-build\s*$", s.splitlines()[0])]
    assert ray.startswith("${BASE_IMAGE}") and build.startswith("${BASE_IMAGE}")
    assert "USER 10001:10001" in ray
    assert "RAY_USAGE_STATS_ENABLED=0" in ray
    assert "CAPTION_BUNDLE_DIR=/app/models/default" in ray
    assert "COPY ${BUNDLE_DIR} /app/models/default" in ray
    assert ".[cpu,ray]" in build and "tensorflow" in build
    assert "COPY batch ./batch" in build
