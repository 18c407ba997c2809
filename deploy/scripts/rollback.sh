#!/usr/bin/env bash
# Point the stable gateway Service back at the track it served before the last switch.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: rollback.sh [--dry-run] [-n NAMESPACE] [--timeout DURATION]

Reads the previous track from the annotation medialens.io/previous-track on the Service
`medialens-gateway` (written by switch.sh) and switches back to it with switch.sh, which checks that
the track is still rolled out and ready first. A second rollback undoes the first.

  --dry-run          run the read-only checks, print the change instead of making it
  -n, --namespace    namespace of the deployment (default: the current context's)
  --timeout          how long to wait for each rollout (default 300s)
  -h, --help         this text
USAGE
}

args=() namespace=""
while (($#)); do
  case $1 in
    --dry-run) args+=(--dry-run) ;;
    -n | --namespace) namespace=${2:?--namespace needs a value}; args+=(--namespace "$namespace"); shift ;;
    --timeout) args+=(--timeout "${2:?--timeout needs a value}"); shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
  esac
  shift
done

kc=(kubectl)
[[ -n $namespace ]] && kc+=(--namespace "$namespace")

previous=$("${kc[@]}" get service medialens-gateway \
  -o jsonpath='{.metadata.annotations.medialens\.io/previous-track}')
case $previous in
  blue | green) ;;
  *) printf 'rollback: REFUSED: no previous track recorded on Service medialens-gateway\n' >&2; exit 1 ;;
esac
printf 'rollback: returning to %s\n' "$previous"
exec "$(dirname "$0")/switch.sh" "${args[@]}" "$previous"
