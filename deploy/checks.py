"""Policy checks on the rendered Kubernetes manifests and on docker-compose.yml, run by deploy/validate.sh.

    python deploy/checks.py k8s RENDER_DIR        # base.yaml, stable.yaml, overlay-*.yaml (kubectl kustomize)
    python deploy/checks.py compose RESOLVED.yml  # the output of `docker compose config`
    python deploy/checks.py dockerfile FILE...    # each Dockerfile's default (last) stage runs as non-root
    python deploy/checks.py metrics FILE...       # alert rules (*.yml) and dashboards (*.json): metric names

The JSON-schema validation of each object is kubernetes-validate's job; these are the rules no schema
states: resources, probes (on each process's own port, reachable from outside the pod), non-root, pinned
images, grace periods, no secrets in ConfigMaps, a PDB per Deployment, one autoscaler per Deployment, the
stable Service reaching both tracks, and the PostgreSQL connection budget; and the rules that hold the
manifests to the code, read from the sources (never imported, so no workspace is needed): every `MEDIALENS_*`
variable a manifest or compose sets is a setting of `medialens_shared.settings` with a value of its type,
the scratch directories sit on writable volumes, the grace periods cover the code's own shutdown timeouts,
and every metric an alert, a dashboard or an autoscaler queries is one the code exports, with its labels.
Needs PyYAML and jsonschema (both come with kubernetes-validate). Exits 1 on a violation.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import json
import math
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

Manifest = dict[str, Any]

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
KEDA_SCHEMA = HERE / "k8s" / "schemas" / "keda.json"
SHARED = REPO / "shared" / "src" / "medialens_shared"
SETTINGS_PY = SHARED / "settings.py"
#: The sources whose metric families every process may export (never the tests').
SOURCE_DIRS = (REPO / "shared" / "src", *sorted((REPO / "services").glob("*/src")))
SECRET_KEY = re.compile(r"(URL|PASSWORD|PASSWD|SECRET|TOKEN|API_KEYS?|CREDENTIALS?)$", re.IGNORECASE)
CREDENTIALS_IN_URL = re.compile(r"://[^/\s:@]+:[^/\s@]+@")
#: The processes that drain their running jobs at shutdown (MEDIALENS_WORKER_SHUTDOWN_GRACE_S).
WORKER_COMMANDS = {"medialens-video", "medialens-audio", "medialens-data"}
#: The long-running processes and the operations port each serves /health and /metrics on by default.
LONG_RUNNING = {"medialens-gateway", "medialens-relay", *WORKER_COMMANDS}
#: Below every grace period: the gateway and the relay stop within it (Kubernetes' default is 30 s).
SERVICE_SHUTDOWN_S = 30
#: The transaction that hands a stopping service's unfinished jobs back, or fails those at their last
#: attempt (after the drain and the broker's close), and their announcements, given this long in the margin;
#: the code bounds it by nothing shorter than the pool's timeout.
HAND_BACK_S = 5.0
#: Addresses that let probes and Prometheus reach a process from outside its pod's loopback.
ALL_INTERFACES = {"0.0.0.0", "::", ""}  # noqa: S104 - values a manifest must set, not addresses we bind


# --- facts read from the code, so that the checks follow it --------------------------------------------


@cache
def _module(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _missing(what: str, path: Path) -> SystemExit:
    return SystemExit(
        f"deploy/checks.py: {what} not found in {path.relative_to(REPO)}; update deploy/checks.py"
    )


def constant(path: Path, name: str) -> Any:
    """The literal value of the module-level assignment `name` in `path`."""
    for node in _module(path).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        else:
            continue
        if isinstance(target, ast.Name) and target.id == name:
            return ast.literal_eval(value)
    raise _missing(f"the constant {name}", path)


def keyword_default(path: Path, function: str, argument: str) -> Any:
    """The default of keyword-only `argument` of `function` (sync or async) in `path`."""
    for node in ast.walk(_module(path)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == function:
            for arg, default in zip(node.args.kwonlyargs, node.args.kw_defaults, strict=True):
                if arg.arg == argument and default is not None:
                    return ast.literal_eval(default)
    raise _missing(f"the default of {function}({argument}=)", path)


def call_keyword(path: Path, callee: str, keyword: str) -> Any:
    """The literal `keyword=` of a call of `callee` (a name or an attribute's name) in `path`."""
    for node in ast.walk(_module(path)):
        if isinstance(node, ast.Call) and _callee(node) == callee:
            for kw in node.keywords:
                if kw.arg == keyword:
                    return ast.literal_eval(kw.value)
    raise _missing(f"{callee}({keyword}=...)", path)


def _callee(call: ast.Call) -> str | None:
    func = call.func
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None


#: How pydantic reads a boolean from a variable.
BOOL_WORDS = {"0", "off", "f", "false", "n", "no", "1", "on", "t", "true", "y", "yes"}


@dataclass(frozen=True)
class Setting:
    """One `MEDIALENS_*` variable of `medialens_shared.settings.Settings`, as far as its source tells."""

    variable: str
    kind: str = "str"  # int, float, bool, str, choice, or group (a whole group as JSON)
    optional: bool = False
    choices: tuple[str, ...] = ()
    schemes: tuple[str, ...] = ()
    bounds: dict[str, float] = field(default_factory=dict)
    default: Any = None

    def problem(self, value: str) -> str | None:
        """Why the settings would refuse `value` (its type, its bounds), or None."""
        text = value.strip()
        number: float | None = None
        if self.kind == "group":
            return None
        if self.kind == "int":
            if not re.fullmatch(r"[+-]?\d+", text):
                return "is not a whole number"
            number = int(text)
        elif self.kind == "float":
            try:
                number = float(text)
            except ValueError:
                return "is not a number"
            if not math.isfinite(number):
                return "is not a finite number"
        elif self.kind == "bool":
            return None if text.lower() in BOOL_WORDS else "is not a boolean (true or false)"
        elif self.kind == "choice":
            return None if value in self.choices else f"is not one of {', '.join(self.choices)}"
        elif self.schemes and value.partition("://")[0].lower() not in self.schemes:
            return f"is not a URL of scheme {', '.join(self.schemes)}"
        limits = {"ge": (number, ">="), "le": (number, "<="), "gt": (number, ">"), "lt": (number, "<")}
        limits |= {"min_length": (len(value), ">="), "max_length": (len(value), "<=")}
        for bound, limit in self.bounds.items():
            got, op = limits.get(bound, (None, ""))
            if got is None:
                continue
            ok = {">=": got >= limit, "<=": got <= limit, ">": got > limit, "<": got < limit}[op]
            if not ok:
                return (
                    f"must be {op} {limit:g}" if "length" not in bound else f"must have length {op} {limit:g}"
                )
        return None


def _type_of(node: ast.expr, aliases: dict[str, ast.expr]) -> dict[str, Any]:
    """What a field's annotation says of the text a variable may hold."""
    if isinstance(node, ast.Constant) and node.value is None:
        return {"none": True}
    if isinstance(node, ast.Name):
        if node.id in aliases:
            return _type_of(aliases[node.id], aliases)
        return {"kind": {"int": "int", "float": "float", "bool": "bool"}.get(node.id, "str")}
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        left, right = _type_of(node.left, aliases), _type_of(node.right, aliases)
        merged = {k: v for k, v in (left | right).items() if k != "none"}
        merged["optional"] = bool(left.get("none") or right.get("none") or merged.get("optional"))
        return merged
    if isinstance(node, ast.Subscript):
        head = node.value.id if isinstance(node.value, ast.Name) else getattr(node.value, "attr", "")
        items = list(node.slice.elts) if isinstance(node.slice, ast.Tuple) else [node.slice]
        if head == "Literal":
            return {"kind": "choice", "choices": tuple(str(item.value) for item in items)}  # type: ignore[attr-defined]
        if head == "Optional":
            return _type_of(items[0], aliases) | {"optional": True}
        if head == "Annotated":
            found = _type_of(items[0], aliases)
            for meta in items[1:]:  # e.g. _scheme_of("amqp", "amqps"): the URL schemes taken
                args = meta.args if isinstance(meta, ast.Call) else []
                if args and all(isinstance(a, ast.Constant) and isinstance(a.value, str) for a in args):
                    found["schemes"] = tuple(a.value for a in args)  # type: ignore[attr-defined]
            return found
    return {"kind": "str"}


def _fields(
    cls: ast.ClassDef, classes: dict[str, ast.ClassDef]
) -> Iterator[tuple[str, ast.expr, ast.expr | None]]:
    for base in cls.bases:
        if isinstance(base, ast.Name) and base.id in classes:
            yield from _fields(classes[base.id], classes)
    for node in cls.body:
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and node.target.id != "model_config"
            and "ClassVar" not in ast.unparse(node.annotation)
        ):
            yield node.target.id, node.annotation, node.value


def _setting(
    variable: str, annotation: ast.expr, value: ast.expr | None, aliases: dict[str, ast.expr]
) -> Setting:
    found = _type_of(annotation, aliases)
    bounds: dict[str, float] = {}
    default = None
    if isinstance(value, ast.Call) and _callee(value) == "Field":
        for kw in value.keywords:
            if kw.arg in {"ge", "le", "gt", "lt", "min_length", "max_length"}:
                try:
                    bounds[kw.arg] = ast.literal_eval(kw.value)
                except ValueError:
                    continue
        if value.args:
            try:
                default = ast.literal_eval(value.args[0])
            except ValueError:
                default = None
    elif value is not None:
        try:
            default = ast.literal_eval(value)
        except ValueError:
            default = None
    return Setting(
        variable,
        kind=found.get("kind", "str"),
        optional=found.get("optional", False),
        choices=found.get("choices", ()),
        schemes=found.get("schemes", ()),
        bounds=bounds,
        default=default,
    )


@cache
def settings_model() -> tuple[str, dict[str, Setting]]:
    """The settings' prefix and every variable they read (`MEDIALENS_<GROUP>_<FIELD>`, and each group
    whole), read from settings.py as pydantic-settings reads them (env_nested_delimiter `_`, max split 1)."""
    module = _module(SETTINGS_PY)
    classes = {node.name: node for node in module.body if isinstance(node, ast.ClassDef)}
    aliases = {
        node.targets[0].id: node.value
        for node in module.body
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
    }
    root = classes.get("Settings")
    if root is None:
        raise _missing("class Settings", SETTINGS_PY)
    prefix = ""
    for node in root.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
            prefix = next(
                (ast.literal_eval(k.value) for k in node.value.keywords if k.arg == "env_prefix"), prefix
            )
    settings: dict[str, Setting] = {}
    for name, annotation, value in _fields(root, classes):
        variable = f"{prefix}{name}".upper()
        group = classes.get(annotation.id) if isinstance(annotation, ast.Name) else None
        if group is None:
            settings[variable] = _setting(variable, annotation, value, aliases)
            continue
        settings[variable] = Setting(variable, kind="group")
        for member, member_annotation, member_value in _fields(group, classes):
            member_variable = f"{variable}_{member}".upper()
            settings[member_variable] = _setting(member_variable, member_annotation, member_value, aliases)
    if len(settings) < 10 or not prefix:
        raise _missing("the settings' fields (Settings and its groups)", SETTINGS_PY)
    return prefix, settings


def setting(variable: str) -> Setting:
    found = settings_model()[1].get(variable)
    if found is None:
        raise _missing(f"the setting {variable}", SETTINGS_PY)
    return found


def env_problems(where: str, env: dict[str, str | None]) -> list[str]:
    """Each `MEDIALENS_*` variable of `env` that names no setting (the settings ignore it: a misspelt one
    leaves its setting at the default without a word), or holds a value its setting refuses."""
    prefix, settings = settings_model()
    tools = tuple(constant(SETTINGS_PY, "TOOL_VARIABLE_PREFIXES"))
    errors = []
    for name, value in env.items():
        variable = name.upper()
        if not variable.startswith(prefix) or variable.startswith(tools):
            continue
        known = settings.get(variable)
        if known is None:
            errors.append(
                f"{where}: {name} is not a setting of {SETTINGS_PY.relative_to(REPO)} (it would be ignored)"
            )
        elif value is not None and (problem := known.problem(str(value))) is not None:
            shown = "its value" if SECRET_KEY.search(name) else repr(value)  # never a secret's value
            errors.append(f"{where}: {name}: {shown} {problem}")
    return errors


@cache
def pool_defaults() -> tuple[dict[str, tuple[int, int]], tuple[int, int]]:
    """Each process's default (pool_size, max_overflow), as in medialens_shared.settings.POOL_DEFAULTS."""
    size, overflow = constant(SETTINGS_PY, "WORKER_POOL_DEFAULT")
    return constant(SETTINGS_PY, "POOL_DEFAULTS"), (int(size), int(overflow))


def default_port(process: str) -> int:
    """The port a MediaLens process serves /health and /metrics on when its settings do not say."""
    if process == "medialens-gateway":
        return int(setting("MEDIALENS_GATEWAY_PORT").default)
    return int(constant(SETTINGS_PY, "OPS_PORTS").get(process.removeprefix("medialens-"), 8100))


@cache
def shutdown_margin_s() -> float:
    """Seconds a stopping service may take beyond its drain (MEDIALENS_WORKER_SHUTDOWN_GRACE_S) before it has
    handed its unfinished jobs back, by the code's own timeouts: cancelling the consumer at the broker
    (`stop_consuming`), closing the broker connection after the drain (`BROKER_STOP_MARGIN_S`) and giving
    it up (`GIVE_UP_CLOSE_S`), stopping a job's CPU work (`CPU_STOP_S`); then the hand-back
    (`HAND_BACK_S`)."""
    return (
        float(keyword_default(SHARED / "worker.py", "stop_consuming", "timeout_s"))
        + float(constant(SHARED / "worker.py", "BROKER_STOP_MARGIN_S"))
        + float(constant(SHARED / "bus.py", "GIVE_UP_CLOSE_S"))
        + float(constant(SHARED / "tasks.py", "CPU_STOP_S"))
        + HAND_BACK_S
    )


@cache
def gateway_stop_s() -> float:
    """Seconds the gateway takes to stop after SIGTERM: uvicorn's graceful shutdown, then its pools' close."""
    gateway_main = REPO / "services" / "gateway" / "src" / "medialens_gateway" / "main.py"
    return float(call_keyword(gateway_main, "Config", "timeout_graceful_shutdown")) + float(
        constant(SHARED / "db.py", "CLOSE_TIMEOUT_S")
    )


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


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(key) == value for key, value in selector.items())


def process_of(container: Manifest) -> str:
    """The MediaLens process a container runs (`medialens-video`), or ''."""
    command = container.get("command") or [""]
    return str(command[0]) if str(command[0]).startswith("medialens-") else ""


def config_data(objs: list[Manifest]) -> dict[str, dict[str, str]]:
    return {
        obj["metadata"]["name"]: {key: str(value) for key, value in (obj.get("data") or {}).items()}
        for obj in objs
        if obj["kind"] == "ConfigMap"
    }


def effective_env(container: Manifest, maps: dict[str, dict[str, str]]) -> dict[str, str | None]:
    """The variables a container starts with: its ConfigMaps' (envFrom), then its own `env`, which win.
    None for one given by reference (a Secret, a field of the pod): its value is not in the manifest."""
    env: dict[str, str | None] = {}
    for source in container.get("envFrom", []):
        ref = source.get("configMapRef")
        if ref is not None:
            env |= {source.get("prefix", "") + key: value for key, value in maps.get(ref["name"], {}).items()}
    for entry in container.get("env", []):
        env[entry["name"]] = entry.get("value")
    return env


def process_port(process: str, env: dict[str, str | None]) -> int:
    variable = "MEDIALENS_GATEWAY_PORT" if process == "medialens-gateway" else "MEDIALENS_WORKER_HTTP_PORT"
    value = env.get(variable)
    return int(value) if value not in (None, "") and str(value).strip().isdigit() else default_port(process)


def check_workloads(objs: list[Manifest], *, pinned: bool) -> list[str]:
    """Resources, non-root, read-only root with a writable /tmp, grace, pinned images, probes, settings."""
    errors = []
    maps = config_data(objs)
    for obj in objs:
        spec = pod_spec(obj)
        if spec is None:
            continue
        where = name_of(obj)
        errors += check_pod(where, spec, maps)
        errors += check_storage(where, spec)
        errors += check_spread(obj)
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
            errors += check_process(at, obj, container, maps, pinned=pinned)
    return errors


def check_process(
    at: str, obj: Manifest, container: Manifest, maps: dict[str, dict[str, str]], *, pinned: bool
) -> list[str]:
    """A MediaLens process's settings, Secret, scratch volumes, probes, address, scrape annotations, pools."""
    process = process_of(container)
    if not process:
        return []
    spec = obj["spec"]["template"]["spec"]
    where = name_of(obj)
    errors = []
    env = effective_env(container, maps)
    own = {e["name"]: e.get("value") for e in container.get("env", [])}
    errors += env_problems(at, own)  # the ConfigMaps' keys are checked with the ConfigMaps
    errors += check_secret_sources(at, container)
    if pinned and env.get("MEDIALENS_ENVIRONMENT") != "production":
        errors.append(f"{at}: MEDIALENS_ENVIRONMENT is {env.get('MEDIALENS_ENVIRONMENT')!r}, not production")
    if process in WORKER_COMMANDS:
        errors += check_scratch(at, spec, container, env)
    if process in LONG_RUNNING and obj["kind"] == "Deployment":
        port = process_port(process, env)
        errors += check_probes(at, container, port)
        errors += check_listening(at, process, env)
        errors += check_scrape(where, obj, port)
        for variable in ("MEDIALENS_POSTGRES_POOL_SIZE", "MEDIALENS_POSTGRES_MAX_OVERFLOW"):
            if env.get(variable) in (None, ""):
                errors.append(f"{at}: {variable} is unset: each pod would take the process's default pool")
    return errors


def check_secret_sources(at: str, container: Manifest) -> list[str]:
    """The servers' URLs (they carry passwords) come from a Secret; no secret is written in the manifest."""
    errors = []
    from_secret = any("secretRef" in source for source in container.get("envFrom", []))
    given = {e["name"]: e for e in container.get("env", [])}
    for variable in (v for v in settings_model()[1] if v.endswith("_URL")):
        entry = given.get(variable)
        if entry is not None and "value" in entry:
            errors.append(
                f"{at}: {variable} is written in the manifest; take it from the Secret medialens-secrets"
            )
        elif not from_secret and (entry is None or "secretKeyRef" not in entry.get("valueFrom", {})):
            errors.append(f"{at}: {variable} comes from no Secret (envFrom secretRef or secretKeyRef)")
    for name, entry in given.items():
        if SECRET_KEY.search(name) and not name.endswith("_URL") and entry.get("value"):
            errors.append(f"{at}: {name} looks secret and is written in the manifest; put it in the Secret")
    return errors


def check_scratch(at: str, spec: Manifest, container: Manifest, env: dict[str, str | None]) -> list[str]:
    """A service's scratch and input cache directories are on a writable volume of its pod: the root
    filesystem is read-only, and a directory it cannot make stops the service at start."""
    volumes = {v["name"] for v in spec.get("volumes", []) if "emptyDir" in v or "ephemeral" in v}
    writable = [
        m["mountPath"].rstrip("/") + "/"
        for m in container.get("volumeMounts", [])
        if m["name"] in volumes and not m.get("readOnly")
    ]
    temp = env.get("TMPDIR") or "/tmp"  # noqa: S108 - Python's temporary directory, where None puts them
    errors = []
    for variable in ("MEDIALENS_WORKER_SCRATCH_DIR", "MEDIALENS_WORKER_INPUT_CACHE_DIR"):
        directory = (env.get(variable) or temp).rstrip("/") + "/"
        if not any(directory.startswith(mount) for mount in writable):
            errors.append(f"{at}: {variable} ({directory}) is on no writable volume of the pod (emptyDir)")
    return errors


def check_listening(at: str, process: str, env: dict[str, str | None]) -> list[str]:
    """The process listens beyond its pod's loopback, where probes and Prometheus reach it."""
    variable = "MEDIALENS_GATEWAY_HOST" if process == "medialens-gateway" else "MEDIALENS_WORKER_HTTP_HOST"
    host = env.get(variable)
    if host is None:
        host = setting(variable).default
    if host not in ALL_INTERFACES:
        return [f"{at}: {variable} is {host!r}: probes and Prometheus cannot reach it; set 0.0.0.0"]
    return []


def check_scrape(where: str, obj: Manifest, port: int) -> list[str]:
    """The Prometheus annotations name the port and path the process serves its metrics on."""
    annotations = obj["spec"]["template"].get("metadata", {}).get("annotations", {})
    if annotations.get("prometheus.io/scrape") != "true":
        return [f"{where}: no prometheus.io/scrape annotation: the alerts read every process's metrics"]
    errors = []
    if annotations.get("prometheus.io/port") != str(port):
        errors.append(f"{where}: prometheus.io/port is {annotations.get('prometheus.io/port')!r}, not {port}")
    if annotations.get("prometheus.io/path", "/metrics") != "/metrics":
        errors.append(f"{where}: prometheus.io/path is {annotations['prometheus.io/path']!r}, not /metrics")
    return errors


_QUANTITY = re.compile(r"(\d+(?:\.\d+)?)([EPTGMk]i?|[mun]|)")
_UNITS = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18}
_UNITS |= {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}


def quantity(text: str | int | float) -> float:
    match = _QUANTITY.fullmatch(str(text))
    if match is None:
        raise ValueError(f"not a quantity: {text!r}")
    return float(match[1]) * _UNITS.get(match[2], 1)


def check_storage(where: str, spec: Manifest) -> list[str]:
    """Disk-backed emptyDirs count toward the pod's ephemeral-storage limit (with the logs and the writable
    layer): their sizeLimits must fit within it, or a volume is evicted before it reaches its own limit."""
    limits = [c.get("resources", {}).get("limits", {}).get("ephemeral-storage") for c in containers(spec)]
    if not any(limits):
        return []
    total_limit = sum(quantity(limit) for limit in limits if limit)
    volumes = [
        v
        for v in spec.get("volumes", [])
        if "emptyDir" in v and (v["emptyDir"] or {}).get("medium") != "Memory"
    ]
    unsized = [v["name"] for v in volumes if not (v["emptyDir"] or {}).get("sizeLimit")]
    if unsized:
        return [
            f"{where}: emptyDir {', '.join(unsized)} has no sizeLimit (the pod has an ephemeral-storage "
            "limit)"
        ]
    sized = sum(quantity(v["emptyDir"]["sizeLimit"]) for v in volumes)
    if sized >= total_limit:
        return [
            f"{where}: its emptyDirs' sizeLimits ({sized / 2**30:.2f} GiB) leave no room within its "
            f"ephemeral-storage limit ({total_limit / 2**30:.2f} GiB) for logs and the writable layer"
        ]
    return []


def check_spread(obj: Manifest) -> list[str]:
    """A Deployment of several replicas spreads them over nodes: one node's loss must not be all of them."""
    if obj["kind"] != "Deployment" or int(obj["spec"].get("replicas", 1)) < 2:
        return []
    spec = obj["spec"]["template"]["spec"]
    spread = any(
        c.get("topologyKey") == "kubernetes.io/hostname" for c in spec.get("topologySpreadConstraints", [])
    )
    anti = spec.get("affinity", {}).get("podAntiAffinity")
    if not (spread or anti):
        return [
            f"{name_of(obj)}: {obj['spec']['replicas']} replicas but no topologySpreadConstraints over nodes"
        ]
    return []


def check_pod(where: str, spec: Manifest, maps: dict[str, dict[str, str]]) -> list[str]:
    """A grace period that covers each container's stop as the code bounds it; no Service link variables."""
    errors = []
    grace = spec.get("terminationGracePeriodSeconds", 30)
    if grace <= SERVICE_SHUTDOWN_S:
        errors.append(f"{where}: terminationGracePeriodSeconds {grace} is not > {SERVICE_SHUTDOWN_S}")
    for container in containers(spec):
        process = process_of(container)
        if process == "medialens-gateway":
            pause = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
            if grace < pause + gateway_stop_s():
                errors.append(
                    f"{where}: terminationGracePeriodSeconds {grace} is less than the gateway's preStop "
                    f"pause ({pause} s) + its stop ({gateway_stop_s():g} s)"
                )
        if process not in WORKER_COMMANDS:
            continue  # the relay stops within 30 s; a migration is not drained
        env = effective_env(container, maps)
        value = env.get("MEDIALENS_WORKER_SHUTDOWN_GRACE_S")
        drain = float(value) if value else float(setting("MEDIALENS_WORKER_SHUTDOWN_GRACE_S").default)
        if grace < drain + shutdown_margin_s():
            errors.append(
                f"{where}: terminationGracePeriodSeconds {grace} is less than the drain of container "
                f"{container['name']} ({drain:g} s) + {shutdown_margin_s():g} s (the code's stop timeouts)"
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
    ready = READINESS_PATHS.get(process_of(container), "/health/ready")
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
        errors += env_problems(name_of(obj), dict(obj.get("data") or {}))
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
            errors += check_trigger(obj, trigger, objs)
        for target in obj.get("spec", {}).get("secretTargetRef", []):
            # The Secret's keys are the processes' variables (envFrom): KEDA must read the one they read.
            errors += env_problems(name_of(obj), {target["key"]: None})
    return errors


def check_trigger(scaler: Manifest, trigger: Manifest, objs: list[Manifest]) -> list[str]:
    """A queue trigger watches the queue its target consumes (`<exchange>.<service>`, as `Topology.work_queue`
    names it); a Prometheus trigger queries metrics the code exports."""
    where = name_of(scaler)
    metadata = trigger.get("metadata", {})
    if trigger.get("type") == "prometheus":
        return [f"{where}: {e}" for e in promql_problems(metadata.get("query", ""), exported_metrics())]
    if trigger.get("type") != "rabbitmq":
        return []
    target = next(
        (
            o
            for o in objs
            if o["kind"] == "Deployment" and o["metadata"]["name"] == scaler["spec"]["scaleTargetRef"]["name"]
        ),
        None,
    )
    if target is None:
        return []  # check_autoscalers says so
    maps = config_data(objs)
    container = target["spec"]["template"]["spec"]["containers"][0]
    service = process_of(container).removeprefix("medialens-")
    exchange = (
        effective_env(container, maps).get("MEDIALENS_RABBITMQ_EXCHANGE")
        or setting("MEDIALENS_RABBITMQ_EXCHANGE").default
    )
    queue = f"{exchange}.{service}"
    if metadata.get("queueName") != queue:
        return [
            f"{where}: watches queue {metadata.get('queueName')!r}, but {name_of(target)} consumes {queue!r}"
        ]
    return []


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
    maps = config_data(objs)
    defaults, worker_default = pool_defaults()
    for obj in objs:
        if obj["kind"] != "Deployment":
            continue
        container = obj["spec"]["template"]["spec"]["containers"][0]
        size, overflow = defaults.get(process_of(container).removeprefix("medialens-"), worker_default)
        env = effective_env(container, maps)
        with contextlib.suppress(TypeError, ValueError):  # a value of the wrong type: check_workloads says so
            size = int(env.get("MEDIALENS_POSTGRES_POOL_SIZE") or size)
        with contextlib.suppress(TypeError, ValueError):
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


# --- metrics: what alerts, dashboards and autoscalers query is what the code exports ----------------------

#: prometheus-client's metric classes (and the collectors' metric families) and the series each exposes.
METRIC_TYPES = {
    "Counter": "counter",
    "CounterMetricFamily": "counter",
    "Gauge": "gauge",
    "GaugeMetricFamily": "gauge",
    "Histogram": "histogram",
    "HistogramMetricFamily": "histogram",
    "Summary": "summary",
    "SummaryMetricFamily": "summary",
    "Info": "info",
    "InfoMetricFamily": "info",
}
SERIES_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
}
#: The families prometheus-client's default registry holds beside ours (the process collector's on Linux,
#: the platform's and the garbage collector's), with their labels.
BUILTIN_SERIES: dict[str, frozenset[str]] = {
    **{
        name: frozenset()
        for name in (
            "process_resident_memory_bytes",
            "process_virtual_memory_bytes",
            "process_start_time_seconds",
            "process_cpu_seconds_total",
            "process_open_fds",
            "process_max_fds",
        )
    },
    "python_info": frozenset({"implementation", "major", "minor", "patchlevel", "version"}),
    **{
        f"python_gc_{name}_total": frozenset({"generation"})
        for name in ("objects_collected", "objects_uncollectable", "collections")
    },
}
#: Labels the scrape adds to every series (the target's: a pod found by its annotations, or a PodMonitor's),
#: beside a family's own.
TARGET_LABELS = frozenset({"job", "instance", "namespace", "pod", "container", "endpoint", "node"})
#: The metric names we hold to the code: ours, and prometheus-client's own.
OUR_METRIC = re.compile(r"(?<![\w:])((?:medialens|process|python)_[a-zA-Z0-9_]*)(\s*\{([^}]*)\})?")


@cache
def exported_metrics() -> dict[str, frozenset[str]]:
    """Every series name the processes may expose, with the labels it carries, from the sources: each
    prometheus-client metric (or collector family) made with a literal name, as it is exposed (a counter's
    `_total`, a histogram's `_bucket`, `_sum` and `_count`)."""
    series = dict(BUILTIN_SERIES)
    for directory in SOURCE_DIRS:
        for path in sorted(directory.rglob("*.py")):
            for node in ast.walk(_module(path)):
                if not (isinstance(node, ast.Call) and _callee(node) in METRIC_TYPES and node.args):
                    continue
                name = node.args[0]
                if not (isinstance(name, ast.Constant) and isinstance(name.value, str)):
                    continue
                labels_node = node.args[2] if len(node.args) > 2 else None
                for kw in node.keywords:
                    if kw.arg in {"labelnames", "labels"}:
                        labels_node = kw.value
                labels: set[str] = set()
                if isinstance(labels_node, ast.List | ast.Tuple):
                    labels = {str(e.value) for e in labels_node.elts if isinstance(e, ast.Constant)}
                kind = METRIC_TYPES[_callee(node)]  # type: ignore[index]
                family = name.value.removesuffix("_total") if kind == "counter" else name.value
                for suffix in SERIES_SUFFIXES[kind]:
                    extra = (
                        {"le"}
                        if suffix == "_bucket"
                        else {"quantile"}
                        if kind == "summary" and not suffix
                        else set()
                    )
                    series[family + suffix] = frozenset(labels | extra)
    if not any(name.startswith("medialens_") for name in series):
        raise _missing("any medialens_* metric", SHARED)
    return series


def promql_problems(expr: str, series: dict[str, frozenset[str]]) -> list[str]:
    """Each series `expr` names that no process exports, and each label it matches on that the series has
    not: either would leave the query empty, and an alert on it silent for good."""
    errors = []
    for match in OUR_METRIC.finditer(re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)):
        name, selector = match[1], match[3]
        labels = series.get(name)
        if labels is None:
            family = next((f for f in series if name.startswith(f) or f.startswith(name)), None)
            hint = f" (the code exports {family})" if family else ""
            errors.append(f"{name} is exported by no process{hint}")
            continue
        known = labels | TARGET_LABELS | {"__name__"}
        errors.extend(
            f"{name} has no label {label} (its labels: {', '.join(sorted(labels)) or 'none'})"
            for label in re.findall(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", selector or "")
            if label not in known
        )
    return errors


def queries(path: Path) -> Iterator[tuple[str, str]]:
    """(where, PromQL) of a Prometheus rules file (*.yml) or a Grafana dashboard (*.json)."""
    if path.suffix == ".json":
        dashboard = json.loads(path.read_text())

        def panels(items: list[Manifest]) -> Iterator[Manifest]:
            for panel in items:
                yield panel
                yield from panels(panel.get("panels", []))

        for panel in panels(dashboard.get("panels", [])):
            for target in panel.get("targets", []):
                if target.get("expr"):
                    yield f"{path.name} panel {panel.get('title')!r}", target["expr"]
        for variable in dashboard.get("templating", {}).get("list", []):
            query = variable.get("query")
            if variable.get("type") == "query" and isinstance(query, str):
                yield f"{path.name} variable {variable.get('name')}", query
        return
    for group in (yaml.safe_load(path.read_text()) or {}).get("groups", []):
        for rule in group.get("rules", []):
            yield f"{path.name} {rule.get('alert') or rule.get('record')}", str(rule.get("expr", ""))


def check_metrics(files: list[Path]) -> list[str]:
    series = exported_metrics()
    errors = []
    count = 0
    for path in files:
        for where, expr in queries(path):
            count += 1
            errors += [f"{where}: {problem}" for problem in promql_problems(expr, series)]
    ours = sum(name.startswith("medialens_") for name in series)
    say(f"  {count} queries against the {ours} medialens_* series the code exports")
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
            errors += check_compose_process(name, service)
        if is_server and not service.get("healthcheck"):
            errors.append(f"compose server {name}: no healthcheck")
        if is_server:
            say(f"  compose server {name}: healthcheck {' '.join(map(str, service['healthcheck']['test']))}")
    if not services.get("gateway", {}).get("ports"):
        errors.append("compose service gateway: publishes no port")
    return errors


def check_compose_process(name: str, service: Manifest) -> list[str]:
    """A MediaLens process's variables are settings with values of their types, and its healthcheck asks
    the port the process serves on."""
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.partition("=")[::2] for item in environment)
    errors = env_problems(f"compose service {name}", environment)
    command = service.get("command") or []
    process = str(command[0]) if command else ""
    test = " ".join(map(str, (service.get("healthcheck") or {}).get("test", [])))
    asked = re.search(r"https?://[^/:]+:(\d+)/health/", test)
    if process in LONG_RUNNING and asked is not None:
        port = process_port(process, environment)
        if int(asked[1]) != port:
            errors.append(
                f"compose service {name}: its healthcheck asks port {asked[1]}, {process} serves on {port}"
            )
    if process in WORKER_COMMANDS:
        value = environment.get("MEDIALENS_WORKER_SHUTDOWN_GRACE_S")
        drain = float(value) if value else float(setting("MEDIALENS_WORKER_SHUTDOWN_GRACE_S").default)
        grace = duration_s(str(service.get("stop_grace_period", "10s")))
        if grace < drain + shutdown_margin_s():
            errors.append(
                f"compose service {name}: stop_grace_period {grace:g} s is less than its drain ({drain:g} s) "
                f"+ {shutdown_margin_s():g} s (the code's stop timeouts): Docker would kill it mid-hand-back"
            )
    return errors


def duration_s(text: str) -> float:
    """A Compose duration (`1m0s`, `90s`, `1h`) in seconds."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s|us)", text)
    if not parts or "".join(a + b for a, b in parts) != text:
        raise ValueError(f"not a duration: {text!r}")
    scale = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6}
    return sum(float(amount) * scale[unit] for amount, unit in parts)


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
    metrics = sub.add_parser(
        "metrics", help="alert rules (*.yml) and dashboards (*.json) query exported metrics"
    )
    metrics.add_argument("files", type=Path, nargs="+")
    args = parser.parse_args()
    if args.what == "k8s":
        errors = check_k8s(args.render_dir, max_connections=args.max_connections)
    elif args.what == "compose":
        errors = check_compose(args.resolved)
    elif args.what == "metrics":
        errors = check_metrics(args.files)
    else:
        errors = [error for file in args.files for error in check_dockerfile(file)]
    for error in errors:
        say(f"  FAIL {error}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
