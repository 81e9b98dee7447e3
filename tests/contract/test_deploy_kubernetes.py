"""deploy/kubernetes: manifests parse, kustomize builds, the DaemonSet is least-privilege, generated files are fresh."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import ROOT, script_module

KUBE = ROOT / "deploy" / "kubernetes"
NAME = "accel-cost-exporter"


generate = script_module("kube_generate", KUBE / "generate.py")


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def manifest(kind: str) -> dict[str, Any]:
    found = [doc for path in sorted(KUBE.glob("*.yaml")) for doc in documents(path) if doc.get("kind") == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


@pytest.fixture(scope="module")
def daemonset() -> dict[str, Any]:
    return manifest("DaemonSet")


@pytest.fixture(scope="module")
def pod(daemonset: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = daemonset["spec"]["template"]["spec"]
    return spec


@pytest.fixture(scope="module")
def container(pod: dict[str, Any]) -> dict[str, Any]:
    (only,) = pod["containers"]
    result: dict[str, Any] = only
    return result


def test_every_manifest_parses_and_kustomization_lists_them() -> None:
    files = sorted(KUBE.rglob("*.yaml"))
    assert len(files) >= 9
    for path in files:
        documents(path)
    kustomization = yaml.safe_load((KUBE / "kustomization.yaml").read_text())
    assert kustomization["namespace"] == NAME
    listed = set(kustomization["resources"])
    on_disk = {path.name for path in KUBE.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk


def test_no_servicemonitor_next_to_the_podmonitor() -> None:
    kinds = [doc.get("kind") for path in KUBE.rglob("*.yaml") for doc in documents(path)]
    assert "ServiceMonitor" not in kinds
    assert kinds.count("PodMonitor") == 1


def test_scheduling(pod: dict[str, Any]) -> None:
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    expressions = {(e["key"], e["operator"], tuple(e["values"])) for term in terms for e in term["matchExpressions"]}
    assert ("nvidia.com/gpu.present", "In", ("true",)) in expressions
    assert ("neuron.amazonaws.com/present", "In", ("true",)) in expressions
    assert all(len(term["matchExpressions"]) == 1 for term in terms)  # one per term: ORed
    tolerations = {(t["key"], t["operator"], t["effect"]) for t in pod["tolerations"]}
    assert tolerations == {
        ("nvidia.com/gpu", "Exists", "NoSchedule"),
        ("aws.amazon.com/neuron", "Exists", "NoSchedule"),
    }
    assert pod["priorityClassName"] == "system-node-critical"
    assert pod["hostPID"] is True
    assert pod["automountServiceAccountToken"] is False
    assert "runtimeClassName" not in pod  # opt-in through the component


def test_gpu_access_without_requesting_a_gpu(container: dict[str, Any]) -> None:
    env = {e["name"]: e for e in container["env"]}
    assert env["NVIDIA_VISIBLE_DEVICES"]["value"] == "all"
    assert env["NVIDIA_DRIVER_CAPABILITIES"]["value"] == "utility"
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    for section in ("requests", "limits"):
        assert not any(key.startswith(("nvidia.com/", "aws.amazon.com/")) for key in container["resources"][section])


def test_resources_and_probes(container: dict[str, Any]) -> None:
    assert container["resources"] == {
        "requests": {"cpu": "100m", "memory": "128Mi"},
        "limits": {"cpu": "200m", "memory": "256Mi"},
    }
    assert container["ports"] == [{"name": "metrics", "containerPort": 11094, "protocol": "TCP"}]
    liveness, readiness = container["livenessProbe"], container["readinessProbe"]
    assert liveness["httpGet"] == {"path": "/-/healthy", "port": "metrics"}
    assert readiness["httpGet"] == {"path": "/-/ready", "port": "metrics"}
    # Slow first NVML init: liveness must not kill the pod before it could have started.
    assert liveness["initialDelaySeconds"] + liveness["periodSeconds"] * liveness["failureThreshold"] >= 120
    assert readiness["initialDelaySeconds"] >= 5


def test_container_security(container: dict[str, Any], pod: dict[str, Any]) -> None:
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert "add" not in security["capabilities"]
    assert security.get("privileged", False) is False
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"


def test_volumes(container: dict[str, Any], pod: dict[str, Any]) -> None:
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert set(volumes) == set(mounts)
    assert volumes["pod-resources"]["hostPath"]["path"] == "/var/lib/kubelet/pod-resources"
    for name, volume in volumes.items():
        if "hostPath" in volume and name != "state":
            assert mounts[name]["readOnly"] is True, f"hostPath {name} must be read-only"
    # The state directory outlives the pod, so the idle clock survives rollouts: a node directory of
    # its own, created if missing, and the only writable hostPath.
    assert volumes["state"]["hostPath"] == {"path": "/var/lib/accel-cost-exporter", "type": "DirectoryOrCreate"}
    assert not mounts["state"].get("readOnly", False)
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert mounts["state"]["mountPath"] == env["STATE_DIRECTORY"]


def test_service_and_podmonitor_use_the_metrics_port(container: dict[str, Any]) -> None:
    service = manifest("Service")
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    podmonitor = manifest("PodMonitor")
    (endpoint,) = podmonitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == container["ports"][0]["name"]
    assert endpoint["path"] == "/metrics"
    labels = manifest("DaemonSet")["spec"]["template"]["metadata"]["labels"]
    for selector in (podmonitor["spec"]["selector"]["matchLabels"], service["spec"]["selector"]):
        assert selector.items() <= labels.items()
    assert manifest("ServiceAccount")["automountServiceAccountToken"] is False


def test_generated_files_match_their_sources() -> None:
    for name, text in generate.render().items():
        on_disk = (KUBE / name).read_text()
        assert on_disk == text, f"deploy/kubernetes/{name} is stale: run python deploy/kubernetes/generate.py"
    assert generate.main(["--check"]) == 0


def test_prometheusrule_carries_every_rule_group() -> None:
    rule = manifest("PrometheusRule")
    expected = []
    for path in generate.rule_files():
        expected.extend(yaml.safe_load(path.read_text())["groups"])
    assert rule["spec"]["groups"] == expected
    if (ROOT / "alerts" / "accel-cost.rules.yml").exists():
        assert rule["spec"]["groups"][0]["name"] == "accel-cost.rules"  # recording rules first


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_prometheusrule_groups_pass_promtool(tmp_path: Path) -> None:
    groups = manifest("PrometheusRule")["spec"]["groups"]
    if not groups:
        pytest.skip("no rule files in alerts/ yet")
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump({"groups": groups}))
    result = subprocess.run(
        ["promtool", "check", "rules", str(rules)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_configmaps_hold_each_dashboard_verbatim() -> None:
    configmaps = [doc for doc in documents(KUBE / "dashboards.yaml") if doc.get("kind") == "ConfigMap"]
    sources = sorted((ROOT / "grafana").glob("*.json"))
    assert len(configmaps) == len(sources)
    for configmap, source in zip(configmaps, sources, strict=True):
        assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert configmap["data"] == {source.name: source.read_text()}


def test_generator_picks_up_whatever_exists(tmp_path: Path) -> None:
    (tmp_path / "alerts").mkdir()
    (tmp_path / "grafana").mkdir()
    (tmp_path / "alerts" / "zz-extra.yml").write_text("groups:\n  - name: extra\n    rules: []\n")
    (tmp_path / "alerts" / "accel-cost.alerts.yml").write_text(
        "groups:\n  - name: accel-cost\n    rules:\n      - alert: A\n        expr: |\n          up\n          == 0\n"
    )
    (tmp_path / "alerts" / "accel-cost.rules.yml").write_text("groups:\n  - name: accel-cost.rules\n    rules: []\n")
    (tmp_path / "alerts" / "alertmanager.example.yml").write_text("route: {receiver: x}\nreceivers: [{name: x}]\n")
    (tmp_path / "alerts" / "tests.yml").write_text("rule_files: [a.yml]\ngroups: []\ntests: []\n")
    (tmp_path / "grafana" / "Fleet Overview.json").write_text('{"uid": "fleet", "panels": []}\n')
    (tmp_path / "grafana" / "host.json").write_text('{"uid": "host"}\n')

    rendered = generate.render(tmp_path)
    rule = yaml.safe_load(rendered["prometheusrule.yaml"])
    assert [g["name"] for g in rule["spec"]["groups"]] == ["accel-cost.rules", "accel-cost", "extra"]
    assert rule["spec"]["groups"][1]["rules"][0]["expr"] == "up\n== 0\n"
    assert "expr: |" in rendered["prometheusrule.yaml"]  # multi-line PromQL stays readable
    configmaps = list(yaml.safe_load_all(rendered["dashboards.yaml"]))
    assert [c["metadata"]["name"] for c in configmaps] == [
        "accel-cost-exporter-dashboard-fleet-overview",
        "accel-cost-exporter-dashboard-host",
    ]
    assert configmaps[0]["data"]["Fleet Overview.json"] == '{"uid": "fleet", "panels": []}\n'

    (tmp_path / "grafana" / "broken.json").write_text("{not json")
    with pytest.raises(ValueError):
        generate.render(tmp_path)


kubectl = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")


def kustomize(directory: Path) -> list[dict[str, Any]]:
    result = subprocess.run(
        ["kubectl", "kustomize", str(directory)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@kubectl
def test_kustomize_builds_everything_into_one_namespace() -> None:
    built = kustomize(KUBE)
    kinds = sorted(doc["kind"] for doc in built)
    dashboards = len(list((ROOT / "grafana").glob("*.json")))
    expected = ["ConfigMap"] * dashboards + ["DaemonSet", "Namespace", "PodMonitor", "PrometheusRule"]
    assert kinds == sorted([*expected, "Service", "ServiceAccount"])
    for doc in built:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == NAME, doc["kind"]
    (daemonset,) = [doc for doc in built if doc["kind"] == "DaemonSet"]
    assert daemonset["spec"]["template"]["spec"]["containers"][0]["image"].startswith("accel-cost-exporter:")


@kubectl
def test_runtimeclass_component(tmp_path: Path) -> None:
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                # kustomize wants relative paths to bases and components
                "resources": [os.path.relpath(KUBE, overlay)],
                "components": [os.path.relpath(KUBE / "components" / "runtimeclass-nvidia", overlay)],
            }
        )
    )
    (daemonset,) = [doc for doc in kustomize(overlay) if doc["kind"] == "DaemonSet"]
    assert daemonset["spec"]["template"]["spec"]["runtimeClassName"] == "nvidia"


# --- autoscaling (issue 11): the policy "out above 0.7, in below 0.4, 15-minute cooldown" ---------

AUTOSCALING = KUBE / "autoscaling"
RULES = ROOT / "alerts" / "accel-cost.rules.yml"
SCALING_INPUTS = ROOT / "tests" / "alerts" / "autoscaling.yml"
# Keys the API accepts (autoscaling/v2 HorizontalPodAutoscalerBehavior, KEDA ScaledObjectSpec):
# a typo such as `stabilisationWindowSeconds` would otherwise be dropped silently by the server.
BEHAVIOR_KEYS = {"scaleUp", "scaleDown"}
RULES_KEYS = {"stabilizationWindowSeconds", "selectPolicy", "policies"}
POLICY_KEYS = {"type", "value", "periodSeconds"}
HPA_SPEC_KEYS = {"scaleTargetRef", "minReplicas", "maxReplicas", "metrics", "behavior"}
SCALEDOBJECT_SPEC_KEYS = {
    "scaleTargetRef",
    "pollingInterval",
    "cooldownPeriod",
    "idleReplicaCount",
    "initialCooldownPeriod",
    "minReplicaCount",
    "maxReplicaCount",
    "advanced",
    "triggers",
    "fallback",
}


def scaling_band() -> tuple[float, float]:
    """(scale-in line, scale-out line = target) from the instance_type scaling rule's expression."""
    (rule,) = [
        r
        for g in yaml.safe_load(RULES.read_text())["groups"]
        for r in g["rules"]
        if r.get("record") == "instance_type:accel_scaling_utilization:rate5m"
    ]
    expr = " ".join(rule["expr"].split())
    out = re.search(r"> (\d+(?:\.\d+)?)", expr)
    in_ = re.search(r"< (\d+(?:\.\d+)?)", expr)
    hold = re.search(r"\* 0 \+ (\d+(?:\.\d+)?)", expr)
    assert out and in_ and hold, expr
    assert out.group(1) == hold.group(1), "inside the band the rule must report the target"
    return float(in_.group(1)), float(out.group(1))


def check_behavior(behavior: dict[str, Any]) -> None:
    assert set(behavior) == BEHAVIOR_KEYS
    for direction in behavior.values():
        assert set(direction) <= RULES_KEYS
        for policy in direction["policies"]:
            assert set(policy) == POLICY_KEYS and policy["type"] in {"Pods", "Percent"}
            assert policy["periodSeconds"] == 900, "15-minute cooldown"
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] == 900


def assert_promql(tmp_path: Path, expr: str, labels: str, value: float) -> None:
    """`expr` on the mixed-fleet inputs of tests/alerts/autoscaling.yml at 20m is exactly one sample."""
    inputs = yaml.safe_load(SCALING_INPUTS.read_text())["tests"][0]
    case = {
        "interval": inputs["interval"],
        "input_series": inputs["input_series"],
        "promql_expr_test": [
            {"expr": f"round({expr}, 0.0001)", "eval_time": "20m", "exp_samples": [{"labels": labels, "value": value}]}
        ],
    }
    path = tmp_path / "scaling_test.yml"
    path.write_text(yaml.safe_dump({"rule_files": [str(RULES)], "evaluation_interval": "1m", "tests": [case]}))
    result = subprocess.run(
        ["promtool", "test", "rules", str(path)], capture_output=True, text=True, timeout=900, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


@kubectl
def test_keda_scaledobject(tmp_path: Path) -> None:
    (scaled,) = kustomize(AUTOSCALING / "keda")
    assert (scaled["apiVersion"], scaled["kind"]) == ("keda.sh/v1alpha1", "ScaledObject")
    spec = scaled["spec"]
    assert set(spec) <= SCALEDOBJECT_SPEC_KEYS
    assert spec["scaleTargetRef"]["kind"] == "Deployment"
    assert 1 <= spec["minReplicaCount"] < spec["maxReplicaCount"]
    check_behavior(spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"])
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "prometheus" and trigger["metricType"] == "Value"
    _in_line, target = scaling_band()
    assert float(trigger["metadata"]["threshold"]) == target
    query = trigger["metadata"]["query"]
    assert "instance_type:accel_scaling_utilization:rate5m" in query
    if shutil.which("promtool"):
        # On a job mixing p4d at 85 %, inf2 at 5 % and g6 at 55 %, the query is one value: p4d's.
        assert_promql(tmp_path, query, "{}", 0.85)


@kubectl
def test_hpa_and_prometheus_adapter_rules(tmp_path: Path) -> None:
    built = {doc["kind"]: doc for doc in kustomize(AUTOSCALING / "hpa")}
    assert set(built) == {"HorizontalPodAutoscaler", "ConfigMap"}
    hpa = built["HorizontalPodAutoscaler"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    spec = hpa["spec"]
    assert set(spec) <= HPA_SPEC_KEYS
    assert 1 <= spec["minReplicas"] < spec["maxReplicas"]
    check_behavior(spec["behavior"])
    (metric,) = spec["metrics"]
    external = metric["external"]
    assert metric["type"] == "External" and external["target"]["type"] == "Value"
    _in_line, target = scaling_band()
    assert external["target"]["value"] == f"{round(target * 1000)}m"

    config = yaml.safe_load(built["ConfigMap"]["data"]["config.yaml"])
    rules = {rule["name"]["as"]: rule for rule in config["externalRules"]}
    rule = rules[external["metric"]["name"]]
    series = re.fullmatch(r"([\w:]+)\{.*\}", rule["seriesQuery"])
    assert series and re.fullmatch(rule["name"]["matches"], series.group(1))
    recorded = {r.get("record") for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    for r in config["externalRules"]:
        name = re.fullmatch(r"([\w:]+)\{.*\}", r["seriesQuery"])
        assert name and name.group(1) in recorded, r["seriesQuery"]
        assert r["resources"] == {"namespaced": False}
    # What the adapter runs for this HPA: the template with the series and the HPA's selector.
    matchers = ",".join(f'{k}="{v}"' for k, v in external["metric"]["selector"]["matchLabels"].items())
    query = rule["metricsQuery"].replace("<<.Series>>", series.group(1)).replace("<<.LabelMatchers>>", matchers)
    if shutil.which("promtool"):
        assert_promql(tmp_path, query, f"{{{matchers}}}", 0.85)


def test_scaling_band_is_the_documented_policy() -> None:
    assert scaling_band() == (0.4, 0.7)


def test_podmonitor_keeps_instance_across_rollouts_and_names_the_node_group() -> None:
    podmonitor = manifest("PodMonitor")
    assert podmonitor["spec"]["attachMetadata"] == {"node": True}
    (endpoint,) = podmonitor["spec"]["podMetricsEndpoints"]
    targets = {r["targetLabel"]: r["sourceLabels"] for r in endpoint["relabelings"]}
    assert targets["instance"] == ["__meta_kubernetes_pod_node_name"], "pod IPs change on every rollout"
    assert targets["node_group"] == ["__meta_kubernetes_node_label_eks_amazonaws_com_nodegroup"]
    # The alert's job selector matches <namespace>/<name> wherever the PodMonitor is applied.
    for namespace in (NAME, "monitoring", "default"):
        assert re.fullmatch("(.+/)?accel.*", f"{namespace}/{podmonitor['metadata']['name']}")
