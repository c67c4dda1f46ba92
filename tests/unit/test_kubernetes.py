"""deploy/kubernetes, checked offline: every object against the Kubernetes API's schemas
(kubernetes-validate's strict JSON schemas: a misspelt or misplaced field is an error), the
configuration against the settings model, and the properties the design relies on.

No cluster and no kustomize binary on CI: :func:`render` does the few things the
kustomizations ask for (resources, namespace, images, a generated ConfigMap, patches by name)
and refuses anything else, so a kustomization that grows a feature grows this test too. Where a
kustomize binary is on PATH, the two renderings are compared.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_validate.utils import ValidationError, validate
from typer.testing import CliRunner

from replicator.cli import app
from replicator.config import Settings, load_settings
from replicator.health import LIVENESS_PATH, READINESS_PATH

ROOT = Path(__file__).resolve().parents[2]
KUBE = ROOT / "deploy" / "kubernetes"
BASE = KUBE / "base"
OVERLAYS = sorted(p for p in (KUBE / "overlays").iterdir() if p.is_dir())
TREES = [BASE, *OVERLAYS]
# The oldest and the newest Kubernetes the manifests are checked against.
VERSIONS = ["1.29", "1.37"]

Doc = dict[str, Any]
SUPPORTED = {
    "apiVersion",
    "kind",
    "namespace",
    "resources",
    "images",
    "configMapGenerator",
    "generatorOptions",
    "patches",
}
CLUSTER_SCOPED = {"Namespace"}


# -- a small kustomize ----------------------------------------------------------------------


def render(directory: Path) -> list[Doc]:
    k = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(k) - SUPPORTED
    assert not unknown, f"{directory}: this test's renderer does not do {unknown}"
    docs: list[Doc] = []
    for entry in k.get("resources", []):
        path = (directory / entry).resolve()
        assert path.exists(), f"{directory}/kustomization.yaml lists {entry}, which is missing"
        if path.is_dir():
            docs += render(path)
        else:
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    options = k.get("generatorOptions", {})
    for gen in k.get("configMapGenerator", []):
        assert options.get("disableNameSuffixHash"), "the renderer does not rename references"
        assert set(gen) <= {"name", "files", "behavior"}, gen
        data = {}
        for f in gen["files"]:
            key, _, rel = f.rpartition("=")
            data[key or Path(rel).name] = (directory / rel).read_text()
        found = [d for d in docs if d["kind"] == "ConfigMap" and _name(d) == gen["name"]]
        behavior = gen.get("behavior", "create")
        if behavior == "create":
            assert not found, f"ConfigMap {gen['name']} generated twice"
            meta = {"name": gen["name"], "labels": dict(options.get("labels", {}))}
            docs.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data})
        else:
            assert behavior in ("replace", "merge") and len(found) == 1, gen
            cm = found[0]
            cm["data"] = data if behavior == "replace" else {**cm["data"], **data}
            cm["metadata"].setdefault("labels", {}).update(options.get("labels", {}))
    for patch in k.get("patches", []):
        assert set(patch) == {"path"}, f"only patches by path: {patch}"
        body = yaml.safe_load((directory / patch["path"]).read_text())
        hits = [
            i for i, d in enumerate(docs) if d["kind"] == body["kind"] and _name(d) == _name(body)
        ]
        assert len(hits) == 1, f"patch {patch['path']} matches {len(hits)} objects"
        docs[hits[0]] = _merge(docs[hits[0]], body)
    for image in k.get("images", []):
        for container in _containers(docs):
            name = re.split(r"[:@]", container["image"], maxsplit=1)[0]
            if name == image["name"]:
                container["image"] = (
                    f"{image.get('newName', name)}:{image['newTag']}"
                    if "newTag" in image
                    else image.get("newName", name)
                )
    if "namespace" in k:
        for d in docs:
            if d["kind"] not in CLUSTER_SCOPED:
                d["metadata"]["namespace"] = k["namespace"]
    return docs


def _merge(base: Any, patch: Any) -> Any:
    """A strategic merge as far as these patches need: maps by key, lists of named items by
    name, anything else replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            out[key] = _merge(base[key], value) if key in base else value
        return out
    named = isinstance(base, list) and isinstance(patch, list)
    if named and all(isinstance(x, dict) and "name" in x for x in [*base, *patch]):
        merged = {x["name"]: x for x in base}
        for x in patch:
            merged[x["name"]] = _merge(merged[x["name"]], x) if x["name"] in merged else x
        return list(merged.values())
    return copy.deepcopy(patch)


def _name(d: Doc) -> str:
    return str(d["metadata"]["name"])


def _pod_specs(docs: list[Doc]) -> Iterator[tuple[Doc, Doc]]:
    for d in docs:
        if d["kind"] in ("Deployment", "Job"):
            yield d, d["spec"]["template"]["spec"]


def _containers(docs: list[Doc]) -> Iterator[Doc]:
    for _, pod in _pod_specs(docs):
        yield from pod.get("initContainers", [])
        yield from pod["containers"]


def _one(docs: list[Doc], kind: str, name: str) -> Doc:
    found = [d for d in docs if d["kind"] == kind and _name(d) == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def _settings(docs: list[Doc], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Settings:
    """The ConfigMap's replicator.toml as the pods read it: the file, plus their environment."""
    cm = _one(docs, "ConfigMap", "replicator-config")
    text = cm["data"]["replicator.toml"]
    for var in [v for v in os.environ if v.startswith("REPLICATOR_")]:
        monkeypatch.delenv(var)
    pod = _one(docs, "Deployment", "replicator-capture")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    # The Secret's files, where the pod mounts them: every *_file setting must name one.
    secret_volumes = {v["name"] for v in pod.get("volumes", []) if "secret" in v}
    for mount in container.get("volumeMounts", []):
        if mount["name"] in secret_volumes:
            local = tmp_path / "secrets"
            local.mkdir(exist_ok=True)
            for key in ("source-password", "target-password"):
                (local / key).write_text("from-a-secret\n")
            text = text.replace(mount["mountPath"] + "/", f"{local}/")
    path = tmp_path / "replicator.toml"
    path.write_text(text)
    for e in container.get("env", []):
        if e["name"] != "REPLICATOR_CONFIG":
            monkeypatch.setenv(e["name"], e.get("value", "from-a-secret"))
    monkeypatch.setenv("REPLICATOR_CONFIG", str(path))  # restored after the test
    return load_settings(path)


@pytest.fixture(params=TREES, ids=lambda p: str(p.relative_to(KUBE)))
def docs(request: pytest.FixtureRequest) -> list[Doc]:
    return render(request.param)


# -- the API's schemas -------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_every_object_validates_against_the_kubernetes_api(docs: list[Doc], version: str) -> None:
    assert docs
    for d in docs:
        try:
            validate(d, version, strict=True)
        except ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{d['kind']}/{_name(d)} on Kubernetes {version}: {where}: {exc.message}")


def test_the_validator_refuses_a_misspelt_field() -> None:
    capture = _one(render(BASE), "Deployment", "replicator-capture")
    capture["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(ValidationError, match="livenesProbe"):
        validate(capture, VERSIONS[-1], strict=True)


@pytest.mark.skipif(shutil.which("kustomize") is None, reason="no kustomize on PATH")
def test_the_renderer_agrees_with_kustomize() -> None:
    """Where a kustomize binary exists (not on CI: it is a Go build), it renders the same
    objects as :func:`render` (checked with kustomize 5.7.1)."""
    for tree in TREES:
        out = subprocess.run(
            ["kustomize", "build", str(tree)], capture_output=True, text=True, check=True
        ).stdout
        real = {(d["kind"], _name(d)): d for d in yaml.safe_load_all(out) if d}
        assert real == {(d["kind"], _name(d)): d for d in render(tree)}, tree


def test_every_file_is_used_and_every_listed_file_exists() -> None:
    for tree in TREES:
        k = yaml.safe_load((tree / "kustomization.yaml").read_text())
        listed = {Path(r).name for r in k.get("resources", [])}
        listed |= {
            f.rpartition("=")[2] for g in k.get("configMapGenerator", []) for f in g["files"]
        }
        listed |= {p["path"] for p in k.get("patches", [])}
        present = {p.name for p in tree.iterdir() if p.is_file()} - {"kustomization.yaml"}
        assert present <= listed, f"{tree}: {present - listed} not in kustomization.yaml"
        render(tree)  # and each listed one exists (asserted while rendering)


# -- configuration -----------------------------------------------------------------------------


def test_the_config_map_is_valid_settings(
    docs: list[Doc], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    s = _settings(docs, monkeypatch, tmp_path)
    assert s.metrics.port > 0 and s.metrics.host == "0.0.0.0"
    assert s.apply.workers == 1  # one worker per pod: the Deployment's replicas scale them
    for _, pod in _pod_specs(docs):
        mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "config")
        volume = next(v for v in pod["volumes"] if v["name"] == "config")
        env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
        assert volume["configMap"]["name"] == "replicator-config"
        assert env["REPLICATOR_CONFIG"] == f"{mount['mountPath']}/replicator.toml"


def test_apply_replicas_stay_within_the_partitions(
    docs: list[Doc], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    s = _settings(docs, monkeypatch, tmp_path)
    apply = _one(docs, "Deployment", "replicator-apply")
    assert 1 <= apply["spec"]["replicas"] <= s.kafka.partitions
    # A surge pod would find no partition when replicas == partitions, and never be ready.
    assert apply["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == 0


# -- the design's properties -------------------------------------------------------------------


def test_capture_is_one_replica_replaced_by_recreate(docs: list[Doc]) -> None:
    capture = _one(docs, "Deployment", "replicator-capture")
    assert capture["spec"]["replicas"] == 1
    assert capture["spec"]["strategy"] == {"type": "Recreate"}
    assert [c["args"] for c in capture["spec"]["template"]["spec"]["containers"]] == [["capture"]]


def test_probes_ask_the_health_endpoints_on_the_metrics_port(
    docs: list[Doc], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    s = _settings(docs, monkeypatch, tmp_path)
    for name in ("replicator-capture", "replicator-apply"):
        pod = _one(docs, "Deployment", name)["spec"]["template"]
        (container,) = pod["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        for probe, path in (("livenessProbe", LIVENESS_PATH), ("readinessProbe", READINESS_PATH)):
            get = container[probe]["httpGet"]
            assert get["path"] == path, (name, probe)
            port = ports[get["port"]] if isinstance(get["port"], str) else get["port"]
            assert port == s.metrics.port, (name, probe)
        assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(s.metrics.port)


def test_selectors_match_their_pods(docs: list[Doc]) -> None:
    for d in docs:
        if d["kind"] == "Deployment":
            labels = d["spec"]["template"]["metadata"]["labels"]
            assert d["spec"]["selector"]["matchLabels"].items() <= labels.items(), _name(d)


def test_secrets_reach_the_pods_as_files_only(docs: list[Doc]) -> None:
    assert not [d for d in docs if d["kind"] == "Secret"], "the Secret is created by the operator"
    secretish = re.compile(r"PASSWORD|SECRET|TOKEN|_KEY\b", re.IGNORECASE)
    for container in _containers(docs):
        for e in container.get("env", []):
            assert not secretish.search(e["name"]), f"{e['name']}: secrets come as files"
    for _, pod in _pod_specs(docs):
        secrets = [v for v in pod.get("volumes", []) if "secret" in v]
        assert [v["secret"]["secretName"] for v in secrets] == ["replicator-secrets"]
        assert pod["securityContext"].get("fsGroup") == 65534, "the files' group is the pod's"
    for d in docs:
        if d["kind"] == "ConfigMap":
            for text in d["data"].values():
                keys = _keys(tomllib.loads(text))
                assert not {k for k in keys if secretish.search(k) and "file" not in k}, keys


def _keys(table: dict[str, Any], prefix: str = "") -> set[str]:
    out = set()
    for k, v in table.items():
        out |= _keys(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}"}
    return out


def test_pods_run_unprivileged_with_resources(docs: list[Doc]) -> None:
    for d, pod in _pod_specs(docs):
        assert pod["securityContext"]["runAsNonRoot"] is True, _name(d)
        assert pod["securityContext"]["runAsUser"] == _dockerfile_uid()
        assert pod["automountServiceAccountToken"] is False
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"]["drop"] == ["ALL"]
            assert {"cpu", "memory"} <= set(c["resources"]["requests"]), _name(d)
            assert "memory" in c["resources"]["limits"], _name(d)
            # Python and its temporary files need a writable /tmp on a read-only root.
            assert any(m["mountPath"] == "/tmp" for m in c["volumeMounts"]), _name(d)


def test_check_runs_at_once_and_the_cutover_jobs_wait_to_be_resumed(docs: list[Doc]) -> None:
    jobs = {_name(d): d for d in docs if d["kind"] == "Job"}
    assert jobs["replicator-check"]["spec"].get("suspend") is not True
    assert _args(jobs["replicator-check"]) == ["check"]
    assert _args(jobs["replicator-cutover"]) == ["cutover", "--yes"]
    for name, job in jobs.items():
        assert job["spec"]["backoffLimit"] == 0, name  # a failed cutover is read, not retried
        if name != "replicator-check":
            assert job["spec"]["suspend"] is True, name


def _args(d: Doc) -> list[str]:
    return list(d["spec"]["template"]["spec"]["containers"][0]["args"])


def test_every_command_line_is_one_the_cli_accepts(docs: list[Doc]) -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    runner = CliRunner()
    for c in _containers(docs):
        assert c["command"] == ["replicator"] and "replicator" in scripts
        r = runner.invoke(app, [*c["args"], "--help"])
        assert r.exit_code == 0, (c["args"], r.output)


def _dockerfile_uid() -> int:
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    (user,) = re.findall(r"^USER\s+(\d+)", text, re.MULTILINE)
    return int(user)


def test_the_image_runs_the_cli_as_the_pods_user() -> None:
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    assert re.search(r"^RUN pip install .*\s\.\s", text, re.MULTILINE)
    assert '"replicator"' in text.split("CMD", 1)[1]
    assert _dockerfile_uid() != 0
