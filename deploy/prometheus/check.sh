#!/usr/bin/env bash
# Check the monitoring files offline with promtool (Debian package `prometheus`, installed when missing):
#   1. alerts.yml is valid, and every alert's unit test in alerts_test.yml passes
#   2. every PromQL expression of deploy/grafana/medialens.json parses (each becomes a recording rule of a
#      temporary rules file for `promtool check rules`; Grafana's $variables are replaced first)
#   3. every medialens_* metric the alerts and the dashboard name is defined in the code
set -euo pipefail
cd "$(dirname "$0")/../.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if ! command -v promtool >/dev/null; then
  ((EUID == 0)) || { echo "promtool missing: apt-get install prometheus" >&2; exit 1; }
  apt-get install -y -qq -o DPkg::Lock::Timeout=300 prometheus >/dev/null 2>&1 \
    || { apt-get update -qq -o DPkg::Lock::Timeout=300 >/dev/null && \
         apt-get install -y -qq -o DPkg::Lock::Timeout=300 prometheus >/dev/null; }
fi

echo "== alert rules"
promtool check rules deploy/prometheus/alerts.yml
promtool test rules deploy/prometheus/alerts_test.yml

echo "== dashboard queries"
python3 - deploy/grafana/medialens.json "$work/dashboard_rules.yml" <<'PY'
import json, re, sys
dashboard = json.load(open(sys.argv[1]))
variables = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h", "$job": ".*"}
def panels(items):
    for panel in items:
        yield panel
        yield from panels(panel.get("panels", []))
rules = []
for panel in panels(dashboard["panels"]):
    for target in panel.get("targets", []):
        expr = target["expr"]
        for name, value in variables.items():
            expr = expr.replace(name, value)
        if "$" in re.sub(r"\{\{[^}]*\}\}", "", expr):
            sys.exit(f"panel {panel['title']!r}: unknown variable in {expr!r}")
        rules.append({"record": f"dashboard:panel{panel['id']}:{target['refId']}", "expr": expr})
if not rules:
    sys.exit("the dashboard has no queries")
# JSON is YAML: promtool reads this file as a rules file.
json.dump({"groups": [{"name": "dashboard", "rules": rules}]}, open(sys.argv[2], "w"), indent=1)
print(f"{len(rules)} queries")
PY
promtool check rules "$work/dashboard_rules.yml"

echo "== metric names"
families() { sed -E 's/_(total|bucket|sum|count)$//' | sort -u; }
defined=$(grep -rhoE '"medialens_[a-z_]+"' shared/src services/*/src | tr -d '"' | families)
used=$(sed 's/#.*//' deploy/prometheus/alerts.yml | cat - deploy/grafana/medialens.json \
  | grep -oE 'medialens_[a-z_]+' | families)
missing=$(comm -13 <(echo "$defined") <(echo "$used"))
if [[ -n "$missing" ]]; then
  echo "metrics used by alerts or the dashboard but defined nowhere: $missing" >&2
  exit 1
fi
echo "$(wc -l <<<"$used") metric families used, all defined"
