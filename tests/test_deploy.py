"""The deployment files agree with each other and with the server (deploy/, docs/deploy.md).

No cluster and no systemd here: these read the files and check the numbers that must go
together (drain_seconds, the grace periods, the probes, the ports). HAProxy's config is
run for real by tests/test_haproxy.py. At the end, what the rolling restarts found in
the server's drain (both failed before the fix).
"""

from __future__ import annotations

import configparser
import json
import re
from pathlib import Path
from typing import Any

import anyio
import pytest
import yaml

from arraycrypto import ConfigError, ServerConfig
from arraycrypto.core.loading import load_server_config

from .harness.constants import SECRET
from .harness.peers import RawClient
from .harness.servers import running_server, server_config

DEPLOY = Path(__file__).parents[1] / "deploy"
KUBE = DEPLOY / "kubernetes"


def manifests() -> dict[str, dict[str, Any]]:
    """Every Kubernetes object in deploy/kubernetes/, by kind."""
    objects: dict[str, dict[str, Any]] = {}
    for path in sorted(KUBE.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc["kind"] != "Kustomization":
                assert doc["kind"] not in objects
                objects[doc["kind"]] = doc
    return objects


def fleet_config() -> ServerConfig:
    """The server config of deploy/kubernetes/secret.yaml, with a real secret in it."""
    text = manifests()["Secret"]["stringData"]["server_config.json"]
    return ServerConfig(**{**json.loads(text), "secret_key": SECRET})


def seconds(haproxy_time: str) -> float:
    """An HAProxy time ("250ms", "3s", "2m") in seconds."""
    number, unit = re.fullmatch(r"(\d+)(ms|s|m|h)?", haproxy_time).groups()  # type: ignore[union-attr]
    return int(number) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 0.001}[unit]


def haproxy_setting(keyword: str) -> str:
    """The value of an HAProxy config line (the one line starting with ``keyword``)."""
    lines = [
        line.strip()[len(keyword) :].strip()
        for line in (DEPLOY / "haproxy.cfg").read_text().splitlines()
        if line.strip().startswith(keyword + " ")
    ]
    assert len(lines) == 1, (keyword, lines)
    return lines[0]


def test_the_secret_placeholder_is_refused_until_replaced(tmp_path: Path) -> None:
    path = tmp_path / "server_config.json"
    path.write_text(manifests()["Secret"]["stringData"]["server_config.json"])
    with pytest.raises(ConfigError, match="secret_key"):
        load_server_config(path, create=False)
    assert fleet_config().drain_seconds > 0


def test_kubernetes_deployment_drains_within_its_grace_period() -> None:
    objects = manifests()
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    config = fleet_config()
    # readiness on /health (503 while draining); liveness on a route that stays 200.
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    assert container["livenessProbe"]["httpGet"]["path"] != "/health"
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pause = float(command[1])
    # Kubernetes counts the preStop pause inside the grace period, then SIGKILLs.
    assert pod["terminationGracePeriodSeconds"] >= pause + config.drain_seconds + 5
    assert objects["Deployment"]["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    # The config the pod mounts is the Secret's, at the path the server is given.
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "config"]
    config_path = container["args"][container["args"].index("--config") + 1]
    assert Path(config_path).parent == Path(mount["mountPath"])
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["config"]["secret"]["secretName"] == objects["Secret"]["metadata"]["name"]
    # Workers from the CPU limit, not the node's core count.
    assert "$(ARRAYCRYPTO_WORKERS)" in container["args"]


def test_kubernetes_service_reaches_the_pods() -> None:
    objects = manifests()
    template = objects["Deployment"]["spec"]["template"]
    (container,) = template["spec"]["containers"]
    (port,) = container["ports"]
    assert port["containerPort"] == fleet_config().port
    service = objects["Service"]["spec"]
    assert service["selector"].items() <= template["metadata"]["labels"].items()
    assert service["ports"][0]["targetPort"] == port["name"]
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["port"] == port["name"]
    budget = objects["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"]
    assert budget.items() <= template["metadata"]["labels"].items()


def test_kustomization_lists_every_manifest() -> None:
    listed = yaml.safe_load((KUBE / "kustomization.yaml").read_text())["resources"]
    files = {p.name for p in KUBE.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(listed) == sorted(files)


def test_systemd_unit_drains_within_its_stop_timeout() -> None:
    unit = configparser.ConfigParser(interpolation=None, strict=True)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string((DEPLOY / "arraycrypto.service").read_text())
    service = unit["Service"]
    start = service["ExecStart"]
    assert "serve --config /etc/arraycrypto/server_config.json --workers auto" in start
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["KillSignal"] == "SIGTERM"
    # Only the supervisor gets SIGTERM (it forwards one to each worker): a worker that
    # got a second one from systemd would stop at once instead of draining.
    assert service["KillMode"] == "mixed"
    assert float(service["TimeoutStopSec"]) >= fleet_config().drain_seconds + 5
    assert int(service["LimitNOFILE"]) > fleet_config().max_connections


def test_haproxy_timeouts_fit_the_server() -> None:
    config = fleet_config()
    # An old HAProxy process (after a reload) outlives a drain already under way.
    assert seconds(haproxy_setting("hard-stop-after")) > config.drain_seconds
    # A healthy tunnel is never idle longer than a tick or a ping interval.
    tunnel = seconds(haproxy_setting("timeout tunnel"))
    assert tunnel > 2 * max(config.tick_interval, config.ping_interval + config.ping_timeout)
    assert seconds(haproxy_setting("timeout http-request")) >= config.http_read_timeout
    assert haproxy_setting("balance") == "leastconn"
    assert "503" in haproxy_setting("retry-on").split()
    assert haproxy_setting("http-check expect") == "status 200"
    assert "uri /health" in haproxy_setting("http-check send")
    # Draining replicas keep their sessions when marked down: they close them, spread out.
    assert "on-marked-down" not in (DEPLOY / "haproxy.cfg").read_text().replace(
        "No `on-marked-down", ""
    )


# -- what the rolling restarts found in the server's drain ---------------------------------


@pytest.mark.anyio
async def test_drain_with_no_client_returns() -> None:
    # A replica that has no client yet (just restarted, or idle) is drained on SIGTERM
    # like any other: `arraycrypto serve` must exit 0, not with a traceback and 1.
    async with running_server(server_config()) as server:
        with anyio.fail_after(5):
            await server.drain(0.5)
        assert server.draining


@pytest.mark.anyio
async def test_drain_spreads_few_clients_over_the_window() -> None:
    # Five clients, a 2 s drain (closes over 1.2 s after a 0.4 s grace): spread evenly,
    # not 0.1 s apart within 0.4 s as the first version did.
    async with running_server(server_config()) as server:
        assert server.port
        clients = [await RawClient.connect(server.port) for _ in range(5)]
        for client in clients:
            await client.handshake()
        closed_at: list[float] = []

        async def goodbye(client: RawClient) -> None:
            assert await client.wait_closed(timeout=10) is not None
            closed_at.append(anyio.current_time())

        async with anyio.create_task_group() as tg:
            for client in clients:
                tg.start_soon(goodbye, client)
            tg.start_soon(server.drain, 2.0)
        assert max(closed_at) - min(closed_at) >= 0.7  # most of the 1.2 s close window
