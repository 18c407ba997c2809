#!/usr/bin/env bash
# Blue-green release: deploy the idle track, wait for it, smoke-check it, then switch the gateway to it.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: bluegreen.sh [--dry-run] [-n NAMESPACE] [--timeout DURATION] [--track blue|green]

Deploys the idle track (the one the stable Service `medialens-gateway` does not select, or --track) in two
steps. First its migration Job and the ConfigMap it reads alone (`kubectl apply -k deploy/k8s/overlays/TRACK
-l ...`, after deleting the previous Job: Jobs are immutable), waiting for the Job to complete: a failed
migration refuses the release before any of the track's processes start, since its workers consume the
live queues and would claim jobs against a schema their code does not know. Then the whole overlay
(`kubectl apply -k deploy/k8s/overlays/TRACK`), and hands over to switch.sh: every Deployment of the track
rolled out, ready endpoints on medialens-gateway-TRACK, its /health/ready answering through the API
server's service proxy, and only then the stable Service's selector patched, the old track recorded for
rollback.sh. The old track keeps running. Refuses to switch, and exits 1, when the new track is not ready.

Set the overlay's images first (`kustomize edit set image ...` in deploy/k8s/overlays/TRACK).

  --dry-run          print the kubectl commands that change the cluster instead of running them
                     (the read-only checks still run, against the track as it is now)
  -n, --namespace    namespace of the deployment (default: the current context's)
  --timeout          how long to wait for each rollout (default 300s; the migration gets 10m)
  --track            the track to deploy (default: the idle one)
  -h, --help         this text
USAGE
}

SERVICE=medialens-gateway
# The objects of the first step: the migration Job and the ConfigMap it reads.
MIGRATION_SELECTOR='app.kubernetes.io/component in (migrate,config)'
MIGRATION_WAIT_S=600
here=$(cd "$(dirname "$0")" && pwd)
overlays=$(cd "$here/../k8s/overlays" && pwd)
dry_run=0 timeout=300s namespace="" target="" switch_args=()

while (($#)); do
  case $1 in
    --dry-run) dry_run=1; switch_args+=(--dry-run) ;;
    -n | --namespace) namespace=${2:?--namespace needs a value}; switch_args+=(--namespace "$namespace"); shift ;;
    --timeout) timeout=${2:?--timeout needs a value}; shift ;;
    --track) target=${2:?--track needs blue or green}; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
  esac
  shift
done
switch_args+=(--timeout "$timeout")

kc=(kubectl)
[[ -n $namespace ]] && kc+=(--namespace "$namespace")

say() { printf 'bluegreen: %s\n' "$*"; }
refuse() { printf 'bluegreen: REFUSED: %s\n' "$*" >&2; exit 1; }
run() {  # a command that changes the cluster: printed on --dry-run, run otherwise
  if ((dry_run)); then
    say "dry run, would run: $*"
  else
    say "run: $*"
    "$@"
  fi
}

migrated() {  # wait for the track's migration Job: 0 once it completes, 1 once it fails or after 10 min
  local state deadline=$((SECONDS + MIGRATION_WAIT_S))
  while ((SECONDS < deadline)); do
    state=$("${kc[@]}" get job "medialens-migrate-$target" -o jsonpath='{.status.conditions[?(@.status=="True")].type}') || state=""
    case " $state " in
      *" Complete "*) say "migration Job medialens-migrate-$target completed"; return 0 ;;
      *" Failed "*) say "migration Job medialens-migrate-$target failed: kubectl logs job/medialens-migrate-$target"; return 1 ;;
    esac
    sleep "${MIGRATION_POLL_S:-5}"
  done
  say "migration Job medialens-migrate-$target did not end within ${MIGRATION_WAIT_S} s"
  return 1
}

live=$("${kc[@]}" get service "$SERVICE" -o jsonpath='{.spec.selector.track}') \
  || refuse "cannot read Service $SERVICE (apply deploy/k8s/stable first)"
case $live in blue) idle=green ;; green) idle=blue ;; *) idle=blue ;; esac
target=${target:-$idle}
case $target in blue | green) ;; *) usage >&2; exit 2 ;; esac
[[ $target != "$live" ]] || refuse "$target is the live track; deploy to the idle one ($idle)"
say "live track: ${live:-none}; deploying: $target"

# The migration first, alone: nothing of the new track may run before its schema is there.
run "${kc[@]}" delete job "medialens-migrate-$target" --ignore-not-found
run "${kc[@]}" apply -k "$overlays/$target" -l "$MIGRATION_SELECTOR"
if ((dry_run)); then
  say "dry run, would wait for job/medialens-migrate-$target to complete (10 min at most; refused if it fails)"
else
  migrated || refuse "the migration Job medialens-migrate-$target did not complete; nothing else of $target was applied, ${live:-nothing} stays live"
fi
run "${kc[@]}" apply -k "$overlays/$target"

# Rollouts, endpoints, the smoke check and the switch itself: switch.sh, which refuses an unready track.
"$here/switch.sh" "${switch_args[@]}" "$target" || refuse "$target is not ready; ${live:-nothing} stays live"
((dry_run)) || say "done: $target is live, ${live:-no track} kept for deploy/scripts/rollback.sh"
