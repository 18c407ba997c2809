"""Policy checks on the rendered Kubernetes manifests and on docker-compose.yml, run by deploy/validate.sh.

    python deploy/checks.py k8s RENDER_DIR        # base.yaml, stable.yaml, overlay-*.yaml (kubectl kustomize)
    python deploy/checks.py compose RESOLVED.yml  # the output of `docker compose config`
    python deploy/checks.py dockerfile FILE...    # each Dockerfile's default (last) stage runs as non-root

The JSON-schema validation of each object is kubernetes-validate's job; these are the rules no schema
states: resources, probes (on each process's own port, reachable from outside the pod), non-root, pinned
images, grace periods, no secrets in ConfigMaps, a PDB per Deployment, one autoscaler per Deployment, the
stable Service reaching both tracks, and the PostgreSQL connection budget. Needs PyYAML and jsonschema (both
come with kubernetes-validate). Exits 1 on a violation.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import yaml

Manifest = dict[str, Any]

HERE = Path(__file__).resolve().parent
KEDA_SCHEMA = HERE / "k8s" / "schemas" / "keda.json"
#: The processes' default (pool_size, max_overflow), as in medialens_shared.settings.POOL_DEFAULTS.
POOL_DEFAULTS = {"medialens-gateway": (30, 0), "medialens-relay": (2, 2)}
WORKER_POOL_DEFAULT = (6, 0)
#: The port each long-running process serves /health and /metrics on (the gateway's API port; the others'
#: as in medialens_shared.settings.OPS_PORTS).
PROCESS_PORTS = {
    "medialens-gateway": 8000,
    "medialens-relay": 8104,
    "medialens-video": 8101,
    "medialens-audio": 8102,
    "medialens-data": 8103,
}
#: Shutdown grace of the services (the broker's graceful timeout) unless a container's environment sets
#: MEDIALENS_WORKER_SHUTDOWN_GRACE_S; pods must be given longer, by at least SHUTDOWN_MARGIN_S (cancelling
#: the consumer at the broker takes up to 5 s, stopping a job still running up to 5 s, closing the broker
#: connection up to 10 s).
SERVICE_SHUTDOWN_S = 30
SHUTDOWN_MARGIN_S = 20
#: The processes that drain their running jobs at shutdown (MEDIALENS_WORKER_SHUTDOWN_GRACE_S).
WORKER_COMMANDS = {"medialens-video", "medialens-audio", "medialens-data"}
SECRET_KEY = re.compile(r"(URL|PASSWORD|PASSWD|SECRET|TOKEN|API_KEYS?|CREDENTIALS?)$", re.IGNORECASE)
CREDENTIALS_IN_URL = re.compile(r"://[^/\s:@]+:[^/\s@]+@")


def say(line: str) -> None:
    sys.stdout.write(line + "\n")


def load(path: Path) -> list[Manifest]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def name_of(obj: Manifest) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def pod_spec(obj: Manifest) -> Manifest | None:
    if obj["kind"] in {"Deployment", "Job", "StatefulSet", "DaemonSet"}:
        return obj["spec"]["template"]["spec"]  # type: ignore[no-any-return]
    return None


def containers(spec: Manifest) -> Iterator[Manifest]:
    yield from spec.get("initContainers", [])
    yield from spec.get("containers", [])


def command_of(container: Manifest) -> str:
    """The container's command as one string: which MediaLens process it runs (`medialens-video`)."""
    return " ".join(container.get("command", []))


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(key) == value for key, value in selector.items())


def check_workloads(objs: list[Manifest], *, pinned: bool) -> list[str]:
    """Resources, non-root, read-only root with a writable /tmp, grace, pinned images, gateway probes."""
    errors = []
    for obj in objs:
        spec = pod_spec(obj)
        if spec is None:
            continue
        where = name_of(obj)
        errors += check_pod(where, spec)
        pod_non_root = spec.get("securityContext", {}).get("runAsNonRoot") is True
        tmp_volumes = {v["name"] for v in spec.get("volumes", []) if "emptyDir" in v}
        for container in containers(spec):
            at = f"{where} container {container['name']}"
            resources = container.get("resources", {})
            for kind in ("requests", "limits"):
                missing = {"cpu", "memory"} - set(resources.get(kind, {}))
                if missing:
                    errors.append(f"{at}: no {kind} for {', '.join(sorted(missing))}")
            security = container.get("securityContext", {})
            if not (pod_non_root or security.get("runAsNonRoot") is True):
                errors.append(f"{at}: runAsNonRoot is not set")
            if security.get("readOnlyRootFilesystem") is not True:
                errors.append(f"{at}: readOnlyRootFilesystem is not set")
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
            if mounts.get("/tmp") not in tmp_volumes:  # noqa: S108 - a path in a manifest, not a file we open
                errors.append(f"{at}: /tmp is not an emptyDir (the root filesystem is read-only)")
            image = container.get("image", "")
            if pinned and (image.endswith(":latest") or ":" not in image.rsplit("/", 1)[-1]):
                errors.append(f"{at}: image {image!r} is not pinned to a tag")
            port = PROCESS_PORTS.get(command_of(container))
            if port is not None and obj["kind"] == "Deployment":
                errors.extend(check_probes(at, container, port))
    return errors


def check_pod(where: str, spec: Manifest) -> list[str]:
    """A grace period that covers each container's drain; no Service link variables."""
    errors = []
    grace = spec.get("terminationGracePeriodSeconds", 30)
    if grace <= SERVICE_SHUTDOWN_S:
        errors.append(f"{where}: terminationGracePeriodSeconds {grace} is not > {SERVICE_SHUTDOWN_S}")
    for container in containers(spec):
        if command_of(container) not in WORKER_COMMANDS:
            continue  # the gateway and the relay stop within 30 s; a migration is not drained
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        drain = float(env.get("MEDIALENS_WORKER_SHUTDOWN_GRACE_S") or SERVICE_SHUTDOWN_S)
        if grace < drain + SHUTDOWN_MARGIN_S:
            errors.append(
                f"{where}: terminationGracePeriodSeconds {grace} is less than the drain of container "
                f"{container['name']} ({drain:g} s) + {SHUTDOWN_MARGIN_S} s"
            )
    if spec.get("enableServiceLinks") is not False:
        # The Services' link variables (MEDIALENS_GATEWAY_SERVICE_HOST, MEDIALENS_GATEWAY_PORT=tcp://...)
        # share the settings' prefix: they would be read as settings, or warned about at every start.
        errors.append(f"{where}: enableServiceLinks is not false")
    return errors


#: The readiness path of each process: the gateway's sits behind a Service, so it is routed by what the
#: process alone needs (`/health/serving`: PostgreSQL), never by dependencies every gateway shares, whose
#: outage would take the whole API out of the Service; the others route nothing and report every dependency.
READINESS_PATHS = {"medialens-gateway": "/health/serving"}


def check_probes(at: str, container: Manifest, port: int) -> list[str]:
    """Liveness on /health/live, readiness on the process's own (READINESS_PATHS, else /health/ready), both
    on a declared port that is the process's."""
    errors = []
    declared = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
    ready = READINESS_PATHS.get(command_of(container), "/health/ready")
    for probe, path in (("readinessProbe", ready), ("livenessProbe", "/health/live")):
        get = container.get(probe, {}).get("httpGet", {})
        if get.get("path") != path:
            errors.append(f"{at}: {probe} must GET {path}, not {get.get('path')!r}")
        elif declared.get(get.get("port"), get.get("port")) != port:
            errors.append(f"{at}: {probe} must reach port {port}, the process's, not {get.get('port')!r}")
    return errors


def check_ops_host(objs: list[Manifest]) -> list[str]:
    """The relay's and services' operations endpoints listen beyond the pod's loopback, for probes."""
    hosts = [
        (obj.get("data") or {}).get("MEDIALENS_WORKER_HTTP_HOST")
        for obj in objs
        if obj["kind"] == "ConfigMap" and obj["metadata"]["name"].startswith("medialens-config")
    ]
    if "0.0.0.0" not in hosts:  # noqa: S104 - the value a manifest must set, not an address we bind
        return ["ConfigMap medialens-config: set MEDIALENS_WORKER_HTTP_HOST=0.0.0.0 (for probes and metrics)"]
    return []


def check_config_maps(objs: list[Manifest]) -> list[str]:
    errors = []
    for obj in objs:
        if obj["kind"] == "Secret":
            errors.append(f"{name_of(obj)}: Secrets are created in the cluster, never kept in the repo")
        if obj["kind"] != "ConfigMap":
            continue
        for key, value in (obj.get("data") or {}).items():
            if SECRET_KEY.search(key) or CREDENTIALS_IN_URL.search(str(value)):
                errors.append(f"{name_of(obj)}: {key} looks secret; put it in the Secret medialens-secrets")
    return errors


def check_disruption_budgets(objs: list[Manifest]) -> list[str]:
    pdbs = [o for o in objs if o["kind"] == "PodDisruptionBudget"]
    errors = []
    for obj in objs:
        if obj["kind"] != "Deployment":
            continue
        labels = obj["spec"]["template"]["metadata"]["labels"]
        if not any(selects(p["spec"]["selector"].get("matchLabels", {}), labels) for p in pdbs):
            errors.append(f"{name_of(obj)}: no PodDisruptionBudget selects its pods")
    return errors


def check_autoscalers(objs: list[Manifest]) -> list[str]:
    """Each autoscaler targets a Deployment of this render, and no Deployment has two."""
    deployments = {o["metadata"]["name"] for o in objs if o["kind"] == "Deployment"}
    owners: dict[str, list[str]] = {}
    errors = []
    for obj in objs:
        if obj["kind"] not in {"ScaledObject", "HorizontalPodAutoscaler"}:
            continue
        target = obj["spec"]["scaleTargetRef"]["name"]
        if target not in deployments:
            errors.append(f"{name_of(obj)}: scales {target}, which is not in this render")
        owners.setdefault(target, []).append(name_of(obj))
    errors.extend(
        f"Deployment/{target}: scaled by {' and '.join(names)}; choose components/keda or components/hpa"
        for target, names in owners.items()
        if len(names) > 1
    )
    return errors


def check_keda(objs: list[Manifest]) -> list[str]:
    """The KEDA objects against our closed schema, and their TriggerAuthentication references."""
    schema = json.loads(KEDA_SCHEMA.read_text())
    auths = {o["metadata"]["name"] for o in objs if o["kind"] == "TriggerAuthentication"}
    errors = []
    for obj in objs:
        if obj.get("apiVersion", "").split("/")[0] != "keda.sh":
            continue
        if obj["kind"] not in schema["$defs"]:
            errors.append(f"{name_of(obj)}: no schema for this KEDA kind in {KEDA_SCHEMA.name}")
            continue
        validator = jsonschema.Draft202012Validator({**schema, "$ref": f"#/$defs/{obj['kind']}"})
        errors.extend(f"{name_of(obj)}: {e.json_path}: {e.message}" for e in validator.iter_errors(obj))
        for trigger in obj.get("spec", {}).get("triggers", []):
            ref = trigger.get("authenticationRef", {}).get("name")
            if ref is not None and ref not in auths:
                errors.append(f"{name_of(obj)}: TriggerAuthentication {ref} is not in this render")
    return errors


def max_replicas(obj: Manifest, objs: list[Manifest]) -> int:
    for scaler in objs:
        is_scaler = scaler["kind"] in {"ScaledObject", "HorizontalPodAutoscaler"}
        if is_scaler and scaler["spec"]["scaleTargetRef"]["name"] == obj["metadata"]["name"]:
            spec = scaler["spec"]
            return int(spec.get("maxReplicaCount", spec.get("maxReplicas", 100)))
    return int(obj["spec"].get("replicas", 1))


def connections(objs: list[Manifest]) -> dict[str, int]:
    """PostgreSQL connections each Deployment may hold at its most replicas: replicas x (pool + overflow)."""
    total = {}
    for obj in objs:
        if obj["kind"] != "Deployment":
            continue
        container = obj["spec"]["template"]["spec"]["containers"][0]
        size, overflow = POOL_DEFAULTS.get(container["command"][0], WORKER_POOL_DEFAULT)
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        size = int(env.get("MEDIALENS_POSTGRES_POOL_SIZE") or size)
        overflow = int(env.get("MEDIALENS_POSTGRES_MAX_OVERFLOW") or overflow)
        total[obj["metadata"]["name"]] = max_replicas(obj, objs) * (size + overflow)
    return total


def check_stable_service(stable: list[Manifest], overlays: dict[str, list[Manifest]]) -> list[str]:
    """The stable gateway Service selects one track's gateway pods, and would select either track's."""
    services = [o for o in stable if name_of(o) == "Service/medialens-gateway"]
    if not services:
        return ["stable: no Service medialens-gateway"]
    selector = dict(services[0]["spec"]["selector"])
    if "track" not in selector:
        return ["stable Service/medialens-gateway: its selector has no `track`"]
    errors = []
    for render, objs in overlays.items():
        for gateway in objs:
            is_gateway = gateway["metadata"]["name"].startswith("medialens-gateway")
            if gateway["kind"] != "Deployment" or not is_gateway:
                continue
            labels = gateway["spec"]["template"]["metadata"]["labels"]
            if not selects({**selector, "track": labels.get("track", "?")}, labels):
                errors.append(f"{render} {name_of(gateway)}: the stable Service cannot select its pods")
    return errors


def check_k8s(render_dir: Path, *, max_connections: int) -> list[str]:
    base = load(render_dir / "base.yaml")
    stable = load(render_dir / "stable.yaml")
    overlays = {p.stem: load(p) for p in sorted(render_dir.glob("overlay-*.yaml"))}
    if not overlays:
        return [f"{render_dir}: no overlay-*.yaml to check"]
    errors = [f"base: {e}" for e in check_workloads(base, pinned=False) + check_ops_host(base)]
    errors += [f"stable: {e}" for e in check_config_maps(stable)]
    for render, objs in overlays.items():
        if not any(o["kind"] == "Deployment" for o in objs):
            errors.append(f"{render}: renders no Deployment")
        found = (
            check_workloads(objs, pinned=True)
            + check_config_maps(objs)
            + check_disruption_budgets(objs)
            + check_autoscalers(objs)
            + check_keda(objs)
            + check_ops_host(objs)
        )
        errors += [f"{render}: {e}" for e in found]
        kinds = sorted({o["kind"] for o in objs})
        say(f"  {render}: {len(objs)} objects ({', '.join(kinds)})")
    errors += check_stable_service(stable, overlays)
    # During a switch both colours run at once, so two tracks must fit; 10% stays for migrations and psql.
    for render, objs in overlays.items():
        per_track = connections(objs)
        need = 2 * sum(per_track.values())
        say(
            f"  {render}: PostgreSQL connections at most replicas, two tracks: {need} "
            f"({', '.join(f'{k} {v}' for k, v in per_track.items())} per track)"
        )
        if need > max_connections * 0.9:
            errors.append(
                f"{render}: two tracks may open {need} PostgreSQL connections, over 90% of "
                f"max_connections={max_connections}; lower the pools or maxReplicaCount"
            )
    return errors


def stage_users(dockerfile: Path) -> dict[str, str]:
    """Each stage's name (or its index, unnamed) and the user it runs as, in order: its last USER, else
    the user of the stage it is built FROM, else root."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    users: dict[str, str] = {}
    stage = None
    for line in text.splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        instruction = words[0].upper()
        if instruction == "FROM":
            base = next(word for word in words[1:] if not word.startswith("--"))
            named = len(words) >= 4 and words[-2].upper() == "AS"
            stage = words[-1] if named else str(len(users))
            users[stage] = users.get(base, "root")
        elif instruction == "USER" and stage is not None:
            users[stage] = words[1].split(":")[0]
    return users


def runs_as_root(user: str) -> bool:
    return user in ("root", "0")


def check_dockerfile(dockerfile: Path) -> list[str]:
    """The default stage (the last: what a build naming no --target makes) runs as a non-root user."""
    users = stage_users(dockerfile)
    if not users:
        return [f"{dockerfile}: no FROM"]
    last, user = list(users.items())[-1]
    if runs_as_root(user):
        return [f"{dockerfile}: its last stage ({last}, the default target) runs as root; make runtime last"]
    say(f"  {dockerfile}: default stage {last} runs as user {user}")
    return []


def check_compose(resolved: Path) -> list[str]:
    """Only the gateway publishes a port; every server (an image, no build) has a healthcheck; every built
    service names a stage that runs as non-root."""
    services = yaml.safe_load(resolved.read_text())["services"]
    errors = []
    for name, service in services.items():
        if service.get("ports") and name != "gateway":
            errors.append(f"compose service {name}: publishes {service['ports']}; only the gateway may")
        is_server = "build" not in service
        if not is_server:
            errors += check_compose_build(name, service["build"])
        if is_server and not service.get("healthcheck"):
            errors.append(f"compose server {name}: no healthcheck")
        if is_server:
            say(f"  compose server {name}: healthcheck {' '.join(map(str, service['healthcheck']['test']))}")
    if not services.get("gateway", {}).get("ports"):
        errors.append("compose service gateway: publishes no port")
    return errors


def check_compose_build(name: str, build: Manifest) -> list[str]:
    dockerfile = Path(build["context"]) / build.get("dockerfile", "Dockerfile")
    target = build.get("target")
    if target is None:
        return [f"compose service {name}: builds {dockerfile} without a target; name the runtime stage"]
    users = stage_users(dockerfile)
    if target not in users:
        return [f"compose service {name}: target {target} is not a stage of {dockerfile}"]
    if runs_as_root(users[target]):
        return [f"compose service {name}: target {target} of {dockerfile} runs as root"]
    return []


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    k8s = sub.add_parser("k8s", help="rendered manifests: base.yaml, stable.yaml, overlay-*.yaml")
    k8s.add_argument("render_dir", type=Path)
    k8s.add_argument("--max-connections", type=int, default=200, help="the PostgreSQL server's (default 200)")
    compose = sub.add_parser("compose", help="a resolved compose file (`docker compose config`)")
    compose.add_argument("resolved", type=Path)
    dockerfile = sub.add_parser("dockerfile", help="Dockerfiles whose default stage must run as non-root")
    dockerfile.add_argument("files", type=Path, nargs="+")
    args = parser.parse_args()
    if args.what == "k8s":
        errors = check_k8s(args.render_dir, max_connections=args.max_connections)
    elif args.what == "compose":
        errors = check_compose(args.resolved)
    else:
        errors = [error for file in args.files for error in check_dockerfile(file)]
    for error in errors:
        say(f"  FAIL {error}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
