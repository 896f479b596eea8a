"""deploy/kubernetes: every manifest is valid against the Kubernetes schemas (kubernetes-validate
ships them, so this runs offline), and the manifests agree with each other, with the image and
with the commands they run."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.conftest import REPO_ROOT

FOLDER = REPO_ROOT / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.37.0"


def _documents() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(FOLDER.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                found.append((path.name, document))
    return found


DOCUMENTS = _documents()


def _one(kind: str, name: str | None = None) -> dict[str, Any]:
    matches = [
        d for _, d in DOCUMENTS if d["kind"] == kind and name in (None, d["metadata"]["name"])
    ]
    assert len(matches) == 1, (kind, name, len(matches))
    return matches[0]


@pytest.mark.parametrize(
    ("file_name", "document"),
    DOCUMENTS,
    ids=[f"{name}:{doc['kind']}" for name, doc in DOCUMENTS],
)
def test_every_manifest_is_valid_against_the_kubernetes_schema(
    file_name: str, document: dict[str, Any]
) -> None:
    # strict: unknown fields (a typo such as `readinesProbe`) fail too
    kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_the_validator_does_catch_mistakes() -> None:
    broken = yaml.safe_load((FOLDER / "deployment.yaml").read_text())
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)
    broken = yaml.safe_load((FOLDER / "hpa.yaml").read_text())
    broken["spec"]["minReplicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_the_kinds_the_deployment_needs_are_all_there() -> None:
    kinds = sorted(d["kind"] for _, d in DOCUMENTS)
    assert kinds == sorted(
        [
            "Deployment",
            "Service",
            "HorizontalPodAutoscaler",
            "PodDisruptionBudget",
            "Secret",
            "Job",
            "PersistentVolumeClaim",
        ]
    )
    kustomization = yaml.safe_load((FOLDER / "kustomization.yaml").read_text())
    for resource in kustomization["resources"]:
        assert (FOLDER / resource).is_file(), resource


def _dockerfile_user_id() -> int:
    text = (REPO_ROOT / "Dockerfile").read_text()
    match = re.search(r"useradd [^\n]*--uid (\d+)", text)
    assert match
    return int(match.group(1))


def _pod_spec(kind: str) -> dict[str, Any]:
    document = _one(kind)
    spec: dict[str, Any] = document["spec"]["template"]["spec"]
    return spec


@pytest.mark.parametrize("kind", ["Deployment", "Job"])
def test_pods_run_as_the_images_non_root_user_with_a_read_only_root(kind: str) -> None:
    pod = _pod_spec(kind)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == _dockerfile_user_id()
    assert pod["automountServiceAccountToken"] is False
    mounts = set()
    for container in pod["containers"]:
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"]["drop"] == ["ALL"]
        for limit in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"][limit])
        mounts |= {m["mountPath"] for m in container["volumeMounts"]}
    assert "/tmp" in mounts  # the only place Python and Pillow may write temporary files


def test_the_deployment_probes_health_and_ready_on_the_port_it_serves() -> None:
    deployment = _one("Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    (port,) = container["ports"]
    assert port["name"] == "http"
    assert int(env["PORT"]["value"]) == port["containerPort"] == 8080  # the image's default
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert container["startupProbe"]["httpGet"]["path"] == "/health"
    # one ONNX Runtime thread per CPU of the limit
    assert env["AGELENS_THREADS"]["value"] == container["resources"]["limits"]["cpu"]
    data_dir = env["AGELENS_DATA_DIR"]["value"]
    assert data_dir in {m["mountPath"] for m in container["volumeMounts"]}


def test_keys_come_from_the_secret_and_none_ships() -> None:
    secret = _one("Secret")
    deployment = _one("Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    references = [e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e]
    assert references
    for reference in references:
        assert reference["name"] == secret["metadata"]["name"]
        assert reference["key"] in secret["stringData"]
    names = {e["name"] for e in container["env"] if "valueFrom" in e}
    assert "AGELENS_API_KEY_HASHES" in names
    assert all(value == "" for value in secret["stringData"].values())  # no default credentials


def test_service_hpa_and_pdb_point_at_the_deployment() -> None:
    deployment = _one("Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = _one("Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    pdb = _one("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    hpa = _one("HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert hpa["spec"]["minReplicas"] > pdb["spec"]["minAvailable"]


def test_the_batch_job_runs_a_real_agelens_batch_over_its_volume(
    tmp_path: Path, samples_dir: Path
) -> None:
    job = _one("Job")
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    claim = pod["volumes"][0]["persistentVolumeClaim"]["claimName"]
    assert claim == _one("PersistentVolumeClaim")["metadata"]["name"]
    argv = container["command"]
    assert argv[:2] == ["agelens", "batch"]
    # the same command, with the volume's mount point moved to a temporary folder
    (mount,) = [m["mountPath"] for m in container["volumeMounts"] if m["name"] == "data"]
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "man_beard.jpg").write_bytes((samples_dir / "man_beard.jpg").read_bytes())
    local = [a.replace(mount, str(tmp_path)) for a in argv[1:]]
    completed = subprocess.run(
        [sys.executable, "-m", "agelens", *local],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, shlex.join(local) + "\n" + completed.stderr
    import pyarrow.parquet as pq

    out = tmp_path / argv[argv.index("--out") + 1].removeprefix(mount + "/")
    table = pq.read_table(out)
    assert table.num_rows == 1
    # run again, as a retried pod would: --resume skips what is done
    again = subprocess.run(
        [sys.executable, "-m", "agelens", *local],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert again.returncode == 0, again.stderr
    assert "1 already done" in again.stderr + again.stdout
