"""deploy/kubernetes: every manifest checked against the Kubernetes API's own models, and the
facts the agent depends on (README, "Many instances, state and resume").

No cluster runs here. Each object is checked twice: by ``kubernetes_problems``
(tests/support/deploy.py: every key a field of its model, the JSON type the model names,
required fields present, at every depth) and by the client's pydantic model in strict mode
(``model_validate``: unknown keys forbidden). ``kubectl kustomize``, where kubectl is
installed, renders the kustomization the way ``kubectl apply -k`` would, and that output is
checked too. The tests at the end break a manifest on purpose, deep inside, to show that
both checks fail and say where.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pydantic
import pytest

from agent.cli.app import main as agent_main
from tests.support.deploy import (
    DEPLOY,
    json_file,
    kubernetes_model,
    kubernetes_problems,
    pod_spec,
    yaml_documents,
)

DIRECTORY = DEPLOY / "kubernetes"
KUSTOMIZATION = DIRECTORY / "kustomization.yaml"


def kustomization() -> dict[str, Any]:
    (document,) = yaml_documents(KUSTOMIZATION)
    return document


def objects() -> list[tuple[str, dict[str, Any]]]:
    """(file#n, object) for every document of every YAML file but the kustomization."""
    found = []
    for path in sorted(DIRECTORY.glob("*.yaml")):
        if path != KUSTOMIZATION:
            for number, document in enumerate(yaml_documents(path)):
                found.append((f"{path.name}#{number}", document))
    return found


def generated_config_maps() -> list[dict[str, Any]]:
    """The ConfigMaps the kustomization's configMapGenerator makes (before kustomize adds
    the hash suffix to their names): one key per file, named after the file."""
    maps = []
    for generator in kustomization().get("configMapGenerator", []):
        data = {Path(name).name: (DIRECTORY / name).read_text() for name in generator["files"]}
        maps.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": generator["name"]},
                "data": data,
            }
        )
    return maps


def the_job() -> dict[str, Any]:
    (job,) = [document for _, document in objects() if document["kind"] == "Job"]
    return job


def container(job: dict[str, Any], name: str, *, init: bool = False) -> dict[str, Any]:
    containers = pod_spec(job)["initContainers" if init else "containers"]
    (found,) = [entry for entry in containers if entry["name"] == name]
    return found


def assert_valid(document: dict[str, Any]) -> None:
    assert kubernetes_problems(document) == []
    model = kubernetes_model(document["apiVersion"], document["kind"])
    assert model is not None
    model.model_validate(document)  # raises pydantic.ValidationError, naming the path


# ----------------------------------------------------------------------------- schema


def test_the_directory_holds_the_recipe() -> None:
    names = sorted(path.name for path in DIRECTORY.iterdir())
    assert names == [
        "README.md",
        "job.json",
        "job.yaml",
        "kustomization.yaml",
        "serviceaccount.yaml",
    ]
    assert [document["kind"] for _, document in objects()] == ["Job", "ServiceAccount"]


@pytest.mark.parametrize(("where", "document"), objects(), ids=[where for where, _ in objects()])
def test_every_manifest_is_a_valid_kubernetes_object(where: str, document: dict[str, Any]) -> None:
    assert_valid(document)


def test_the_generated_config_map_is_valid() -> None:
    (config_map,) = generated_config_maps()
    assert_valid(config_map)
    assert list(config_map["data"]) == ["job.json"]


def test_the_kustomization_resources_and_generator_files_exist() -> None:
    document = kustomization()
    assert document["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert document["kind"] == "Kustomization"
    assert set(document) == {"apiVersion", "kind", "resources", "configMapGenerator"}
    for name in document["resources"]:
        assert (DIRECTORY / name).is_file(), f"kustomization.yaml lists {name}, which is missing"
    for generator in document["configMapGenerator"]:
        for name in generator["files"]:
            assert (DIRECTORY / name).is_file(), f"the generator reads {name}, which is missing"
    listed = set(document["resources"])
    assert listed == {path.name for path in DIRECTORY.glob("*.yaml")} - {KUSTOMIZATION.name}


def test_kubectl_kustomize_renders_valid_objects_that_reference_the_generated_map() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip(
            "kubectl is not installed, so the kustomization is not rendered here; the "
            "manifests and the generated ConfigMap are still checked one by one above"
        )
    rendered = subprocess.run(
        [kubectl, "kustomize", str(DIRECTORY)], capture_output=True, text=True, timeout=60
    )
    assert rendered.returncode == 0, rendered.stderr
    import yaml

    documents = [d for d in yaml.safe_load_all(rendered.stdout) if d is not None]
    assert sorted(d["kind"] for d in documents) == ["ConfigMap", "Job", "ServiceAccount"]
    for document in documents:
        assert_valid(document)
    (config_map,) = [d for d in documents if d["kind"] == "ConfigMap"]
    (job,) = [d for d in documents if d["kind"] == "Job"]
    name = config_map["metadata"]["name"]
    assert name.startswith("bt-agent-job-") and name != "bt-agent-job"  # the hash suffix
    (volume,) = [v for v in pod_spec(job)["volumes"] if "configMap" in v]
    assert volume["configMap"]["name"] == name
    assert config_map["data"]["job.json"] == (DIRECTORY / "job.json").read_text()


# ----------------------------------------------------------------------------- facts


def test_an_indexed_job_with_one_pod_per_instance_of_the_job_file() -> None:
    spec = the_job()["spec"]
    instance_count = json_file(DIRECTORY / "job.json")["TransformResources"]["InstanceCount"]
    assert spec["completionMode"] == "Indexed"
    assert spec["parallelism"] == spec["completions"] == instance_count == 4
    # The count reaches the agent through the job file only (Kubernetes exposes no count):
    assert "--instance-count" not in container(the_job(), "bt-agent")["args"]


def test_usage_errors_fail_the_job_and_retries_are_counted_per_index() -> None:
    spec = the_job()["spec"]
    assert spec["backoffLimitPerIndex"] == 2
    assert "backoffLimit" not in spec
    rules = spec["podFailurePolicy"]["rules"]
    assert rules[0] == {
        "action": "FailJob",
        "onExitCodes": {"containerName": "bt-agent", "operator": "In", "values": [2]},
    }
    assert rules[1] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}
    assert pod_spec(the_job())["restartPolicy"] == "Never"  # podFailurePolicy requires it
    assert pod_spec(the_job())["terminationGracePeriodSeconds"] == 90


def test_the_model_is_a_native_sidecar_answering_ping_where_the_job_file_points() -> None:
    job = the_job()
    model = container(job, "model", init=True)
    assert model["restartPolicy"] == "Always"
    probe = model["readinessProbe"]["httpGet"]
    assert probe["path"] == "/ping"
    model_url = urlsplit(json_file(DIRECTORY / "job.json")["Agent"]["ModelUrl"])
    assert (model_url.hostname, model_url.port) == ("127.0.0.1", probe["port"])
    assert [port["containerPort"] for port in model["ports"]] == [probe["port"]]
    assert "ModelCommand" not in json_file(DIRECTORY / "job.json")["Agent"]
    assert model["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_the_agent_reads_the_job_file_from_the_mounted_config_map() -> None:
    job = the_job()
    agent = container(job, "bt-agent")
    assert agent["args"] == ["--job", "/etc/bt-agent/job.json", "--metrics-port", "9100"]
    assert agent["ports"] == [{"name": "metrics", "containerPort": 9100}]
    job_path = PurePosixPath(agent["args"][1])
    (mount,) = agent["volumeMounts"]
    assert mount["mountPath"] == str(job_path.parent)
    (volume,) = [v for v in pod_spec(job)["volumes"] if v["name"] == mount["name"]]
    (config_map,) = generated_config_maps()
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    assert job_path.name in config_map["data"]  # a ConfigMap key is a file in the mount
    assert pod_spec(job)["serviceAccountName"] == "bt-agent"


def test_the_job_file_is_valid_for_the_agent(capsys: pytest.CaptureFixture[str]) -> None:
    assert agent_main(["validate", "--job", str(DIRECTORY / "job.json")]) == 0
    assert "valid transform job bt-agent-kubernetes" in capsys.readouterr().out


# ----------------------------------------------------------------------------- the check fails


def _break(change: Any) -> dict[str, Any]:
    job = copy.deepcopy(the_job())
    change(job)
    return job


def _agent(job: dict[str, Any]) -> dict[str, Any]:
    return pod_spec(job)["containers"][0]


def _model(job: dict[str, Any]) -> dict[str, Any]:
    return pod_spec(job)["initContainers"][0]


BROKEN = [
    (
        "misspelt-deep-field",
        lambda job: _agent(job)["volumeMounts"][0].update(mountPth="/x"),
        "spec.template.spec.containers[0].volumeMounts[0].mountPth: not a field of "
        "V1VolumeMount; did you mean 'mountPath'?",
    ),
    (
        "misspelt-top-field",
        lambda job: job["spec"].update(completionMod="Indexed"),
        "spec.completionMod: not a field of V1JobSpec; did you mean 'completionMode'?",
    ),
    (
        "string-for-int",
        lambda job: job["spec"].update(parallelism="4"),
        "spec.parallelism: must be int, not a string ('4')",
    ),
    (
        "boolean-for-int",
        lambda job: pod_spec(job).update(terminationGracePeriodSeconds=True),
        "spec.template.spec.terminationGracePeriodSeconds: must be int, not a boolean (True)",
    ),
    (
        "list-for-int-or-string",
        lambda job: _model(job)["readinessProbe"]["httpGet"].update(port=[8080]),
        "spec.template.spec.initContainers[0].readinessProbe.httpGet.port: must be an "
        "integer or a string, not a list",
    ),
    (
        "integer-quantity",
        lambda job: _model(job)["resources"]["limits"].update({"nvidia.com/gpu": 1}),
        "spec.template.spec.initContainers[0].resources.limits['nvidia.com/gpu']: must be "
        "str, not an integer (1)",
    ),
    (
        "string-for-list",
        lambda job: _agent(job).update(args="--job /etc/bt-agent/job.json"),
        "spec.template.spec.containers[0].args: must be a list (List[str]), not a string",
    ),
    (
        "missing-required",
        lambda job: _agent(job).pop("name"),
        "spec.template.spec.containers[0].name: required by V1Container, missing",
    ),
    (
        "missing-required-deep",
        lambda job: job["spec"]["podFailurePolicy"]["rules"][0]["onExitCodes"].pop("operator"),
        "spec.podFailurePolicy.rules[0].onExitCodes.operator: required by "
        "V1PodFailurePolicyOnExitCodesRequirement, missing",
    ),
    (
        "null-value",
        lambda job: pod_spec(job).update(volumes=None),
        "spec.template.spec.volumes: null (leave the key out instead)",
    ),
]


@pytest.mark.parametrize(("change", "problem"), [b[1:] for b in BROKEN], ids=[b[0] for b in BROKEN])
def test_a_broken_manifest_fails_both_checks_naming_the_path(change: Any, problem: str) -> None:
    broken = _break(change)
    problems = kubernetes_problems(broken)
    # an unknown key's problem ends with the model's fields, left out of the comparison
    assert [text.split(" (its fields: ")[0] for text in problems] == [problem]
    model = kubernetes_model("batch/v1", "Job")
    assert model is not None
    if problem.endswith("null (leave the key out instead)"):
        # The API (and its client models) read null as absent; the recipes must not hold
        # one all the same: it is always a key left half-written.
        model.model_validate(broken)
        return
    with pytest.raises(pydantic.ValidationError):
        model.model_validate(broken)


def test_an_unknown_kind_and_a_non_object_are_problems() -> None:
    assert kubernetes_problems({"apiVersion": "batch/v1", "kind": "Jobb"}) == [
        "(document): no model for apiVersion batch/v1 kind Jobb"
    ]
    assert kubernetes_problems(["not", "an", "object"]) == [
        "(document): a Kubernetes object is a mapping, not a list"
    ]
