"""Validation tests for the deployment files.

Covers:

* ``conf/kubernetes/*.yaml``: every manifest is validated offline against the
  Kubernetes OpenAPI schemas bundled with the ``kubernetes-validate`` package
  (strict mode: unknown fields are errors), then checked for what the
  deployment needs: read-only RBAC on exactly the resources DNS answers from,
  the Deployment's probes/labels/securityContext, the Service's cluster IP and
  ports, and the cluster's own Corefile (ConfigMap ``coredns``) mounted where
  ``--config`` points, with CoreDNS's probe and metrics ports.
* ``conf/kubernetes/yaml-config/``: the YAML alternative (a ConfigMap ``kubedns``
  and a Deployment patch), rendered by hand as kustomize would and validated the
  same way; its corefile.yaml is the same config as ``conf/Corefile``.
* ``conf/Corefile``: kubeadm's default Corefile byte for byte after its comment.
* ``conf/kubedns.service``: parsed with :mod:`configparser`; the hardening
  keys are asserted, and ``systemd-analyze verify`` / ``security --offline``
  are run on it when ``systemd-analyze`` is installed. Its install comment and the README's
  systemd steps are the same commands: a venv at /opt/kubedns whose twistd is ExecStart, the
  plugin cache built after pip, files that exist, and a kubeconfig readable by root and the
  service's group only.
* ``conf/kubernetes/node-local/`` and ``conf/kubedns-nodelocal.service``: the node-local cache's
  DaemonSet, Services and ConfigMap (the same Corefile as ``conf/nodelocal.Corefile``), validated
  the same way, and its unit through ``systemd-analyze verify``.
* ``Containerfile`` and its ignore files: non-root USER, twistd ENTRYPOINT,
  pip install and a prebuilt Twisted plugin dropin cache.

Cross-file consistency (ports, paths, names, UIDs) is checked too, so that a
change to one file that breaks another fails here rather than in a cluster.
"""

from __future__ import annotations

import configparser
import copy
import json
import re
import shlex
import shutil
import subprocess
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.support.unit import UNIT_FILE, UNIT_VENV, shell_commands, unit_install_steps

REPO = Path(__file__).resolve().parent.parent
K8S_DIR = REPO / "conf" / "kubernetes"
README = REPO / "README.md"
CONTAINERFILE = REPO / "Containerfile"
IGNORE_FILES = (REPO / ".containerignore", REPO / ".dockerignore")

KUSTOMIZATION = "kustomization.yaml"
MANIFEST_FILES = sorted(p.name for p in K8S_DIR.glob("*.yaml") if p.name != KUSTOMIZATION)
YAML_DIR = K8S_DIR / "yaml-config"
CONF_COREFILE = REPO / "conf" / "Corefile"
# kubeadm's CoreDNSConfigMap (cmd/kubeadm/app/phases/addons/dns/manifests.go) rendered with
# DNSDomain cluster.local: the {{- if }} and {{- end }} trim the newline before them.
KUBEADM_COREFILE = """\
.:53 {
    errors
    health {
       lameduck 5s
    }
    ready
    kubernetes cluster.local in-addr.arpa ip6.arpa {
       pods insecure
       fallthrough in-addr.arpa ip6.arpa
       ttl 30
    }
    prometheus :9153
    forward . /etc/resolv.conf {
       max_concurrent 1000
    }
    cache 30 {
       disable success cluster.local
       disable denial cluster.local
    }
    loop
    reload
    loadbalance
}
"""

# Oldest Kubernetes release we promise to support, and the newest that the
# installed kubernetes-validate ships schemas for.
K8S_VERSIONS = sorted({"1.30", ".".join(kubernetes_validate.latest_version().split(".")[:2])})

CONTAINER_UID = 65532
EXPECTED_UNIT_EXECSTART_ARGS = [
    "-n",
    "--pidfile=",
    "kubedns",
    "--config",
    "/etc/kubedns/corefile.yaml",
]
DNS_POD_LABELS = {"k8s-app": "kube-dns"}

Obj = dict[str, Any]


# --------------------------------------------------------------------------- helpers


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate mapping keys (PyYAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: set[Hashable] = set()
        for key_node, _value_node in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _load_yaml_docs(text: str) -> list[Any]:
    return [doc for doc in yaml.load_all(text, Loader=_UniqueKeyLoader) if doc is not None]


def _load_manifest(name: str) -> Obj:
    docs = _load_yaml_docs((K8S_DIR / name).read_text())
    assert len(docs) == 1, f"{name}: expected exactly one YAML document, found {len(docs)}"
    doc = docs[0]
    assert isinstance(doc, dict), f"{name}: top level is not a mapping"
    return doc


def _by_kind(kind: str) -> Obj:
    found = [doc for doc in (_load_manifest(n) for n in MANIFEST_FILES) if doc.get("kind") == kind]
    assert len(found) == 1, f"expected exactly one {kind} in {K8S_DIR}, found {len(found)}"
    return found[0]


def _container(deployment: Obj) -> Obj:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, "the kubedns pod must have exactly one container"
    container: Obj = containers[0]
    return container


def _yaml_configmap() -> Obj:
    docs = _load_yaml_docs((YAML_DIR / "configmap.yaml").read_text())
    assert len(docs) == 1 and docs[0]["kind"] == "ConfigMap"
    configmap: Obj = docs[0]
    return configmap


def _corefile() -> Obj:
    """The YAML alternative's config (conf/kubernetes/yaml-config/configmap.yaml)."""
    configmap = _yaml_configmap()
    assert set(configmap["data"]) == {"corefile.yaml"}, "ConfigMap must hold only corefile.yaml"
    docs = _load_yaml_docs(configmap["data"]["corefile.yaml"])
    assert len(docs) == 1, "corefile.yaml must be one YAML document"
    corefile: Obj = docs[0]
    return corefile


def _port_of(listen: str) -> int:
    """Port of a ``host:port`` or ``:port`` listen string."""
    match = re.fullmatch(r"(?:\[[^\]]*\]|[^:]*):(\d+)", listen)
    assert match, f"not a host:port listen address: {listen!r}"
    return int(match.group(1))


_TIME_UNITS = {
    "us": 1e-6, "usec": 1e-6, "ms": 1e-3, "msec": 1e-3,
    "": 1.0, "s": 1.0, "sec": 1.0, "second": 1.0, "seconds": 1.0,
    "m": 60.0, "min": 60.0, "minute": 60.0, "minutes": 60.0,
    "h": 3600.0, "hr": 3600.0, "hour": 3600.0, "hours": 3600.0,
}  # fmt: skip


def _seconds(span: str) -> float:
    """Seconds in a systemd time span ("20s", "1min 30s") or Go duration ("1m30s")."""
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", span.strip().lower())
    assert parts, span
    assert re.fullmatch(r"(?:\s*\d+(?:\.\d+)?\s*[a-z]*)+\s*", span.lower()), span
    total = 0.0
    for number, unit in parts:
        assert unit in _TIME_UNITS, f"unknown time unit {unit!r} in {span!r}"
        total += float(number) * _TIME_UNITS[unit]
    return total


class _MultiValueDict(dict[str, Any]):
    """Option dict for configparser that accumulates repeated keys.

    systemd allows a key to be assigned several times (the values add up, e.g.
    ``SystemCallFilter=``); configparser with ``strict=False`` would keep only
    the last one. configparser stores each freshly read value as a one-element
    list, so a second list for an existing key is appended to the first; after
    parsing, the values of a repeated key are joined with newlines.
    """

    def __setitem__(self, key: str, value: object) -> None:
        if isinstance(value, list) and isinstance(self.get(key), list):
            self[key].extend(value)
        else:
            super().__setitem__(key, value)


def _parse_unit(text: str) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(
        strict=False,
        dict_type=_MultiValueDict,
        interpolation=None,
        comment_prefixes=("#", ";"),
        empty_lines_in_values=False,
    )
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read_string(text)
    return parser


def _unit_values(unit: configparser.RawConfigParser, section: str, key: str) -> list[str]:
    """All values assigned to ``key`` in ``section``, in file order."""
    assert unit.has_option(section, key), f"[{section}] {key}= missing from {UNIT_FILE.name}"
    return unit.get(section, key).split("\n")


def _unit_value(unit: configparser.RawConfigParser, section: str, key: str) -> str:
    values = _unit_values(unit, section, key)
    assert len(values) == 1, f"[{section}] {key}= assigned {len(values)} times: {values}"
    return values[0]


def _containerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs; continuations joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in CONTAINERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # comment lines are dropped, also inside continuations
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = pending + line
        pending = ""
        keyword, _, args = full.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
    assert not pending, "Containerfile ends inside a line continuation"
    return instructions


def _single(instructions: list[tuple[str, str]], keyword: str) -> str:
    found = [args for kw, args in instructions if kw == keyword]
    assert len(found) == 1, f"Containerfile: expected one {keyword}, found {len(found)}"
    return found[0]


def _exec_form(instructions: list[tuple[str, str]], keyword: str) -> list[str]:
    args = _single(instructions, keyword)
    try:
        value = json.loads(args)
    except json.JSONDecodeError:
        pytest.fail(f"Containerfile {keyword} must use the JSON exec form, not {args!r}")
    assert isinstance(value, list), args
    assert all(isinstance(v, str) for v in value), args
    return value


def _systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.skip("systemd-analyze not on PATH (Debian: apt-get install systemd)")
    return path


def _unit_copy_for_verify(tmp_path: Path, extra_service_lines: str = "") -> Path:
    """Copy of the unit with an ExecStart binary that exists here (not twistd)."""
    true_bin = shutil.which("true") or "/bin/true"
    text = UNIT_FILE.read_text()
    text, count = re.subn(r"(?m)^ExecStart=\S+", f"ExecStart={true_bin}", text)
    assert count == 1, "expected one ExecStart= line"
    if extra_service_lines:
        text = text.replace("[Service]\n", f"[Service]\n{extra_service_lines}", 1)
    copy_path = tmp_path / UNIT_FILE.name
    copy_path.write_text(text)
    return copy_path


_SYSTEMD_ENV = {
    "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
    "SYSTEMD_LOG_COLOR": "0",
    "LANG": "C",
}


def _run_analyze(analyze: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [analyze, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=_SYSTEMD_ENV,
        check=False,
    )


def _run_verify(analyze: str, unit: Path) -> subprocess.CompletedProcess[str]:
    return _run_analyze(analyze, "verify", "--man=no", str(unit))


# ----------------------------------------------------------- Kubernetes manifests


def test_manifest_directory_is_complete() -> None:
    assert set(MANIFEST_FILES) == {
        "serviceaccount.yaml",
        "clusterrole.yaml",
        "clusterrolebinding.yaml",
        "deployment.yaml",
        "service.yaml",
    }
    # the cluster's ConfigMap coredns is used as it is: nothing here may create or replace it
    assert all(_load_manifest(n)["kind"] != "ConfigMap" for n in MANIFEST_FILES)
    assert sorted(p.name for p in YAML_DIR.iterdir()) == ["configmap.yaml", "deployment-patch.yaml", KUSTOMIZATION]


def test_kustomization_lists_every_manifest() -> None:
    docs = _load_yaml_docs((K8S_DIR / KUSTOMIZATION).read_text())
    assert len(docs) == 1
    kustomization = docs[0]
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"
    resources = kustomization["resources"]
    assert len(resources) == len(set(resources)), f"duplicate resources: {resources}"
    assert sorted(resources) == MANIFEST_FILES


@pytest.mark.parametrize("name", [*MANIFEST_FILES, KUSTOMIZATION])
def test_manifest_has_comment_header(name: str) -> None:
    first_line = (K8S_DIR / name).read_text().splitlines()[0]
    assert first_line.startswith("# "), f"{name} must start with a comment header"


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("name", MANIFEST_FILES)
def test_manifest_validates_against_openapi_schema(name: str, version: str) -> None:
    manifest = _load_manifest(name)
    try:
        validated = kubernetes_validate.validate(manifest, version, strict=True)
    except kubernetes_validate.ValidationError as err:
        path = ".".join(str(p) for p in err.path)
        pytest.fail(f"{name} is invalid for Kubernetes {version} at {path or '<root>'}: {err.message}")
    except kubernetes_validate.SchemaNotFoundError as err:
        pytest.fail(f"{name}: {err.message}")
    assert validated == version


def _add_unknown_field(deployment: Obj) -> None:
    deployment["spec"]["replica"] = 2  # typo of "replicas": strict mode rejects it


def _mistype_port(deployment: Obj) -> None:
    _container(deployment)["ports"][0]["containerPort"] = "fifty-three"


def _drop_selector(deployment: Obj) -> None:
    del deployment["spec"]["selector"]  # required field


@pytest.mark.parametrize(
    "mutate",
    [_add_unknown_field, _mistype_port, _drop_selector],
    ids=["unknown-field", "wrong-type", "missing-required"],
)
def test_schema_validation_catches_broken_deployment(
    mutate: Callable[[Obj], None],
) -> None:
    """Negative control: the schema check really rejects broken objects."""
    broken = copy.deepcopy(_by_kind("Deployment"))
    mutate(broken)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[0], strict=True)


def test_manifests_reject_duplicate_yaml_keys() -> None:
    """Negative control for the loader used on every manifest."""
    with pytest.raises(yaml.constructor.ConstructorError, match="duplicate key"):
        _load_yaml_docs("a: 1\nb: 2\na: 3\n")


@pytest.mark.parametrize("name", MANIFEST_FILES)
def test_namespaced_objects_live_in_kube_system(name: str) -> None:
    manifest = _load_manifest(name)
    if manifest["kind"] in {"ClusterRole", "ClusterRoleBinding"}:
        assert "namespace" not in manifest["metadata"], f"{name}: cluster-scoped object has a namespace"
    else:
        assert manifest["metadata"].get("namespace") == "kube-system", name


def test_serviceaccount() -> None:
    sa = _by_kind("ServiceAccount")
    assert sa["metadata"]["name"] == "kubedns"
    assert sa["metadata"]["namespace"] == "kube-system"


def test_clusterrole_is_read_only_on_exactly_the_dns_resources() -> None:
    role = _by_kind("ClusterRole")
    assert role["metadata"]["name"] == "system:kubedns"
    assert "aggregationRule" not in role
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        assert set(rule) == {"apiGroups", "resources", "verbs"}, (
            f"unexpected rule fields (resourceNames/nonResourceURLs?): {sorted(rule)}"
        )
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    read_only = {"list", "watch", "get"}
    assert granted == {
        ("", "services"): read_only,
        ("", "namespaces"): read_only,
        ("", "pods"): read_only,
        ("discovery.k8s.io", "endpointslices"): read_only,
    }


def test_clusterrolebinding_binds_the_role_to_the_serviceaccount() -> None:
    binding = _by_kind("ClusterRoleBinding")
    role = _by_kind("ClusterRole")
    sa = _by_kind("ServiceAccount")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": sa["metadata"]["name"],
            "namespace": sa["metadata"]["namespace"],
        }
    ]


def test_deployment_metadata_scheduling_and_rollout() -> None:
    deployment = _by_kind("Deployment")
    assert deployment["metadata"]["name"] == "kubedns"
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    assert spec["replicas"] == 2
    assert spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 1},
    }
    assert spec["selector"] == {"matchLabels": DNS_POD_LABELS}
    labels = spec["template"]["metadata"]["labels"]
    assert labels.items() >= DNS_POD_LABELS.items()
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert pod["serviceAccountName"] == _by_kind("ServiceAccount")["metadata"]["name"]
    assert pod["dnsPolicy"] == "Default"
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    tolerations = pod["tolerations"]
    assert {"key": "CriticalAddonsOnly", "operator": "Exists"} in tolerations
    assert {
        "key": "node-role.kubernetes.io/control-plane",
        "effect": "NoSchedule",
    } in tolerations
    anti = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert len(anti) == 1
    term = anti[0]["podAffinityTerm"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchExpressions"] == [{"key": "k8s-app", "operator": "In", "values": ["kube-dns"]}]


def test_deployment_container_image_args_ports_and_resources() -> None:
    container = _container(_by_kind("Deployment"))
    assert container["image"] == "kubedns:latest"
    assert container["args"] == ["--config", "/etc/coredns/Corefile"]
    ports = {(p["name"], p["containerPort"], p["protocol"]) for p in container["ports"]}
    assert ports == {
        ("dns", 53, "UDP"),
        ("dns-tcp", 53, "TCP"),
        ("metrics", 9153, "TCP"),
    }
    assert container["resources"] == {
        "requests": {"cpu": "100m", "memory": "70Mi"},
        "limits": {"memory": "170Mi"},
    }


def _cluster_corefile_server() -> Obj:
    """conf/Corefile (kubeadm's) as the YAML-shaped block kubedns maps it to."""
    from kubedns.corefile import parse_corefile
    from kubedns.corefile.mapping import map_corefile

    data, _ = map_corefile(parse_corefile(str(CONF_COREFILE)))
    (server,) = data["servers"]
    server_obj: Obj = server
    return server_obj


@pytest.mark.parametrize("config", ["Corefile", "yaml-config"])
def test_deployment_probes_match_corefile(config: str) -> None:
    container = _container(_by_kind("Deployment"))
    server = _cluster_corefile_server() if config == "Corefile" else _corefile()["servers"][0]
    liveness = container["livenessProbe"]
    assert liveness["httpGet"]["path"] == "/health"
    assert liveness["httpGet"]["port"] == 8080 == _port_of(server["health"]["listen"])
    assert liveness["initialDelaySeconds"] == 60
    assert liveness["timeoutSeconds"] == 5
    assert liveness["failureThreshold"] == 5
    readiness = container["readinessProbe"]
    assert readiness["httpGet"]["path"] == "/ready"
    assert readiness["httpGet"]["port"] == 8181 == _port_of(server["ready"])
    metrics = next(p for p in container["ports"] if p["name"] == "metrics")
    assert metrics["containerPort"] == _port_of(server["prometheus"])
    dns_ports = {p["containerPort"] for p in container["ports"] if p["name"].startswith("dns")}
    assert dns_ports == {_port_of(server["listen"])}


def test_deployment_security_context() -> None:
    deployment = _by_kind("Deployment")
    container = _container(deployment)
    sc = container["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["runAsUser"] == CONTAINER_UID
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "privileged" not in sc or sc["privileged"] is False
    pod = deployment["spec"]["template"]["spec"]
    for forbidden in ("hostNetwork", "hostPID", "hostIPC"):
        assert not pod.get(forbidden), f"pod must not set {forbidden}"


def _mounted_config(deployment: Obj) -> tuple[Path, Obj]:
    """The ``--config`` path and the volume mounted at its folder."""
    container = _container(deployment)
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    config_path = Path(container["args"][container["args"].index("--config") + 1])
    mounts = [m for m in container["volumeMounts"] if Path(m["mountPath"]) == config_path.parent]
    assert len(mounts) == 1, f"nothing mounted at {config_path.parent}"
    assert mounts[0]["readOnly"] is True
    return config_path, volumes[mounts[0]["name"]]


def test_deployment_mounts_the_clusters_corefile_where_args_point() -> None:
    """The ConfigMap coredns as kubeadm, EKS, AKS and k3s write it, every key (the Corefile,
    k3s's NodeHosts), at CoreDNS's path; coredns-custom (AKS, k3s) at custom/ if there is one."""
    deployment = _by_kind("Deployment")
    config_path, volume = _mounted_config(deployment)
    assert config_path == Path("/etc/coredns/Corefile")
    assert volume["configMap"] == {"name": "coredns"}  # no items: NodeHosts comes along
    container = _container(deployment)
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    (custom,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/etc/coredns/custom"]
    assert volumes[custom["name"]]["configMap"] == {"name": "coredns-custom", "optional": True}


def _render_yaml_overlay() -> list[Obj]:
    """conf/kubernetes/yaml-config as kustomize renders it: the parent's objects, the ConfigMap,
    and the Deployment patched (strategic merge: containers and volumes merge by name)."""
    kustomization = _load_yaml_docs((YAML_DIR / KUSTOMIZATION).read_text())[0]
    assert kustomization["resources"] == ["..", "configmap.yaml"]
    assert kustomization["patches"] == [{"path": "deployment-patch.yaml"}]
    patch = _load_yaml_docs((YAML_DIR / "deployment-patch.yaml").read_text())[0]
    deployment = copy.deepcopy(_by_kind("Deployment"))
    assert patch["metadata"] == {k: deployment["metadata"][k] for k in ("name", "namespace")}

    def merge(items: list[Obj], changes: list[Obj]) -> list[Obj]:
        by_name = {i["name"]: i for i in items}
        for ch in changes:
            if ch.get("$patch") == "delete":
                assert ch["name"] in by_name, f"the patch deletes {ch['name']}, which is not there"
                del by_name[ch["name"]]
            elif ch["name"] in by_name:
                by_name[ch["name"]].update({k: v for k, v in ch.items() if k != "volumeMounts"})
                if "volumeMounts" in ch:
                    by_name[ch["name"]]["volumeMounts"] = merge(by_name[ch["name"]]["volumeMounts"], ch["volumeMounts"])
            else:
                by_name[ch["name"]] = ch
        return list(by_name.values())

    pod, pod_patch = deployment["spec"]["template"]["spec"], patch["spec"]["template"]["spec"]
    assert set(pod_patch) == {"containers", "volumes"}
    pod["containers"] = merge(pod["containers"], pod_patch["containers"])
    pod["volumes"] = merge(pod["volumes"], pod_patch["volumes"])
    others = [_load_manifest(n) for n in MANIFEST_FILES if _load_manifest(n)["kind"] != "Deployment"]
    return [*others, _yaml_configmap(), deployment]


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_yaml_overlay_renders_valid_objects(version: str) -> None:
    for obj in _render_yaml_overlay():
        kubernetes_validate.validate(obj, version, strict=True)


def test_yaml_overlay_mounts_its_configmap_where_args_point() -> None:
    objs = _render_yaml_overlay()
    (deployment,) = [o for o in objs if o["kind"] == "Deployment"]
    (configmap,) = [o for o in objs if o["kind"] == "ConfigMap"]
    config_path, volume = _mounted_config(deployment)
    assert volume["configMap"]["name"] == configmap["metadata"]["name"] == "kubedns"
    assert volume["configMap"]["items"] == [{"key": "corefile.yaml", "path": config_path.name}]
    # the ConfigMap coredns is not needed any more: a cluster without CoreDNS can run this
    names = {v["configMap"]["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert "coredns" not in names and names["coredns-custom"]["configMap"]["optional"] is True


def test_conf_corefile_is_kubeadms_default_byte_for_byte() -> None:
    text = CONF_COREFILE.read_text()
    comment = [line for line in text.splitlines(keepends=True) if line.startswith("#")]
    assert comment and text.startswith("".join(comment)), "the comment comes first"
    assert text[len("".join(comment)):] == KUBEADM_COREFILE
    assert (REPO / "tests" / "corefiles" / "real" / "kubeadm" / "Corefile").read_text() == KUBEADM_COREFILE


def test_yaml_configmap_and_corefile_are_one_config(tmp_path: Path) -> None:
    """The two ways to deploy give the same config objects (resolv.conf pointed at a test file,
    since the files are read, and nothing is sent anywhere)."""
    from kubedns.config import load

    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.53\n")
    core = tmp_path / "Corefile"
    core.write_text(CONF_COREFILE.read_text().replace("/etc/resolv.conf", str(resolv)))
    yml = tmp_path / "corefile.yaml"
    yml.write_text(_yaml_configmap()["data"]["corefile.yaml"].replace("/etc/resolv.conf", str(resolv)))
    a, b = load(str(core)), load(str(yml))
    assert a.servers == b.servers and (a.workers, a.tcp_idle_timeout) == (b.workers, b.tcp_idle_timeout)
    assert a.servers[0].loadbalance is not None and a.servers[0].cache.disable_success == ("cluster.local",)


def test_service() -> None:
    service = _by_kind("Service")
    deployment = _by_kind("Deployment")
    assert service["metadata"]["name"] == "kube-dns"
    assert service["metadata"]["labels"]["k8s-app"] == "kube-dns"
    assert service["metadata"]["annotations"] == {
        "prometheus.io/port": "9153",
        "prometheus.io/scrape": "true",
    }
    spec = service["spec"]
    assert spec["clusterIP"] == "10.96.0.10"
    assert spec["selector"] == DNS_POD_LABELS
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pod_labels.items() >= spec["selector"].items(), "Service selector does not match the pods"
    ports = {(p["name"], p["port"], p["protocol"]) for p in spec["ports"]}
    assert ports == {
        ("dns", 53, "UDP"),
        ("dns-tcp", 53, "TCP"),
        ("metrics", 9153, "TCP"),
    }
    container_ports = {(p["containerPort"], p["protocol"]) for p in _container(deployment)["ports"]}
    for port in spec["ports"]:
        target = port.get("targetPort", port["port"])
        assert (target, port["protocol"]) in container_ports, f"Service port {port['name']} targets nothing"


def test_configmap_corefile() -> None:
    configmap = _yaml_configmap()
    assert configmap["metadata"]["name"] == "kubedns"
    corefile = _corefile()
    assert set(corefile) == {"servers"}
    assert len(corefile["servers"]) == 1
    server = corefile["servers"][0]
    assert set(server) == {
        "zones", "listen", "errors", "health", "ready", "kubernetes",
        "prometheus", "forward", "cache", "loop", "reload", "loadbalance",
    }  # fmt: skip
    assert server["zones"] == ["."]
    assert server["listen"] == ":53"
    assert server["health"] == {"listen": ":8080", "lameduck": "5s"}
    assert server["ready"] == ":8181"
    assert server["prometheus"] == ":9153"
    kubernetes = server["kubernetes"]
    assert "cluster.local" in kubernetes["zones"]
    assert kubernetes == {
        "zones": ["cluster.local", "in-addr.arpa", "ip6.arpa"],
        "pods": "insecure",
        "ttl": 30,
        "fallthrough": ["in-addr.arpa", "ip6.arpa"],
    }
    assert server["forward"] == {"to": ["/etc/resolv.conf"], "max_concurrent": 1000}
    assert server["cache"] == {"ttl": 30, "disable": {"success": ["cluster.local"], "denial": ["cluster.local"]}}
    assert server["loadbalance"] == "round_robin"
    assert server["errors"] == {}
    assert server["loop"] == {}
    assert server["reload"] == {"interval": "30s"}


# ------------------------------------------------------------------- systemd unit


@pytest.fixture(scope="module")
def unit() -> configparser.RawConfigParser:
    return _parse_unit(UNIT_FILE.read_text())


def test_unit_parser_accumulates_repeated_keys() -> None:
    """Negative control for the parser: repeated keys must not be lost."""
    parsed = _parse_unit("[Service]\nA=1\nB=x\nA=2\n")
    assert parsed.get("Service", "A").split("\n") == ["1", "2"]
    assert parsed.get("Service", "B") == "x"


def test_unit_sections(unit: configparser.RawConfigParser) -> None:
    assert unit.sections() == ["Unit", "Service", "Install"]


def test_unit_ordering_and_install(unit: configparser.RawConfigParser) -> None:
    assert "network-online.target" in _unit_value(unit, "Unit", "After").split()
    assert "network-online.target" in _unit_value(unit, "Unit", "Wants").split()
    assert _unit_value(unit, "Install", "WantedBy") == "multi-user.target"


def test_unit_exec_lines(unit: configparser.RawConfigParser) -> None:
    argv = _unit_value(unit, "Service", "ExecStart").split()
    assert argv[0] == f"{UNIT_VENV}/bin/twistd", "ExecStart must use the twistd of the venv the install steps make"
    assert argv[1:] == EXPECTED_UNIT_EXECSTART_ARGS
    config = Path(argv[-1])
    assert config.parent == Path("/etc") / _unit_value(unit, "Service", "ConfigurationDirectory")
    assert _unit_value(unit, "Service", "ExecReload") == "/bin/kill -HUP $MAINPID"
    assert _unit_value(unit, "Service", "KillSignal") == "SIGTERM"
    assert _unit_value(unit, "Service", "Restart") == "on-failure"
    assert _seconds(_unit_value(unit, "Service", "RestartSec")) > 0
    assert "PYTHONUNBUFFERED=1" in _unit_value(unit, "Service", "Environment").split()


def test_unit_stop_timeout_exceeds_lameduck(unit: configparser.RawConfigParser) -> None:
    lameduck = _seconds(_corefile()["servers"][0]["health"]["lameduck"])
    assert lameduck == 5
    timeout = _seconds(_unit_value(unit, "Service", "TimeoutStopSec"))
    assert timeout > lameduck, f"TimeoutStopSec={timeout}s would SIGKILL during the {lameduck}s lameduck"


def test_unit_time_span_parser() -> None:
    assert _seconds("20s") == 20
    assert _seconds("1min 30s") == 90
    assert _seconds("1m30s") == 90
    assert _seconds("15") == 15
    assert _seconds("500ms") == 0.5


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("DynamicUser", "yes"),
        ("ConfigurationDirectory", "kubedns"),
        ("AmbientCapabilities", "CAP_NET_BIND_SERVICE"),
        ("CapabilityBoundingSet", "CAP_NET_BIND_SERVICE"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("ProtectControlGroups", "yes"),
        ("RestrictNamespaces", "yes"),
        ("LockPersonality", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("SystemCallArchitectures", "native"),
    ],
)
def test_unit_hardening(unit: configparser.RawConfigParser, key: str, expected: str) -> None:
    assert _unit_value(unit, "Service", key) == expected


def test_unit_address_families(unit: configparser.RawConfigParser) -> None:
    families = _unit_value(unit, "Service", "RestrictAddressFamilies").split()
    assert sorted(families) == sorted(["AF_INET", "AF_INET6", "AF_UNIX", "AF_NETLINK"])


def test_unit_system_call_filter(unit: configparser.RawConfigParser) -> None:
    filters = _unit_values(unit, "Service", "SystemCallFilter")
    assert filters[0] == "@system-service", "the first filter line must be the @system-service allow-list"
    assert all(f.startswith("~") for f in filters[1:]), "later lines may only remove calls"


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = _systemd_analyze()
    result = _run_verify(analyze, _unit_copy_for_verify(tmp_path))
    about_unit = [line for line in result.stderr.splitlines() if UNIT_FILE.name in line]
    assert not about_unit, "systemd-analyze verify complained:\n" + "\n".join(about_unit)
    assert result.returncode == 0, result.stderr


def test_systemd_analyze_verify_detects_bad_keys(tmp_path: Path) -> None:
    """Negative control: verify really reports unknown keys and bad values."""
    analyze = _systemd_analyze()
    broken = _unit_copy_for_verify(tmp_path, "NoSuchHardeningKey=yes\nProtectSystem=bogus\n")
    stderr = _run_verify(analyze, broken).stderr
    assert "Unknown key" in stderr, stderr
    assert "NoSuchHardeningKey" in stderr, stderr
    assert "bogus" in stderr, stderr


def test_systemd_analyze_security_exposure(tmp_path: Path) -> None:
    """``systemd-analyze security --offline`` exposure (0-10) stays at most 2.0."""
    analyze = _systemd_analyze()
    unit_copy = _unit_copy_for_verify(tmp_path)
    result = _run_analyze(analyze, "security", "--offline=true", "--threshold=20", str(unit_copy))
    if "--offline" in result.stderr and ("unrecognized" in result.stderr or "Unknown" in result.stderr):
        pytest.skip("this systemd-analyze has no 'security --offline' (systemd < 250)")
    level = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert level, result.stdout + result.stderr
    assert result.returncode == 0, f"exposure {level.group(1)} is above 2.0:\n{result.stdout}"


def _readme_systemd_section() -> str:
    text = README.read_text()
    start = text.index("### As a systemd unit on a node")
    end = text.index("\n#", start + 1)
    return text[start:end]


def _readme_systemd_steps() -> list[str]:
    match = re.search(r"```sh\n(.*?)```", _readme_systemd_section(), re.S)
    assert match, "no sh block in the README's systemd section"
    return shell_commands(match.group(1).splitlines())


def _placeholder(arg: str) -> bool:
    """``KUBECONFIG-FILE``: a file the operator supplies."""
    return re.fullmatch(r"[A-Z][A-Z-]*", arg) is not None


def _install_step(steps: list[str], destination: str) -> list[str]:
    found = [shlex.split(step) for step in steps if step.startswith("install ") and step.endswith(" " + destination)]
    assert len(found) == 1, f"expected one install step to {destination} in {steps}"
    return found[0]


def _mode(argv: list[str]) -> int:
    return int(argv[argv.index("-m") + 1], 8)


PREBUILD_PLUGIN_CACHE = "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"


def test_unit_install_steps_are_the_readmes() -> None:
    """The unit's comment and the README tell the operator the same commands, in the same order."""
    unit_steps = unit_install_steps()
    readme_steps = _readme_systemd_steps()
    assert len(unit_steps) >= 8, unit_steps
    assert readme_steps[: len(unit_steps)] == unit_steps


def test_unit_install_steps_use_a_venv_and_prebuild_the_plugin_cache(unit: configparser.RawConfigParser) -> None:
    """pip goes into a venv (a stock Debian python3 is externally managed), its twistd is the
    unit's ExecStart, and the plugin cache is built by that venv's python after pip."""
    steps = unit_install_steps()
    venv = f"python3 -m venv {UNIT_VENV}"
    pip = f"{UNIT_VENV}/bin/pip install ."
    cache = f"{UNIT_VENV}/bin/python -c {shlex.quote(PREBUILD_PLUGIN_CACHE)}"
    for step in (venv, pip, cache):
        assert step in steps, f"{step!r} missing from {steps}"
    assert steps.index(venv) < steps.index(pip) < steps.index(cache)
    assert not any(s.startswith(("pip ", "python -c", "python3 -m pip")) for s in steps), "pip outside the venv"
    assert _unit_value(unit, "Service", "ExecStart").split()[0] == f"{UNIT_VENV}/bin/twistd"


def test_unit_install_steps_name_files_that_exist(unit: configparser.RawConfigParser) -> None:
    steps = unit_install_steps()
    for step in (s for s in steps if s.startswith("install ")):
        argv = shlex.split(step)
        sources = [a for i, a in enumerate(argv[1:-1], 1) if not a.startswith("-") and argv[i - 1] not in ("-m", "-o", "-g")]
        assert sources, step
        for source in sources:
            assert _placeholder(source) or (REPO / source).is_file(), f"{step}: no {source} in the repository"
    config = _unit_value(unit, "Service", "ExecStart").split()[-1]
    assert _install_step(steps, config)[-2] == "conf/corefile.yaml"
    assert _install_step(steps, f"/etc/systemd/system/{UNIT_FILE.name}")[-2] == "conf/kubedns.service"


def test_unit_kubeconfig_is_readable_by_the_service_group_only(unit: configparser.RawConfigParser) -> None:
    """The kubeconfig holds credentials: root:kubedns 0640, and the unit's dynamic user gets
    the kubedns group (the group is made before the unit starts)."""
    group = _unit_value(unit, "Service", "SupplementaryGroups")
    assert group == "kubedns"
    assert _unit_value(unit, "Service", "DynamicUser") == "yes"
    steps = unit_install_steps()
    argv = _install_step(steps, "/etc/kubedns/kubeconfig")
    assert _mode(argv) == 0o640
    assert _mode(argv) & 0o007 == 0, "the kubeconfig must not be world-readable"
    assert argv[argv.index("-o") + 1] == "root"
    assert argv[argv.index("-g") + 1] == group
    groupadd = f"groupadd --system {group}"
    assert groupadd in steps
    enable = next(i for i, s in enumerate(steps) if "systemctl" in s and "enable" in s)
    assert steps.index(groupadd) < steps.index(shlex.join(argv)) < enable
    for where, text in (("README", _readme_systemd_section()), (UNIT_FILE.name, UNIT_FILE.read_text())):
        for line in text.splitlines():
            if "kubedns/kubeconfig" in line:
                assert set(re.findall(r"\b0[0-7]{3}\b", line)) <= {"0640"}, f"{where}: {line}"
        assert "0640" in text and "SupplementaryGroups=kubedns" in text, where


# ------------------------------------------------------------------ Containerfile


@pytest.fixture(scope="module")
def instructions() -> list[tuple[str, str]]:
    return _containerfile_instructions()


def test_containerfile_base_image(instructions: list[tuple[str, str]]) -> None:
    assert instructions[0] == ("FROM", "python:3.11-slim")
    assert [kw for kw, _ in instructions].count("FROM") == 1


def test_containerfile_installs_and_prebuilds_plugin_cache(
    instructions: list[tuple[str, str]],
) -> None:
    """The image runs pip install, then builds the dropin cache as root."""
    script = [(i, args) for i, (kw, args) in enumerate(instructions) if kw == "RUN"]
    install = [(i, args.index("pip install")) for i, args in script if "pip install" in args]
    assert len(install) == 1, "expected one RUN with pip install"
    install_at = install[0]
    install_args = instructions[install_at[0]][1]
    assert "--no-cache-dir" in install_args
    prebuild_call = "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"
    prebuild = [(i, args.index(prebuild_call)) for i, args in script if prebuild_call in args]
    assert prebuild, "no RUN prebuilds the Twisted plugin dropin cache"
    assert prebuild[0] > install_at, "the dropin cache must be built after pip install"
    user_at = max(i for i, (kw, _) in enumerate(instructions) if kw == "USER")
    assert prebuild[0][0] < user_at, "the dropin cache must be built as root, before USER"


def test_containerfile_runs_as_non_root(instructions: list[tuple[str, str]]) -> None:
    users = [args for kw, args in instructions if kw == "USER"]
    assert users, "Containerfile has no USER: the image would run as root"
    user, _, group = users[-1].partition(":")
    assert user.isdigit(), "USER must be numeric so that runAsNonRoot can be checked by the kubelet"
    assert int(user) != 0, "USER must not be root"
    assert not group or int(group) != 0, "USER group must not be root"
    assert int(user) == CONTAINER_UID == _container(_by_kind("Deployment"))["securityContext"]["runAsUser"]


def test_containerfile_entrypoint_and_cmd(instructions: list[tuple[str, str]]) -> None:
    entrypoint = _exec_form(instructions, "ENTRYPOINT")
    assert entrypoint == ["twistd", "-n", "--pidfile=", "kubedns"]
    cmd = _exec_form(instructions, "CMD")
    deployment_args = _container(_by_kind("Deployment"))["args"]
    assert cmd == deployment_args == ["--config", "/etc/coredns/Corefile"]


def test_containerfile_exposes_every_port(instructions: list[tuple[str, str]]) -> None:
    exposed = set(_single(instructions, "EXPOSE").lower().split())
    assert exposed == {"53/udp", "53/tcp", "9153/tcp", "8080/tcp", "8181/tcp"}
    container = _container(_by_kind("Deployment"))
    for port in container["ports"]:
        assert f"{port['containerPort']}/{port['protocol'].lower()}" in exposed
    for probe in ("livenessProbe", "readinessProbe"):
        assert f"{container[probe]['httpGet']['port']}/tcp" in exposed


def test_containerfile_grants_bind_capability_to_the_interpreter(
    instructions: list[tuple[str, str]],
) -> None:
    """Non-root containers get no ambient capabilities: python needs a file cap."""
    runs = " ".join(args for kw, args in instructions if kw == "RUN")
    assert re.search(r"setcap cap_net_bind_service=\+ep\b.*python3", runs), "python lacks cap_net_bind_service"
    assert "NET_BIND_SERVICE" in _container(_by_kind("Deployment"))["securityContext"]["capabilities"]["add"]


def test_ignore_files() -> None:
    contents = [path.read_text() for path in IGNORE_FILES]
    assert contents[0] == contents[1], ".containerignore and .dockerignore differ"
    patterns = {line.strip() for line in contents[0].splitlines() if line.strip() and not line.startswith("#")}
    for required in (
        ".git",
        "**/__pycache__",
        ".pytest_cache",
        ".ruff_cache",
        ".mypy_cache",
        ".venv",
    ):
        assert required in patterns, f"build context does not exclude {required}"
    for needed in ("pyproject.toml", "kubedns", "twisted"):
        assert needed not in patterns, f"build context must keep {needed} for pip install"


# ----------------------------------------------------------- node-local cache (conf/kubernetes/node-local)

NODE_LOCAL_DIR = K8S_DIR / "node-local"
NODE_LOCAL_FILES = sorted(p.name for p in NODE_LOCAL_DIR.glob("*.yaml") if p.name != KUSTOMIZATION)
NODE_LOCAL_COREFILE = REPO / "conf" / "nodelocal.Corefile"
NODE_LOCAL_UNIT = REPO / "conf" / "kubedns-nodelocal.service"


def _node_local(kind: str) -> list[Obj]:
    return [d for n in NODE_LOCAL_FILES for d in _load_yaml_docs((NODE_LOCAL_DIR / n).read_text()) if d["kind"] == kind]


def test_node_local_kustomization_lists_every_manifest() -> None:
    (kustomization,) = _load_yaml_docs((NODE_LOCAL_DIR / KUSTOMIZATION).read_text())
    assert kustomization["kind"] == "Kustomization"
    assert sorted(kustomization["resources"]) == NODE_LOCAL_FILES
    for name in NODE_LOCAL_FILES:
        assert (NODE_LOCAL_DIR / name).read_text().startswith("# "), f"{name}: no comment header"


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("name", NODE_LOCAL_FILES)
def test_node_local_manifest_validates_against_openapi_schema(name: str, version: str) -> None:
    for doc in _load_yaml_docs((NODE_LOCAL_DIR / name).read_text()):
        assert doc["metadata"]["namespace"] == "kube-system"
        kubernetes_validate.validate(doc, version, strict=True)


def test_node_local_configmap_is_conf_nodelocal_corefile(monkeypatch: pytest.MonkeyPatch) -> None:
    from kubedns.config import load
    from kubedns.node.nodelocal import plan

    (cm,) = _node_local("ConfigMap")
    assert cm["data"]["Corefile"] == NODE_LOCAL_COREFILE.read_text()
    monkeypatch.setenv("KUBE_DNS_UPSTREAM_SERVICE_HOST", "10.96.0.10")
    config = load(str(NODE_LOCAL_COREFILE))
    assert plan(config).ips == ("169.254.20.10",)
    by_zone = {z: server for server in config.servers for z in server.zones}
    for zone in ("cluster.local", "in-addr.arpa", "ip6.arpa"):  # over TCP to the cluster DNS Service
        fwd = by_zone[zone].forward
        assert fwd is not None and fwd.force_tcp, zone
    root = by_zone[""].forward  # the root zone "."
    assert root is not None and not root.force_tcp  # the rest: the node's resolv.conf


def test_node_local_daemonset() -> None:
    (ds,) = _node_local("DaemonSet")
    spec = ds["spec"]["template"]["spec"]
    assert spec["hostNetwork"] is True and spec["dnsPolicy"] == "Default"
    (container,) = spec["containers"]
    assert "--node-local" in container["args"]
    assert "NET_ADMIN" in container["securityContext"]["capabilities"]["add"]
    # the config it runs is the ConfigMap's Corefile, mounted where --config points
    config_path = Path(container["args"][container["args"].index("--config") + 1])
    (mount,) = [m for m in container["volumeMounts"] if Path(m["mountPath"]) == config_path.parent]
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    (cm,) = _node_local("ConfigMap")
    assert volume["configMap"]["name"] == cm["metadata"]["name"]
    assert volume["configMap"]["items"] == [{"key": "Corefile", "path": config_path.name}]
    assert container["livenessProbe"]["httpGet"]["host"] == "169.254.20.10"
    # the Services: kube-dns-upstream in front of the cluster DNS (KUBE_DNS_UPSTREAM_SERVICE_HOST
    # in the Corefile) and a headless one for the metrics on every node
    services = {s["metadata"]["name"]: s for s in _node_local("Service")}
    assert services["kube-dns-upstream"]["spec"]["selector"] == {"k8s-app": "kube-dns"}
    assert "{$KUBE_DNS_UPSTREAM_SERVICE_HOST}" in NODE_LOCAL_COREFILE.read_text()
    metrics = services["kubedns-node-local"]["spec"]
    assert metrics["clusterIP"] == "None"
    assert metrics["selector"] == ds["spec"]["selector"]["matchLabels"]
    assert [p["port"] for p in metrics["ports"]] == [9253]


def test_node_local_unit_verifies(tmp_path: Path) -> None:
    unit = _parse_unit(NODE_LOCAL_UNIT.read_text())
    exec_start = shlex.split(_unit_value(unit, "Service", "ExecStart"))
    assert exec_start[-1] == "--node-local"
    assert "CAP_NET_ADMIN" in _unit_value(unit, "Service", "CapabilityBoundingSet")
    assert "AF_NETLINK" in _unit_value(unit, "Service", "RestrictAddressFamilies")
    assert "PrivateNetwork" not in unit["Service"]
    analyze = _systemd_analyze()
    true_bin = shutil.which("true") or "/bin/true"
    copy_path = tmp_path / NODE_LOCAL_UNIT.name
    copy_path.write_text(re.sub(r"(?m)^ExecStart=\S+", f"ExecStart={true_bin}", NODE_LOCAL_UNIT.read_text()))
    result = _run_verify(analyze, copy_path)
    assert result.returncode == 0, result.stdout + result.stderr
