#!/usr/bin/env bash
# Point the stable gateway Service at a track (blue or green) once that track is rolled out and ready.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: switch.sh [--dry-run] [-n NAMESPACE] [--timeout DURATION] blue|green

Sends the gateway's traffic (the stable Service `medialens-gateway`) to the given track, after checking
that every Deployment of that track has rolled out, that its gateway Service has ready endpoints and that
its /health/ready answers. Records the track it replaces in the Service's annotation
medialens.io/previous-track, which rollback.sh reads. Refuses, changing nothing, when the track is not ready.

  --dry-run          run the read-only checks, print the change instead of making it
  -n, --namespace    namespace of the deployment (default: the current context's)
  --timeout          how long to wait for each rollout (default 300s)
  -h, --help         this text
USAGE
}

SERVICE=medialens-gateway
ANNOTATION=medialens.io/previous-track
DEPLOYMENTS=(gateway relay video audio data)
dry_run=0 timeout=300s namespace="" target=""

while (($#)); do
  case $1 in
    --dry-run) dry_run=1 ;;
    -n | --namespace) namespace=${2:?--namespace needs a value}; shift ;;
    --timeout) timeout=${2:?--timeout needs a value}; shift ;;
    -h | --help) usage; exit 0 ;;
    blue | green) target=$1 ;;
    *) usage >&2; exit 2 ;;
  esac
  shift
done
[[ -n $target ]] || { usage >&2; exit 2; }

kc=(kubectl)
[[ -n $namespace ]] && kc+=(--namespace "$namespace")

say() { printf 'switch: %s\n' "$*"; }
refuse() { printf 'switch: REFUSED: %s\n' "$*" >&2; exit 1; }

current=$("${kc[@]}" get service "$SERVICE" -o jsonpath='{.spec.selector.track}') \
  || refuse "cannot read Service $SERVICE (apply deploy/k8s/stable first)"
say "live track: ${current:-none}; target: $target"
if [[ $current == "$target" ]]; then
  say "$target is already live; nothing to do"
  exit 0
fi

for name in "${DEPLOYMENTS[@]}"; do
  "${kc[@]}" rollout status "deployment/medialens-$name-$target" --timeout "$timeout" \
    || refuse "deployment/medialens-$name-$target has not rolled out"
done

ready=$("${kc[@]}" get endpoints "$SERVICE-$target" -o jsonpath='{.subsets[*].addresses[*].ip}') \
  || refuse "cannot read the endpoints of Service $SERVICE-$target"
[[ -n $ready ]] || refuse "Service $SERVICE-$target has no ready endpoints"
say "ready endpoints of $SERVICE-$target: $ready"

# Smoke check through the API server's service proxy: no pod to start, no port to forward.
ns=${namespace:-$(kubectl config view --minify -o jsonpath='{..namespace}')}
"${kc[@]}" get --raw "/api/v1/namespaces/${ns:-default}/services/$SERVICE-$target:http/proxy/health/ready" >/dev/null \
  || refuse "GET /health/ready on $SERVICE-$target failed"
say "/health/ready of $SERVICE-$target answered"

# Selector and annotation in one patch, so the Service is never half switched.
patch=$(printf '{"metadata":{"annotations":{"%s":"%s"}},"spec":{"selector":{"track":"%s"}}}' \
  "$ANNOTATION" "$current" "$target")
if ((dry_run)); then
  say "dry run, would run: ${kc[*]} patch service $SERVICE --type merge -p '$patch'"
  exit 0
fi
"${kc[@]}" patch service "$SERVICE" --type merge -p "$patch"
live=$("${kc[@]}" get endpoints "$SERVICE" -o jsonpath='{.subsets[*].addresses[*].ip}')
say "live track is now $target (endpoints: ${live:-none yet}); roll back with deploy/scripts/rollback.sh"
