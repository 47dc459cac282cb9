"""The deployment files: the container image's Dockerfile, the Kubernetes base and overlays
under deploy/k8s/, and the Grafana dashboard under deploy/grafana/.

- every overlay renders (`kubectl kustomize`, or, without kubectl, the same files read
  with PyYAML and merged the way kustomize merges them), and its pod keeps the contract
  the gateway and the docs rely on: probes, security context, resources, the rules
  mounted as a directory, the admin token from a Secret;
- the config and rules an overlay puts in its ConfigMaps, laid out as the pod mounts
  them, pass `fieldgate rules check` and `fieldgate validate`;
- the broker's password file comes from a Secret and its ACL from a ConfigMap, mounted
  where the config's `broker.password_file` and `broker.acl_file` say; the password files
  in configs/ hold no users, and the ACL files load;
- the overlays' rules, configs and ACLs are the ones in configs/;
- every metric the dashboard queries is one the gateway exports (CONTRACT_METRICS).
  `dashboard_metric_names()` is meant to be reused by a test that scrapes /metrics.
"""

import copy
import json
import os
import pathlib
import re
import shutil
import subprocess
import tomllib

import pytest

from conftest import ROOT, binary

try:
    import yaml
except ImportError:  # scripts/test.sh installs PyYAML
    yaml = None

K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ["factory", "smart-city"]
DASHBOARD = ROOT / "deploy" / "grafana" / "fieldgate.json"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"

NAMESPACE = "fieldgate"
CONFIG_PATH = "/etc/fieldgate/fieldgate.toml"
RULES_PATH = "/etc/fieldgate/rules"
DATA_PATH = "/var/lib/fieldgate"
RUN_ARGS = ["run", "--config", CONFIG_PATH, "--log-format", "json"]
USER_ID = 10001
# The broker's users: a Secret (not in git) with the password file under this key.
MQTT_USERS_SECRET = "fieldgate-mqtt-users"
MQTT_USERS_KEY = "passwd"

# The metrics the gateway exports on /metrics, by the name of their samples (counters
# end in _total), with their type and label names. A histogram's samples are
# <name>_bucket{le}, <name>_sum and <name>_count.
CONTRACT_METRICS = {
    "fieldgate_build_info": ("gauge", {"version"}),
    "fieldgate_ready": ("gauge", set()),
    "fieldgate_mqtt_messages_received_total": ("counter", set()),
    "fieldgate_mqtt_messages_unrouted_total": ("counter", set()),
    "fieldgate_broker_connections": ("gauge", set()),
    "fieldgate_broker_connections_accepted_total": ("counter", set()),
    "fieldgate_broker_refused_total": ("counter", {"reason"}),
    "fieldgate_broker_access_reloads_total": ("counter", {"result"}),
    "fieldgate_journal_bytes": ("gauge", set()),
    "fieldgate_journal_entries": ("gauge", set()),
    "fieldgate_journal_appended_total": ("counter", set()),
    "fieldgate_journal_recovered_total": ("counter", set()),
    "fieldgate_journal_write_errors_total": ("counter", set()),
    "fieldgate_journal_waits_total": ("counter", set()),
    "fieldgate_journal_wait_seconds_total": ("counter", set()),
    "fieldgate_journal_commit_seconds": ("histogram", set()),
    "fieldgate_stream_rows_total": ("counter", {"stream"}),
    "fieldgate_stream_bytes_in_total": ("counter", {"stream"}),
    "fieldgate_stream_decode_errors_total": ("counter", {"stream"}),
    "fieldgate_stream_payloads_rejected_total": ("counter", {"stream", "reason"}),
    "fieldgate_stream_queue_waits_total": ("counter", {"stream"}),
    "fieldgate_stream_results_lost_total": ("counter", {"stream"}),
    "fieldgate_broker_protocol_errors_total": ("counter", {"reason"}),
    "fieldgate_queue_storage_errors_total": ("counter", {"sink"}),
    "fieldgate_queue_writable": ("gauge", {"sink"}),
    "fieldgate_queue_disk_free_bytes": ("gauge", {"sink"}),
    "fieldgate_log_lines_suppressed_total": ("counter", set()),
    "fieldgate_rule_records_in_total": ("counter", {"rule", "stream"}),
    "fieldgate_rule_records_out_total": ("counter", {"rule", "stream"}),
    "fieldgate_rule_late_records_total": ("counter", {"rule", "stream"}),
    "fieldgate_rule_errors_total": ("counter", {"rule", "stream"}),
    "fieldgate_rule_failed_rows_total": ("counter", {"rule", "stream"}),
    "fieldgate_rule_analytic_keys": ("gauge", {"rule", "stream"}),
    "fieldgate_rule_analytic_keys_forgotten_total": ("counter", {"rule", "stream"}),
    "fieldgate_rule_running": ("gauge", {"rule", "stream"}),
    "fieldgate_rule_batch_duration_seconds": ("histogram", {"rule", "stream"}),
    "fieldgate_rules_reloads_total": ("counter", {"result"}),
    "fieldgate_queue_entries": ("gauge", {"sink"}),
    "fieldgate_queue_bytes": ("gauge", {"sink"}),
    "fieldgate_queue_file_bytes": ("gauge", {"sink"}),
    "fieldgate_queue_oldest_age_seconds": ("gauge", {"sink"}),
    "fieldgate_queue_dropped_total": ("counter", {"sink", "reason"}),
    "fieldgate_sink_delivered_total": ("counter", {"sink"}),
    "fieldgate_sink_delivered_bytes_total": ("counter", {"sink"}),
    "fieldgate_sink_retries_total": ("counter", {"sink"}),
    "fieldgate_sink_up": ("gauge", {"sink"}),
    "fieldgate_sink_dropped_total": ("counter", {"sink", "reason"}),
    "fieldgate_sink_duplicates_total": ("counter", {"sink"}),
    "fieldgate_modbus_polls_total": ("counter", {"device"}),
    "fieldgate_modbus_requests_total": ("counter", {"device"}),
    "fieldgate_modbus_errors_total": ("counter", {"device", "kind"}),
    "fieldgate_modbus_request_duration_seconds": ("histogram", {"device"}),
    "fieldgate_modbus_writes_total": ("counter", {"device"}),
    "fieldgate_modbus_write_errors_total": ("counter", {"device"}),
    "fieldgate_modbus_device_degraded": ("gauge", {"device"}),
    "fieldgate_modbus_rows_total": ("counter", set()),
    "fieldgate_modbus_polls_skipped_total": ("counter", {"device"}),
    "fieldgate_opcua_rows_total": ("counter", set()),
    "fieldgate_opcua_server_connected": ("gauge", {"server"}),
    "fieldgate_opcua_connects_total": ("counter", {"server"}),
    "fieldgate_opcua_connect_failures_total": ("counter", {"server"}),
    "fieldgate_opcua_connection_lost_total": ("counter", {"server"}),
    "fieldgate_opcua_untrusted_total": ("counter", {"server"}),
    "fieldgate_opcua_values_total": ("counter", {"server"}),
    "fieldgate_opcua_type_errors_total": ("counter", {"server"}),
    "fieldgate_opcua_node_errors_total": ("counter", {"server"}),
    "fieldgate_opcua_read_failures_total": ("counter", {"server"}),
    "process_resident_memory_bytes": ("gauge", set()),
    "process_cpu_seconds_total": ("counter", set()),
}
# The values of the labels that name a fixed set of causes (every one exported from the
# start, at 0), which dashboards and alerts may match on.
CONTRACT_LABEL_VALUES = {
    ("fieldgate_broker_refused_total", "reason"): {
        "bad_credentials", "anonymous", "subscribe_denied", "publish_denied", "system_topic",
        "topic_limits", "too_large", "subscription_limit", "client_id", "unavailable",
        "connect_other",
    },
    ("fieldgate_broker_protocol_errors_total", "reason"): {
        "bad_protocol", "invalid_packet_type", "too_large", "invalid_topic", "packet_id",
        "malformed", "connect_timeout", "keepalive_timeout", "other",
    },
    ("fieldgate_broker_access_reloads_total", "result"): {"ok", "error"},
    ("fieldgate_rules_reloads_total", "result"): {"ok", "error"},
    ("fieldgate_stream_payloads_rejected_total", "reason"): {
        "empty", "not_utf8", "too_large", "too_deep", "string_too_long", "array_too_long",
        "malformed", "wrong_type",
    },
    ("fieldgate_queue_dropped_total", "reason"): {"oldest", "rejected", "expired"},
    ("fieldgate_sink_dropped_total", "reason"): {"dead_letter", "refused", "device_exception", "too_large"},
    ("fieldgate_modbus_errors_total", "kind"): {"timeout", "exception", "bad_frame", "io"},
}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
# Labels Prometheus adds to every scraped series (target and Kubernetes discovery labels).
TARGET_LABELS = {"instance", "job", "namespace", "pod", "node", "service", "container", "endpoint"}

# What the dashboard must show (the metric families behind each required panel).
DASHBOARD_REQUIRED = {
    "fieldgate_mqtt_messages_received_total",
    "fieldgate_broker_refused_total",
    "fieldgate_journal_bytes",
    "fieldgate_journal_entries",
    "fieldgate_journal_waits_total",
    "fieldgate_journal_commit_seconds",
    "fieldgate_rule_records_in_total",
    "fieldgate_rule_records_out_total",
    "fieldgate_rule_batch_duration_seconds",
    "fieldgate_queue_entries",
    "fieldgate_queue_oldest_age_seconds",
    "fieldgate_queue_dropped_total",
    "fieldgate_sink_dropped_total",
    "fieldgate_sink_delivered_total",
    "fieldgate_sink_up",
    "fieldgate_modbus_polls_total",
    "fieldgate_modbus_errors_total",
    "fieldgate_modbus_request_duration_seconds",
    "fieldgate_modbus_device_degraded",
    "process_resident_memory_bytes",
    "process_cpu_seconds_total",
}


def need_yaml():
    if yaml is None:
        pytest.fail("PyYAML is missing: `python3 -m pip install pyyaml` (scripts/test.sh installs it)")
    return yaml


# ---------------------------------------------------------------------------------------
# Rendering: kubectl kustomize, or the same merge done here when kubectl is not installed.


def render(directory: pathlib.Path) -> list:
    """The resources a kustomization renders to."""
    need_yaml()
    if shutil.which("kubectl"):
        return render_with_kubectl(directory)
    return render_without_kubectl(directory)


def render_with_kubectl(directory: pathlib.Path) -> list:
    out = subprocess.run(["kubectl", "kustomize", str(directory)], capture_output=True, text=True)
    if out.returncode != 0:
        pytest.fail(f"kubectl kustomize {directory} failed:\n{out.stderr}")
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def smp_merge(base, patch):
    """A strategic merge patch as kustomize applies these files: maps merge key by key,
    lists of named maps (containers, volumes, mounts, env, ports) merge by name, other
    lists are replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            out[key] = smp_merge(base[key], value) if key in base else copy.deepcopy(value)
        return out
    if (isinstance(base, list) and isinstance(patch, list)
            and all(isinstance(i, dict) and "name" in i for i in base + patch)):
        out = [copy.deepcopy(i) for i in base]
        for item in patch:
            for n, existing in enumerate(out):
                if existing["name"] == item["name"]:
                    out[n] = smp_merge(existing, item)
                    break
            else:
                out.append(copy.deepcopy(item))
        return out
    return copy.deepcopy(patch)


def _load_kustomization(directory: pathlib.Path) -> dict:
    for name in ("kustomization.yaml", "kustomization.yml", "Kustomization"):
        if (directory / name).exists():
            return yaml.safe_load((directory / name).read_text())
    pytest.fail(f"{directory} has no kustomization.yaml")


def _apply_patches(resources: list, directory: pathlib.Path, patches: list):
    for entry in patches or []:
        patch = yaml.safe_load((directory / entry["path"]).read_text())
        target = entry.get("target") or {"kind": patch["kind"], "name": patch["metadata"]["name"]}
        kind_re = re.compile(f"^(?:{target.get('kind', '.*')})$")
        labels = dict(kv.split("=", 1) for kv in (target.get("labelSelector") or "").split(",") if kv)
        for n, res in enumerate(resources):
            if not kind_re.match(res["kind"]):
                continue
            if "name" in target and res["metadata"]["name"] != target["name"]:
                continue
            if any(res["metadata"].get("labels", {}).get(k) != v for k, v in labels.items()):
                continue
            body = {k: v for k, v in patch.items() if k not in ("apiVersion", "kind", "metadata")}
            if "metadata" in patch:
                meta = {k: v for k, v in patch["metadata"].items() if k != "name"}
                body["metadata"] = meta
            resources[n] = smp_merge(res, body)


def render_without_kubectl(directory: pathlib.Path) -> list:
    """What `kubectl kustomize` renders for these files (resources, components, config
    map generators with behavior replace, patches, namespace, images), without the
    content-hash suffix of generated names."""
    k = _load_kustomization(directory)
    resources: list = []
    for entry in k.get("resources", []):
        path = directory / entry
        if path.is_dir():
            resources.extend(render_without_kubectl(path))
        else:
            resources.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    for entry in k.get("components", []):
        component = _load_kustomization(directory / entry)
        for res in component.get("resources", []):
            resources.extend(d for d in yaml.safe_load_all((directory / entry / res).read_text()) if d)
        _apply_patches(resources, directory / entry, component.get("patches"))
    for gen in k.get("configMapGenerator", []):
        data = {}
        for f in gen.get("files", []):
            key, _, path = f.rpartition("=") if "=" in f else (None, None, f)
            data[key or pathlib.Path(path).name] = (directory / path).read_text()
        cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": gen["name"]}, "data": data}
        if gen.get("behavior") in ("replace", "merge"):
            for n, res in enumerate(resources):
                if res["kind"] == "ConfigMap" and res["metadata"]["name"] == gen["name"]:
                    if gen["behavior"] == "merge":
                        cm["data"] = {**res.get("data", {}), **data}
                    cm["metadata"] = res["metadata"]
                    resources[n] = cm
                    break
            else:
                pytest.fail(f"{directory}: generator {gen['name']} has behavior {gen['behavior']} but no base")
        else:
            resources.append(cm)
    _apply_patches(resources, directory, k.get("patches"))
    if "namespace" in k:
        for res in resources:
            if res["kind"] != "Namespace":
                res["metadata"]["namespace"] = k["namespace"]
    for image in k.get("images", []):
        for res in resources:
            for c in pod_spec(res).get("containers", []) + pod_spec(res).get("initContainers", []):
                if c.get("image", "").split(":")[0] == image["name"]:
                    c["image"] = f"{image.get('newName', image['name'])}:{image['newTag']}"
    return resources


# ---------------------------------------------------------------------------------------
# Helpers over rendered resources


def unhash(name: str) -> str:
    """A generated ConfigMap's name without kustomize's content-hash suffix."""
    return re.sub(r"^(fieldgate-config)-[a-z0-9]{10}$", r"\1", name)


def pod_spec(res: dict) -> dict:
    return res.get("spec", {}).get("template", {}).get("spec", {}) if res.get("kind") in ("Deployment", "DaemonSet") else {}


def one(docs: list, kind: str, name: str | None = None) -> dict:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {[d['metadata']['name'] for d in found]}"
    return found[0]


def workload(docs: list) -> dict:
    found = [d for d in docs if d["kind"] in ("Deployment", "DaemonSet")]
    assert len(found) == 1, f"expected one workload, found {[(d['kind'], d['metadata']['name']) for d in found]}"
    return found[0]


def gateway_container(docs: list) -> dict:
    containers = pod_spec(workload(docs))["containers"]
    return next(c for c in containers if c["name"] == "fieldgate")


def mounted_configmaps(docs: list) -> tuple:
    """The ConfigMaps behind the config file and the rules directory, as the pod mounts them."""
    spec = pod_spec(workload(docs))
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in gateway_container(docs)["volumeMounts"]}
    config_mount = mounts[CONFIG_PATH]
    rules_mount = mounts[RULES_PATH]
    config_cm = one(docs, "ConfigMap", volumes[config_mount["name"]]["configMap"]["name"])
    rules_cm = one(docs, "ConfigMap", volumes[rules_mount["name"]]["configMap"]["name"])
    return config_mount, config_cm, rules_mount, rules_cm


def mounted_file(docs: list, path: str) -> tuple:
    """What the pod shows at `path`: (mount, volume, key), the key being the Secret's or
    ConfigMap's key behind the file."""
    spec = pod_spec(workload(docs))
    volumes = {v["name"]: v for v in spec["volumes"]}
    for m in gateway_container(docs)["volumeMounts"]:
        if m.get("subPath"):
            if m["mountPath"] != path:
                continue
            rel = m["subPath"]
        elif path.startswith(m["mountPath"].rstrip("/") + "/"):
            rel = path[len(m["mountPath"].rstrip("/")) + 1:]
        else:
            continue
        volume = volumes[m["name"]]
        source = volume.get("secret") or volume.get("configMap") or {}
        items = source.get("items")
        if items is None:
            return m, volume, rel
        keys = [i["key"] for i in items if i["path"] == rel]
        assert keys, f"volume {m['name']} mounted at {m['mountPath']} has no item {rel}"
        return m, volume, keys[0]
    pytest.fail(f"the pod mounts nothing at {path}")


def broker_config(docs: list) -> dict:
    config_mount, config_cm, _, _ = mounted_configmaps(docs)
    return tomllib.loads(config_cm["data"][config_mount["subPath"]]).get("broker", {})


NO_USERS = "# The fieldgate-mqtt-users Secret's password file stands here: no users.\n"


def lay_out_pod_files(docs: list, tmp: pathlib.Path) -> pathlib.Path:
    """Writes the ConfigMaps' files where the pod sees them, under tmp, and returns the
    config file; the config's absolute pod paths are moved under tmp too. The password
    file, a Secret's that git does not hold, is one without users."""
    config_mount, config_cm, _, rules_cm = mounted_configmaps(docs)
    broker = broker_config(docs)
    files = {}
    if "password_file" in broker:
        files[broker["password_file"]] = NO_USERS
    if "acl_file" in broker:
        _, volume, key = mounted_file(docs, broker["acl_file"])
        files[broker["acl_file"]] = one(docs, "ConfigMap", volume["configMap"]["name"])["data"][key]
    return lay_out_files(config_cm["data"][config_mount["subPath"]], rules_cm["data"], tmp, files)


def lay_out_files(config_text: str, rules: dict, tmp: pathlib.Path, files: dict | None = None) -> pathlib.Path:
    """`files`: other files of the pod, {absolute path under /etc/fieldgate: text}."""
    etc = tmp / "etc" / "fieldgate"
    data = tmp / "var" / "lib" / "fieldgate"
    (etc / "rules").mkdir(parents=True)
    data.mkdir(parents=True)
    for name, text in rules.items():
        (etc / "rules" / name).write_text(text)
    for path, text in (files or {}).items():
        rel = pathlib.PurePosixPath(path).relative_to("/etc/fieldgate")
        (etc / rel).parent.mkdir(parents=True, exist_ok=True)
        (etc / rel).write_text(text)
    text = config_text.replace("/etc/fieldgate/", f"{etc}/").replace(DATA_PATH, str(data))
    config = etc / "fieldgate.toml"
    config.write_text(text)
    return config


def check_access_files(tmp: pathlib.Path, password_file: pathlib.Path, acl_file: pathlib.Path | None):
    """`fieldgate validate` (not --offline: it reads the password and ACL files) of a
    config on free loopback ports that uses these files."""
    from conftest import free_port

    (tmp / "rules").mkdir(exist_ok=True)
    (tmp / "rules" / "r.sql").write_text(
        "CREATE STREAM s (v BIGINT) WITH (DATASOURCE = 'unused/#', FORMAT = 'json');\n"
    )
    config = tmp / "access.toml"
    config.write_text(
        f'data_dir = "data"\nrules_dir = "rules"\n'
        f'[broker]\nlisten = "127.0.0.1:{free_port()}"\nallow_anonymous = false\n'
        f"password_file = {json.dumps(str(password_file))}\n"
        + (f"acl_file = {json.dumps(str(acl_file))}\n" if acl_file else "")
        + f'[admin]\nlisten = "127.0.0.1:{free_port()}"\n'
    )
    out = subprocess.run([str(binary()), "validate", "--config", str(config)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"{password_file}, {acl_file}: validate failed:\n{out.stdout}{out.stderr}"


def env_for(config_text: str) -> dict:
    """The environment the config reads its secrets from, with placeholder values."""
    names = re.findall(r'^\s*(?:token_env|auth_env)\s*=\s*"([^"]+)"', config_text, re.M)
    env = dict(os.environ)
    for name in names:
        env[name] = "Bearer test-placeholder" if "AUTH" in name else "test-placeholder-token"
    return env


# ---------------------------------------------------------------------------------------
# The overlays


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request):
    return request.param, render(K8S / "overlays" / request.param)


def test_base_renders():
    docs = render(K8S / "base")
    kinds = {(d["kind"], unhash(d["metadata"]["name"])) for d in docs}
    assert ("Service", "fieldgate-admin") in kinds
    assert ("ServiceAccount", "fieldgate") in kinds
    assert ("ConfigMap", "fieldgate-rules") in kinds
    assert ("ConfigMap", "fieldgate-config") in kinds


def test_overlay_renders(overlay):
    name, docs = overlay
    for d in docs:
        assert d.get("apiVersion") and d.get("kind") and d.get("metadata", {}).get("name"), d
        if d["kind"] != "Namespace":
            assert d["metadata"].get("namespace") == NAMESPACE, (d["kind"], d["metadata"]["name"])
    one(docs, "Namespace", NAMESPACE)
    one(docs, "ServiceAccount", "fieldgate")
    admin = one(docs, "Service", "fieldgate-admin")
    assert [(p["name"], p["port"]) for p in admin["spec"]["ports"]] == [("admin", 9180)]
    # Scrape annotations on the pods only: a Prometheus that discovers both pods and
    # services would otherwise scrape every gateway twice.
    for d in docs:
        if d["kind"] == "Service":
            assert "prometheus.io/scrape" not in d["metadata"].get("annotations", {}), d["metadata"]["name"]
    w = workload(docs)
    assert w["kind"] == {"factory": "DaemonSet", "smart-city": "Deployment"}[name]
    selector = w["spec"]["selector"]["matchLabels"]
    assert selector.items() <= w["spec"]["template"]["metadata"]["labels"].items()
    assert admin["spec"]["selector"].items() <= w["spec"]["template"]["metadata"]["labels"].items()


def test_pod_keeps_the_contract(overlay):
    name, docs = overlay
    w = workload(docs)
    spec = pod_spec(w)
    c = gateway_container(docs)
    assert c["args"] == RUN_ARGS
    assert c["image"].split("/")[-1].startswith("fieldgate:")
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"mqtt": 1883, "admin": 9180}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert c["resources"] == {"requests": {"cpu": "100m", "memory": "64Mi"},
                              "limits": {"cpu": "1", "memory": "256Mi"}}
    # Non-root, read-only root filesystem.
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == USER_ID
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    if c["securityContext"].get("privileged"):
        # The API server refuses privileged together with allowPrivilegeEscalation: false.
        assert c["securityContext"].get("allowPrivilegeEscalation") is not False
    else:
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    annotations = w["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "9180"
    assert annotations["prometheus.io/path"] == "/metrics"
    # The admin token, and every other secret the config names, from the environment.
    env = {e["name"]: e for e in c["env"]}
    assert env["FIELDGATE_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "fieldgate-admin", "key": "token"}
    config_mount, config_cm, rules_mount, rules_cm = mounted_configmaps(docs)
    config_text = config_cm["data"][config_mount["subPath"]]
    for var in re.findall(r'^\s*(?:token_env|auth_env)\s*=\s*"([^"]+)"', config_text, re.M):
        assert "secretKeyRef" in env.get(var, {}).get("valueFrom", {}), f"{var} is not set from a Secret"
    # Rules: a directory mount of a ConfigMap with a stable name, so that updates reach
    # the running pod; the config: read at start, under a content-hashed name.
    assert "subPath" not in rules_mount
    assert rules_cm["metadata"]["name"] == "fieldgate-rules"
    assert rules_cm["data"] and all(k.endswith(".sql") for k in rules_cm["data"])
    assert config_mount["subPath"] == "fieldgate.toml"
    assert tomllib.loads(config_text)["rules_dir"] == RULES_PATH
    assert tomllib.loads(config_text)["data_dir"] == DATA_PATH
    # The broker listens on the pod's network: its clients log in with a user of the
    # password file, a Secret's, mounted as a directory (a changed Secret then reaches
    # the running pod, which reloads it) where `broker.password_file` says; an ACL file
    # likewise comes from a ConfigMap.
    broker = tomllib.loads(config_text)["broker"]
    assert broker.get("allow_anonymous") is not True
    assert "listen_v5" not in broker
    users_mount, users_volume, users_key = mounted_file(docs, broker["password_file"])
    assert users_volume.get("secret", {}).get("secretName") == MQTT_USERS_SECRET, users_volume
    assert users_key == MQTT_USERS_KEY
    assert users_mount.get("readOnly") is True and "subPath" not in users_mount
    assert name != "factory" or "acl_file" in broker, "the factory's broker has an ACL"
    if "acl_file" in broker:
        acl_mount, acl_volume, acl_key = mounted_file(docs, broker["acl_file"])
        assert acl_mount.get("readOnly") is True and "subPath" not in acl_mount
        acl_cm = one(docs, "ConfigMap", acl_volume["configMap"]["name"])
        assert acl_key in acl_cm["data"], f"ConfigMap {acl_cm['metadata']['name']} has no key {acl_key}"
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert DATA_PATH in mounts and not mounts[DATA_PATH].get("readOnly")
    volumes = {v["name"]: v for v in spec["volumes"]}
    data = volumes[mounts[DATA_PATH]["name"]]

    if name == "factory":
        assert spec["nodeSelector"] == {"fieldgate.io/role": "factory-edge"}
        assert data["hostPath"]["path"] == DATA_PATH
        tty = [v for v in spec["volumes"] if v.get("hostPath", {}).get("path") == "/dev/ttyUSB0"]
        assert len(tty) == 1 and tty[0]["hostPath"]["type"] == "CharDevice"
        assert mounts["/dev/ttyUSB0"]["name"] == tty[0]["name"]
        assert 20 in spec["securityContext"].get("supplementalGroups", [])
        host_ports = {p["name"]: p.get("hostPort") for p in c["ports"]}
        assert host_ports["mqtt"] == 1883 or spec.get("hostNetwork") is True
    else:
        assert w["spec"]["replicas"] == 1
        assert w["spec"]["strategy"]["type"] == "Recreate"
        pvc = one(docs, "PersistentVolumeClaim", data["persistentVolumeClaim"]["claimName"])
        assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
        mqtt = one(docs, "Service", "fieldgate-mqtt")
        assert mqtt["spec"]["type"] in ("LoadBalancer", "NodePort")
        assert {p["port"] for p in mqtt["spec"]["ports"]} == {1883}


def test_overlay_rules_check(overlay, tmp_path):
    """The ConfigMaps' config and rules, where the pod mounts them: `fieldgate rules check`."""
    name, docs = overlay
    config = lay_out_pod_files(docs, tmp_path)
    out = subprocess.run(
        [str(binary()), "rules", "check", "--config", str(config), str(config.parent / "rules")],
        capture_output=True, text=True, env=env_for(config.read_text()), timeout=120,
    )
    assert out.returncode == 0, f"{name}: rules check failed:\n{out.stdout}{out.stderr}"
    assert out.stdout.startswith("ok:"), out.stdout


def test_overlay_validates(overlay, tmp_path):
    """The ConfigMaps' config and rules, where the pod mounts them: `fieldgate validate`
    (`--offline`: the serial devices and ports are the pod's, not this machine's)."""
    name, docs = overlay
    config = lay_out_pod_files(docs, tmp_path)
    out = subprocess.run(
        [str(binary()), "validate", "--offline", "--config", str(config)],
        capture_output=True, text=True, env=env_for(config.read_text()), timeout=120,
    )
    assert out.returncode == 0, f"{name}: validate failed:\n{out.stdout}{out.stderr}"
    assert out.stdout.startswith("ok"), out.stdout


def test_overlay_access_files_load(overlay, tmp_path):
    """The ACL the overlay's ConfigMap holds, and a password file in the Secret's place,
    load as `run` loads them (`validate --offline` does not read them)."""
    name, docs = overlay
    config = lay_out_pod_files(docs, tmp_path / "pod")
    broker = tomllib.loads(config.read_text())["broker"]
    acl = broker.get("acl_file")
    check_access_files(tmp_path, pathlib.Path(broker["password_file"]), acl and pathlib.Path(acl))


def test_base_pod_mounts_the_base_configs_password_file():
    """The image's config, which the base also mounts, names the password file where the
    base pod mounts the fieldgate-mqtt-users Secret."""
    need_yaml()
    pod = yaml.safe_load((K8S / "base" / "pod" / "gateway-pod.yaml").read_text())
    broker = tomllib.loads((K8S / "base" / "fieldgate.toml").read_text())["broker"]
    mount, volume, key = mounted_file([pod], broker["password_file"])
    assert volume.get("secret", {}).get("secretName") == MQTT_USERS_SECRET and key == MQTT_USERS_KEY
    assert mount.get("readOnly") is True and "subPath" not in mount


@pytest.mark.parametrize("name", OVERLAYS)
def test_configs_ship_no_users_and_their_acls_load(name, tmp_path):
    """configs/<name>.toml's password file holds no users (nothing is open before users
    are added with `fieldgate passwd`), and it and the ACL load."""
    source_config = ROOT / "configs" / f"{name}.toml"
    broker = tomllib.loads(source_config.read_text())["broker"]
    assert "listen_v5" not in broker and broker.get("allow_anonymous") is not True
    passwd = source_config.parent / broker["password_file"]
    lines = [l.strip() for l in passwd.read_text().splitlines()]
    assert all(not l or l.startswith("#") for l in lines), f"{passwd} holds users: ship it without"
    assert f"fieldgate passwd configs/{name}/mqtt/passwd" in passwd.read_text()
    acl = broker.get("acl_file") and source_config.parent / broker["acl_file"]
    check_access_files(tmp_path, passwd, acl)


def test_base_config_validates(tmp_path):
    """The base's config and rules, which the image also carries: `fieldgate validate`."""
    docs = render(K8S / "base")
    config_cm = next(d for d in docs if d["kind"] == "ConfigMap" and unhash(d["metadata"]["name"]) == "fieldgate-config")
    rules_cm = one(docs, "ConfigMap", "fieldgate-rules")
    config = lay_out_files(config_cm["data"]["fieldgate.toml"], rules_cm["data"], tmp_path)
    out = subprocess.run(
        [str(binary()), "validate", "--offline", "--config", str(config)],
        capture_output=True, text=True, env=env_for(config.read_text()), timeout=120,
    )
    assert out.returncode == 0, f"base: validate failed:\n{out.stdout}{out.stderr}"


@pytest.mark.parametrize("name", ["base"] + OVERLAYS)
def test_rules_and_config_match_configs(name):
    """The rules under deploy/k8s (kustomize reads files only below a kustomization) are
    configs/'s: configs/ links to them; and the config is configs/'s but for the pod's
    paths."""
    if name == "base":
        rules, source_rules, source_config = K8S / "base" / "rules", ROOT / "configs" / "rules", None
    else:
        rules = K8S / "overlays" / name / "rules"
        source_rules = ROOT / "configs" / name / "rules"
        source_config = ROOT / "configs" / f"{name}.toml"
    assert source_rules.is_symlink() and source_rules.resolve() == rules.resolve(), (
        f"{source_rules} must be a symbolic link to {rules}, the one copy kustomize can read")
    assert sorted(rules.glob("*.sql")), f"{rules} holds no rules"
    if source_config is None:
        return
    k8s = tomllib.loads((K8S / "overlays" / name / "fieldgate.toml").read_text())
    src = tomllib.loads(source_config.read_text())
    assert k8s.pop("rules_dir") == RULES_PATH
    src.pop("rules_dir")
    for cfg in (k8s, src):
        for key in ("token", "token_env"):
            cfg.get("admin", {}).pop(key, None)
    # broker.password_file and broker.acl_file differ by design: configs/ runs from the
    # repository and names the files next to it (relative to its directory), the overlay
    # names the absolute paths where the pod mounts the fieldgate-mqtt-users Secret and the
    # ACL ConfigMap (test_pod_keeps_the_contract checks those mounts). Both set the same
    # keys, the files keep their names, and the ACL the pod gets is configs/'s (below).
    access = {}
    for key in ("password_file", "acl_file"):
        access[key] = (k8s.get("broker", {}).pop(key, None), src.get("broker", {}).pop(key, None))
        ours_path, theirs_path = access[key]
        assert (ours_path is None) == (theirs_path is None), f"broker.{key}: one config sets it, the other not"
        if ours_path is not None:
            assert pathlib.PurePosixPath(ours_path).is_absolute(), f"broker.{key}: the pod's path"
            assert pathlib.PurePosixPath(ours_path).name == pathlib.PurePosixPath(theirs_path).name, key
    assert k8s == src, f"deploy/k8s/overlays/{name}/fieldgate.toml differs from {source_config}"
    pod_acl, src_acl = access["acl_file"]
    if pod_acl is not None:
        docs = render(K8S / "overlays" / name)
        _, volume, key = mounted_file(docs, pod_acl)
        mounted = one(docs, "ConfigMap", volume["configMap"]["name"])["data"][key]
        assert mounted == (source_config.parent / src_acl).read_text(), (
            f"the ACL of deploy/k8s/overlays/{name} differs from configs/{src_acl}, which links to it")


def test_kubectl_and_fallback_render_alike():
    """The PyYAML fallback renders what kubectl does (checked where kubectl is installed)."""
    need_yaml()
    if not shutil.which("kubectl"):
        pytest.skip("kubectl is not installed: the fallback renders on its own")
    for name in OVERLAYS:
        a = render_with_kubectl(K8S / "overlays" / name)
        b = render_without_kubectl(K8S / "overlays" / name)
        key = lambda d: (d["kind"], unhash(d["metadata"]["name"]))
        assert sorted(map(key, a)) == sorted(map(key, b)), name
        for da in a:
            db = next(d for d in b if key(d) == key(da))
            if da["kind"] == "ConfigMap":
                assert da["data"] == db["data"]
            if da["kind"] in ("Deployment", "DaemonSet"):
                ca, cb = gateway_container([da]), gateway_container([db])
                for field in ("args", "livenessProbe", "readinessProbe", "resources", "securityContext", "image"):
                    assert ca.get(field) == cb.get(field), (name, field)
                by_name = lambda items: sorted(items, key=lambda i: i["name"])
                assert by_name(ca["env"]) == by_name(cb["env"]), name
                assert by_name(ca["ports"]) == by_name(cb["ports"]), name
                assert sorted(m["mountPath"] for m in ca["volumeMounts"]) == sorted(m["mountPath"] for m in cb["volumeMounts"])


def test_all_yaml_parses():
    need_yaml()
    files = sorted((ROOT / "deploy").rglob("*.yaml"))
    assert files
    for f in files:
        for d in yaml.safe_load_all(f.read_text()):
            if d is not None:
                assert "kind" in d, f


# ---------------------------------------------------------------------------------------
# The smart-city rules on recorded readings


def test_smart_city_rules_on_recorded_readings():
    """The recordings hold one payload that is not JSON: it is rejected, counted in the
    summary, and fails the run unless --allow-rejects says it is expected."""
    tests = ROOT / "configs" / "smart-city" / "tests"
    args = [str(binary()), "rules", "test", str(ROOT / "configs" / "smart-city" / "rules"),
            "--input", str(tests / "readings.input.jsonl"), "--expect", str(tests / "readings.expected.jsonl")]
    strict = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert strict.returncode == 1, strict.stdout + strict.stderr
    out = subprocess.run(args + ["--allow-rejects"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 rejected" in out.stderr, out.stderr


# ---------------------------------------------------------------------------------------
# The Dockerfile's structure (test_image.py builds and runs the image)


def dockerfile_instructions(path: pathlib.Path = DOCKERFILE) -> list:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out, current = [], ""
    for line in path.read_text().splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if current and line.lstrip().startswith("#"):
            continue
        current += line.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        word, _, rest = current.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        current = ""
    return out


def test_dockerfile():
    ins = dockerfile_instructions()
    stages = [i for i, (w, _) in enumerate(ins) if w == "FROM"]
    assert len(stages) >= 2, "a build stage and a runtime stage"
    named = {ins[i][1].split()[-1]: i for i in stages}
    assert set(named) >= {"build", "files", "runtime", "prebuilt", "release"}
    build = ins[named["build"]:stages[stages.index(named["build"]) + 1]]
    assert any(w == "RUN" and "cargo build --release -p fieldgate --locked" in a for w, a in build)
    # The default target (the last stage) is the runtime with the build stage's binary.
    assert ins[stages[-1]][1] == "runtime AS release"
    assert any(w == "COPY" and "--from=build" in a for w, a in ins[stages[-1]:])
    final = ins[named["runtime"]:named["prebuilt"]]
    assert final[0][1].startswith("scratch"), "nothing in the runtime but what the binary needs"
    user = [a for w, a in final if w == "USER"]
    assert user and user[-1].split(":")[0] == str(USER_ID)
    exposed = {p for w, a in final if w == "EXPOSE" for p in a.split()}
    assert exposed == {"1883", "9180"}
    health = [a for w, a in final if w == "HEALTHCHECK"]
    assert health and "/healthz" in health[0] and '"probe"' in health[0]
    assert ("ENV", "FIELDGATE_PROBE_ADDR=127.0.0.1:9180") in final
    assert any(w == "VOLUME" and DATA_PATH in a for w, a in final)
    entry = json.loads(next(a for w, a in final if w == "ENTRYPOINT"))
    cmd = json.loads(next(a for w, a in final if w == "CMD"))
    assert pathlib.PurePath(entry[0]).name == "fieldgate" and entry[1:] + cmd == RUN_ARGS
    # Files copied from the build context exist, and the context leaves target/ out.
    for w, a in ins:
        if w == "COPY" and "--from" not in a:
            for src in a.split()[:-1]:
                # deploy/image/ is staged by scripts/image.sh for the `prebuilt` target.
                if not src.startswith("--") and src != "." and not src.startswith("deploy/image/"):
                    assert (ROOT / src).exists(), src
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert "target" in ignored and ".git" in ignored
    # The image's config is the base's, which runs in the pod as is.
    assert any(w == "COPY" and "deploy/k8s/base/fieldgate.toml" in a and CONFIG_PATH in a for w, a in final)


# ---------------------------------------------------------------------------------------
# The Grafana dashboard


METRIC_RE = re.compile(r"(?<![A-Za-z0-9_:])((?:fieldgate|process)_[A-Za-z0-9_]+)")


def family_of(sample_name: str) -> str:
    """The metric family a sample name belongs to: a histogram's _bucket/_sum/_count
    samples belong to the histogram; any other name is its own family."""
    for suffix in HISTOGRAM_SUFFIXES:
        base = sample_name[: -len(suffix)]
        if sample_name.endswith(suffix) and CONTRACT_METRICS.get(base, ("",))[0] == "histogram":
            return base
    return sample_name


def dashboard_queries(path: pathlib.Path = DASHBOARD) -> list:
    """Every PromQL expression in the dashboard: panel targets and template variables."""
    dash = json.loads(path.read_text())
    exprs = []

    def panels(ps):
        for p in ps:
            yield p
            yield from panels(p.get("panels", []))

    for p in panels(dash["panels"]):
        for t in p.get("targets", []):
            if t.get("expr"):
                exprs.append(t["expr"])
    for v in dash.get("templating", {}).get("list", []):
        q = v.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        if v.get("type") == "query" and q:
            exprs.append(q)
    return exprs


def dashboard_metric_names(path: pathlib.Path = DASHBOARD) -> set:
    """The metric families the dashboard queries: names starting with fieldgate_ or
    process_, a histogram's _bucket/_sum/_count samples counted as the histogram."""
    return {family_of(m) for e in dashboard_queries(path) for m in METRIC_RE.findall(e)}


def test_dashboard_queries_only_exported_metrics():
    names = dashboard_metric_names()
    unknown = sorted(names - CONTRACT_METRICS.keys())
    assert not unknown, f"the dashboard queries metrics the gateway does not export: {unknown}"
    missing = sorted(DASHBOARD_REQUIRED - names)
    assert not missing, f"the dashboard shows nothing of {missing}"


def test_dashboard_uses_exported_labels():
    for expr in dashboard_queries():
        families = {family_of(m) for m in METRIC_RE.findall(expr)}
        known = set(TARGET_LABELS)
        for f in families:
            known |= CONTRACT_METRICS[f][1]
        if "_bucket" in expr:
            known.add("le")
        for metric, matchers in re.findall(r"((?:fieldgate|process)_[A-Za-z0-9_]+)\{([^}]*)\}", expr):
            labels = set(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)", matchers))
            allowed = CONTRACT_METRICS[family_of(metric)][1] | TARGET_LABELS | ({"le"} if metric.endswith("_bucket") else set())
            assert labels <= allowed, f"{metric} has no label {labels - allowed}: {expr}"
        for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
            labels = {l.strip() for l in group.split(",") if l.strip()}
            assert labels <= known, f"no metric in the query has {labels - known}: {expr}"
        for label in re.findall(r"label_values\([^,]+,\s*([A-Za-z_][A-Za-z0-9_]*)\)", expr):
            assert label in known, expr


def test_dashboard_is_importable():
    dash = json.loads(DASHBOARD.read_text())
    assert dash["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = set()
    for p in dash["panels"]:
        assert p["id"] not in ids
        ids.add(p["id"])
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}", p["title"]
            assert p["targets"] and all(t["expr"] for t in p["targets"]), p["title"]


# ---------------------------------------------------------------------------------------
# The contract against a running gateway


def every_kind_config(tmp: pathlib.Path, mqtt: int, admin: int) -> pathlib.Path:
    """A config with a sink of every kind and an unreachable Modbus device, its rules
    under tmp; the admin token is "t0k"."""
    from conftest import free_port

    dead = free_port()
    (tmp / "rules").mkdir()
    (tmp / "rules" / "r.sql").write_text(
        "CREATE STREAM s (device STRING, v BIGINT) WITH (DATASOURCE = 'sensors/+');\n"
        "CREATE STREAM p (device STRING, x BIGINT) WITH (TYPE = 'modbus', DATASOURCE = 'plc/g');\n"
        "CREATE RULE fwd INTO disk, cloud, api, bus AS SELECT device, v FROM s;\n"
        "CREATE RULE act INTO plc_ctl AS SELECT true AS run FROM p WHERE x > 1;\n"
    )
    config = tmp / "fieldgate.toml"
    config.write_text(
        f'data_dir = "data"\nrules_dir = "rules"\n'
        f'[broker]\nlisten = "127.0.0.1:{mqtt}"\n'
        f'[admin]\nlisten = "127.0.0.1:{admin}"\ntoken = "t0k"\n'
        f"[[modbus.devices]]\nname = \"plc\"\n"
        f'transport = {{ type = "tcp", host = "127.0.0.1", port = {dead} }}\ntimeout = "100ms"\n'
        f'[[modbus.devices.groups]]\nname = "g"\ninterval = "100ms"\n'
        f'tags = [{{ name = "x", register = 40001 }}, {{ name = "run", register = 1, writable = true }}]\n'
        f'[sinks.disk]\ntype = "file"\npath = "out/{{rule}}.jsonl"\n'
        f'[sinks.cloud]\ntype = "mqtt"\nhost = "127.0.0.1"\nport = {dead}\n'
        f'[sinks.api]\ntype = "http"\nurl = "http://127.0.0.1:{dead}/in"\ndead_letter = "dead.jsonl"\n'
        f'[sinks.bus]\ntype = "republish"\n'
        f'[sinks.plc_ctl]\ntype = "modbus"\ndevice = "plc"\n'
        f'[[opcua.servers]]\nname = "line"\nendpoint = "opc.tcp://127.0.0.1:{dead}/"\n'
        f'[[opcua.servers.groups]]\nname = "g"\n'
        f'nodes = [{{ name = "sp", node_id = "ns=2;s=SP", type = "double", writable = true }}]\n'
        f'[sinks.line_ctl]\ntype = "opcua"\nserver = "line"\n'
        f'[sinks.fleet]\ntype = "nats"\nservers = ["nats://127.0.0.1:{dead}"]\nstream = "FLEET"\n'
    )
    return config


def default_config(tmp: pathlib.Path, mqtt: int, admin: int) -> pathlib.Path:
    """configs/default.toml, as shipped, on the given loopback ports, with its rules
    copied under tmp (the config's paths are relative to the working directory)."""
    text = (ROOT / "configs" / "default.toml").read_text()
    for shipped, port in (('"127.0.0.1:1883"', mqtt), ('"127.0.0.1:9180"', admin)):
        assert shipped in text, f"configs/default.toml no longer listens on {shipped}"
        text = text.replace(shipped, f'"127.0.0.1:{port}"')
    shutil.copytree(ROOT / "configs" / "rules", tmp / "configs" / "rules")
    config = tmp / "default.toml"
    config.write_text(text)
    return config


def running_gateway_metrics(tmp: pathlib.Path, make_config=every_kind_config, token: str | None = "t0k") -> dict:
    """Starts the gateway on the config `make_config(tmp, mqtt_port, admin_port)` writes,
    in tmp, scrapes /metrics once it is ready, stops it, and returns {family: (type,
    labels, {label: values})} from the exposition (# TYPE lines, and the labels of the
    samples)."""
    import time
    import urllib.request

    from conftest import free_port

    mqtt, admin = free_port(), free_port()
    config = make_config(tmp, mqtt, admin)
    log = tmp / "fieldgate.log"
    proc = subprocess.Popen(
        [str(binary()), "run", "--config", str(config)], cwd=tmp,
        stdout=subprocess.DEVNULL, stderr=open(log, "w"),
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"fieldgate did not become ready:\n{log.read_text()}")
            time.sleep(0.05)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        req = urllib.request.Request(f"http://127.0.0.1:{admin}/metrics", headers=headers)
        with urllib.request.urlopen(req, timeout=5) as r:
            text = r.read().decode()
    finally:
        proc.terminate()
        proc.wait(timeout=15)
    families = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            families[name] = (kind, set(), {})
        elif line and not line.startswith("#"):
            sample = re.match(r"([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})? ", line)
            assert sample, f"not a sample line: {line}"
            name = sample.group(1)
            family = next((f for f in families if name == f or name in (f + s for s in HISTOGRAM_SUFFIXES)), None)
            assert family, f"a sample without its # TYPE line: {line}"
            pairs = re.findall(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"', sample.group(2) or "")
            for label, value in pairs:
                if label != "le":
                    families[family][1].add(label)
                    families[family][2].setdefault(label, set()).add(value)
    return families


def test_a_running_gateway_exports_the_contract_and_the_dashboard_metrics(tmp_path):
    exposed = running_gateway_metrics(tmp_path)
    for name, (kind, labels) in CONTRACT_METRICS.items():
        assert name in exposed, f"/metrics lacks {name}"
        assert exposed[name][0] == kind, f"{name} is a {exposed[name][0]}, not a {kind}"
        assert exposed[name][1] == labels, f"{name} has labels {exposed[name][1]}, not {labels}"
    for (name, label), values in CONTRACT_LABEL_VALUES.items():
        got = exposed[name][2].get(label, set())
        assert got == values, f"{name}{{{label}}} has {sorted(got)}, not {sorted(values)}"
    missing = sorted(dashboard_metric_names() - exposed.keys())
    assert not missing, f"the dashboard queries metrics /metrics does not have: {missing}"


def test_the_default_config_exports_every_dashboard_family_and_a_series_per_part(tmp_path):
    """What a newcomer sees on the first start: every family the dashboard queries has
    its # TYPE line, and every sink, stream and rule the default config and its rules
    name has its series, at 0, before any message arrives. Families labelled by Modbus
    device have no samples here: the default config has no device to name."""
    exposed = running_gateway_metrics(tmp_path, default_config, token=None)
    missing = sorted(dashboard_metric_names() - exposed.keys())
    assert not missing, f"with the default config, /metrics lacks: {missing}"
    config = tomllib.loads((ROOT / "configs" / "default.toml").read_text())
    sinks = set(config["sinks"])
    rules_text = "\n".join(p.read_text() for p in sorted((ROOT / "configs" / "rules").glob("*.sql")))
    streams = set(re.findall(r"CREATE\s+STREAM\s+(\w+)", rules_text, re.I))
    rules = set(re.findall(r"CREATE\s+RULE\s+(\w+)", rules_text, re.I))
    assert sinks and streams and rules, "the default config names no sink, stream or rule"
    for family, label, want in [
        ("fieldgate_sink_up", "sink", sinks),
        ("fieldgate_sink_delivered_total", "sink", sinks),
        ("fieldgate_sink_dropped_total", "sink", sinks),
        ("fieldgate_stream_rows_total", "stream", streams),
        ("fieldgate_rule_records_in_total", "rule", rules),
        ("fieldgate_rule_records_out_total", "rule", rules),
    ]:
        assert family in exposed, f"/metrics lacks {family}"
        got = exposed[family][2].get(label, set())
        assert got == want, f"{family}{{{label}}} has {sorted(got)}, not {sorted(want)}"
    for (name, label), values in CONTRACT_LABEL_VALUES.items():
        if "device" in CONTRACT_METRICS[name][1]:
            continue
        got = exposed[name][2].get(label, set())
        assert got == values, f"{name}{{{label}}} has {sorted(got)}, not {sorted(values)}"
    for family in [f for f, (_, labels) in CONTRACT_METRICS.items() if "device" in labels]:
        assert "device" not in exposed[family][2], f"{family} names a device the config lacks"
