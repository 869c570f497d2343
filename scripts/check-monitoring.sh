#!/usr/bin/env bash
# Checks the alert rules: `promtool check rules` and the unit tests of
# deploy/prometheus/aurora-rules.test.yaml (`promtool test rules`), then, with helm, that the
# chart's PrometheusRule (metrics.prometheusRule.enabled) holds exactly the rules of that file,
# with the stream backlog thresholds scaled to aurora.streamMaxlen, and that Prometheus accepts
# them as rendered.
#
# promtool comes with Debian's `prometheus` package (`make services` installs it).
# Usage: scripts/check-monitoring.sh     (run by scripts/check-deploy.sh)
# Environment: HELM (a helm binary; without it the chart part is skipped), PYTHON (a python3
#              with PyYAML, default python3).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
RULES=deploy/prometheus/aurora-rules.yaml

die() { printf 'check-monitoring: %s\n' "$*" >&2; exit 1; }

command -v promtool >/dev/null 2>&1 \
  || die "promtool not found: install Debian's prometheus package (make services does)"
printf '  %s\n' "$(promtool --version 2>&1 | head -n 1)"

promtool check rules "$RULES"
(cd deploy/prometheus && promtool test rules aurora-rules.test.yaml)

if [[ -z "${HELM:-}" ]]; then
  echo "  chart's PrometheusRule: skipped (no HELM given)"
  exit 0
fi

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
for maxlen in 1000000 2500000; do
  "$HELM" template aurora k8s/aurora --namespace aurora \
    --set metrics.prometheusRule.enabled=true --set "aurora.streamMaxlen=$maxlen" \
    --show-only templates/prometheusrule.yaml >"$WORK/rendered-$maxlen.yaml" \
    || die "helm template with metrics.prometheusRule.enabled=true failed"
done

"$PYTHON" - "$RULES" "$WORK" <<'PY'
import sys, yaml
rules_path, work = sys.argv[1], sys.argv[2]
source = yaml.safe_load(open(rules_path))["groups"]

def rendered(maxlen):
    docs = [d for d in yaml.safe_load_all(open("%s/rendered-%d.yaml" % (work, maxlen))) if d]
    if len(docs) != 1 or docs[0].get("kind") != "PrometheusRule":
        sys.exit("check-monitoring: expected one PrometheusRule, got %r" % [d.get("kind") for d in docs])
    doc = docs[0]
    if doc.get("apiVersion") != "monitoring.coreos.com/v1":
        sys.exit("check-monitoring: PrometheusRule apiVersion %r" % doc.get("apiVersion"))
    groups = doc["spec"]["groups"]
    with open("%s/spec-%d.yaml" % (work, maxlen), "w") as f:
        yaml.safe_dump({"groups": groups}, f, sort_keys=False)
    return groups

if rendered(1000000) != source:
    sys.exit("check-monitoring: the chart's PrometheusRule differs from %s" % rules_path)
scaled = rendered(2500000)
changed = []
for g_src, g_out in zip(source, scaled):
    for r_src, r_out in zip(g_src["rules"], g_out["rules"]):
        if r_src != r_out:
            want = dict(r_src, expr=r_src["expr"].replace("* 1000000", "* 2500000"))
            if r_out != want:
                sys.exit("check-monitoring: rule %s changed by more than its threshold" % r_src.get("alert"))
            changed.append(r_src.get("alert"))
if not changed:
    sys.exit("check-monitoring: aurora.streamMaxlen changed no threshold of the PrometheusRule")
rules = sum(len(g["rules"]) for g in source)
print("  the chart's PrometheusRule holds the %d rules of %s; aurora.streamMaxlen scales %s" % (rules, rules_path, ", ".join(changed)))
PY
promtool check rules "$WORK/spec-1000000.yaml" "$WORK/spec-2500000.yaml" >/dev/null \
  || die "Prometheus refuses the rules as the chart renders them"
