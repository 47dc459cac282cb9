"""The container image, built and run for real: scripts/image.sh builds deploy/Dockerfile's
`prebuilt` target with podman from the binary the suite tests (no registry), and the
image runs as the Kubernetes manifests run it: the pod's user, a read-only root file
system, the config, rules, data and /tmp mounts, the admin token from the environment.
A reading published with mosquitto_pub reaches the mounted data volume; SIGTERM stops
the gateway with status 0 and the queue is still in the volume for the next start. The
manifests' user, ports, probes and mounts are checked against what the image holds.

scripts/test.sh installs podman, runc and debootstrap; without them this fails.
"""

import json
import os
import pathlib
import shutil
import subprocess
import time
import urllib.request

import pytest

from conftest import ROOT, binary, free_port
from test_deploy import K8S, OVERLAYS, RUN_ARGS, USER_ID, gateway_container, pod_spec, render, workload

TAG = "localhost/fieldgate:0.1.0"
# Where the pod mounts its volumes, and this test too.
RUN_MOUNTS = ("/etc/fieldgate/fieldgate.toml", "/etc/fieldgate/rules", "/etc/fieldgate/mqtt",
              "/var/lib/fieldgate", "/tmp")
TOKEN = "image-test-t0ken"
ENV = {**os.environ, "CONTAINERS_CONF": str(ROOT / "deploy" / "podman" / "containers.conf")}


def podman(*args, check=True, timeout=120) -> subprocess.CompletedProcess:
    out = subprocess.run(["podman", *args], env=ENV, capture_output=True, text=True, timeout=timeout)
    if check and out.returncode != 0:
        pytest.fail(f"podman {' '.join(args)}: {out.returncode}\n{out.stdout}\n{out.stderr}")
    return out


@pytest.fixture(scope="module")
def image():
    for tool in ("podman", "runc", "debootstrap"):
        if not shutil.which(tool) and not pathlib.Path("/usr/sbin", tool).exists():
            pytest.fail(f"{tool} is not installed: scripts/test.sh installs it")
    out = subprocess.run([str(ROOT / "scripts" / "image.sh"), str(binary()), TAG],
                         env=ENV, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, f"the image did not build:\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}"
    return json.loads(podman("image", "inspect", TAG).stdout)[0]


def get(port: int, path: str, token: str | None = None) -> tuple:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=2) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return None, ""


def wait(what: str, cond, seconds: float = 30):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.2)
    pytest.fail(f"{what}: not within {seconds} s")


def test_the_image_holds_what_the_binary_needs_and_nothing_to_log_in_with(image):
    cfg = image["Config"]
    assert cfg["User"].split(":")[0] == str(USER_ID)
    assert set(cfg["ExposedPorts"]) == {"1883/tcp", "9180/tcp"}
    assert "/var/lib/fieldgate" in cfg["Volumes"]
    assert cfg["Entrypoint"][0] == "/usr/local/bin/fieldgate" and cfg["Entrypoint"][1:] + cfg["Cmd"] == RUN_ARGS
    assert cfg["StopSignal"] in ("SIGTERM", "15")
    # No shell: the health check is the binary's own probe.
    mounted = pathlib.Path(podman("image", "mount", TAG).stdout.strip())
    try:
        assert not (mounted / "bin" / "sh").exists() and not (mounted / "usr" / "bin").exists()
        assert (mounted / "usr/local/bin/fieldgate").stat().st_mode & 0o111
        for d in ("var/lib/fieldgate", "etc/fieldgate/mqtt"):
            assert (mounted / d).stat().st_uid == USER_ID, d
        assert "fieldgate:x:10001:10001:" in (mounted / "etc/passwd").read_text()
        assert "BEGIN CERTIFICATE" in (mounted / "etc/ssl/certs/ca-certificates.crt").read_text()
        assert (mounted / "etc/fieldgate/fieldgate.toml").read_text() == (K8S / "base" / "fieldgate.toml").read_text()
    finally:
        podman("image", "unmount", TAG)


@pytest.mark.parametrize("name", OVERLAYS)
def test_the_manifests_run_the_image_as_it_is_built(image, name):
    docs = render(K8S / "overlays" / name)
    c = gateway_container(docs)
    spec = pod_spec(workload(docs))
    assert c["image"] == TAG, "the overlay names the image the suite builds"
    assert spec["securityContext"]["runAsUser"] == USER_ID == int(image["Config"]["User"].split(":")[0])
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert {f"{p}/tcp" for p in ports.values()} == set(image["Config"]["ExposedPorts"])
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get_ = c[probe]["httpGet"]
        assert get_["path"] == path and ports[get_["port"]] == 9180
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    # The pod mounts what the run below mounts (what the image writes to is a volume,
    # the config is where the image's command reads it), plus, in the factory, the
    # serial adapter and the broker's ACL.
    assert set(RUN_MOUNTS) <= mounts
    assert mounts - set(RUN_MOUNTS) <= {"/dev/ttyUSB0", "/etc/fieldgate/mqtt-acl"}
    assert c["args"] == image["Config"]["Cmd"]


def test_the_image_runs_read_only_as_the_pod_does_and_keeps_its_queue(image, tmp_path):
    mqtt, admin, dead = free_port(), free_port(), free_port()
    for d in ("data", "tmp", "rules", "mqtt"):
        (tmp_path / d).mkdir()
    os.chown(tmp_path / "data", USER_ID, USER_ID)
    os.chmod(tmp_path / "tmp", 0o1777)
    (tmp_path / "rules" / "plant.sql").write_text(
        "CREATE STREAM readings (device STRING, n BIGINT)\n"
        "WITH (DATASOURCE = 'plant/+/reading', FORMAT = 'json');\n"
        "CREATE RULE forward INTO local, cloud AS SELECT device, n FROM readings;\n")
    # As the pod's config, on loopback ports of this machine; the cloud is not there, so
    # its results stay queued in the volume.
    (tmp_path / "fieldgate.toml").write_text(
        f'gateway_id = "image-test"\ndata_dir = "/var/lib/fieldgate"\nrules_dir = "/etc/fieldgate/rules"\n'
        f'[broker]\nlisten = "127.0.0.1:{mqtt}"\n'
        f'[admin]\nlisten = "127.0.0.1:{admin}"\ntoken_env = "FIELDGATE_ADMIN_TOKEN"\n'
        f'[sinks.local]\ntype = "file"\npath = "/var/lib/fieldgate/out/{{rule}}.jsonl"\n'
        f'[sinks.cloud]\ntype = "mqtt"\nhost = "127.0.0.1"\nport = {dead}\n')
    name = f"fieldgate-test-{mqtt}"

    def run():
        podman("run", "-d", "--name", name, "--network", "host", "--read-only",
               "--user", f"{USER_ID}:{USER_ID}", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
               "-e", f"FIELDGATE_ADMIN_TOKEN={TOKEN}", "-e", f"FIELDGATE_PROBE_ADDR=127.0.0.1:{admin}",
               "-v", f"{tmp_path / 'fieldgate.toml'}:/etc/fieldgate/fieldgate.toml:ro",
               "-v", f"{tmp_path / 'rules'}:/etc/fieldgate/rules:ro",
               "-v", f"{tmp_path / 'mqtt'}:/etc/fieldgate/mqtt:ro",
               "-v", f"{tmp_path / 'data'}:/var/lib/fieldgate",
               "-v", f"{tmp_path / 'tmp'}:/tmp", TAG)

    def logs() -> str:
        out = podman("logs", name, check=False)
        return out.stdout + out.stderr

    def stop() -> int:
        podman("stop", "--time", "20", name, timeout=60)
        code = int(podman("inspect", name, "--format", "{{.State.ExitCode}}").stdout.strip())
        podman("rm", name)
        return code

    podman("rm", "-f", name, check=False)
    run()
    try:
        wait("/readyz 200", lambda: get(admin, "/readyz")[0] == 200)
        assert get(admin, "/healthz")[0] == 200
        assert podman("healthcheck", "run", name, check=False).returncode == 0, "the image's health check"
        assert get(admin, "/api/sinks")[0] == 401, "the admin token comes from the environment"
        subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(mqtt), "-q", "1",
                        "-t", "plant/m1/reading", "-m", '{"device":"m1","n":7}'], check=True, timeout=30)
        out = tmp_path / "data" / "out" / "forward.jsonl"
        wait("the result in the data volume", lambda: out.exists() and '"n":7' in out.read_text())
        wait("the cloud's result queued", lambda: '"entries":1' in get(admin, "/api/sinks", TOKEN)[1].replace(" ", ""))
    except BaseException:
        print(logs())
        podman("rm", "-f", name, check=False)
        raise
    text = logs()
    assert stop() == 0, f"exit status after SIGTERM:\n{text}"
    assert (tmp_path / "data" / "queue" / "cloud.redb").exists()
    # The next start finds the queued result in the volume.
    run()
    try:
        wait("/readyz 200 again", lambda: get(admin, "/readyz")[0] == 200)
        sinks = json.loads(get(admin, "/api/sinks", TOKEN)[1])["sinks"]
        cloud = next(s for s in sinks if s["name"] == "cloud")
        assert cloud["queue"]["entries"] == 1, sinks
    finally:
        text = logs()
        assert stop() == 0, text
