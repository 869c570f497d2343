#!/usr/bin/env python3
"""Checks the environment variables the repository ships against the one naming rule
(docs/configuration.md): a flag every service shares is AURORA_<FLAG> (the `env = "..."` names
in crates/aurora-core/src/config.rs), a service's own flag is AURORA_<SERVICE>_<FLAG>.

Run by scripts/check-deploy.sh with the rendered Helm manifests as arguments. It fails when

- a variable set for a service (compose, the chart with each values file rendered, the
  Dockerfile, scripts/run.sh) is neither shared nor the rule's name of one of that service's
  flags, or a switch is set to something other than true/false;
- docs/configuration.md does not list exactly the flags in the code with the rule's names;
- the chart's values schema does not refuse every old name of that table;
- a shipped file still names an old variable.

Flags are read from the source: `#[arg(... long ...)]` fields in services/<service>/src.
"""

import pathlib
import re
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
SERVICES = ["mqtt-bridge", "device-registry", "ws-gateway", "federation-gateway", "eve-ingest"]
BOOLEAN = {"true", "false"}

errors = []


def fail(message):
    errors.append(message)


def rule(service, flag):
    return ("AURORA_%s_%s" % (service, flag)).replace("-", "_").upper()


def arg_attributes(text):
    """Yields (attribute body, field name, field type) for every #[arg(...)] of a field."""
    for start in re.finditer(r"#\[arg\(", text):
        i, depth = start.end(), 1
        while depth and i < len(text):
            depth += {"(": 1, ")": -1}.get(text[i], 0)
            i += 1
        body = text[start.end():i - 1]
        field = re.match(
            r"\](?:\s*(?:///[^\n]*|#\[[^\]]*\]))*\s*(?:pub(?:\([a-z]+\))?\s+)?(\w+)\s*:\s*([^,\n]+)",
            text[i:],
        )
        if field:
            yield body, field.group(1), field.group(2).strip()


def shared_variables():
    text = (ROOT / "crates/aurora-core/src/config.rs").read_text()
    return set(re.findall(r'\benv\s*=\s*"(AURORA_[A-Z0-9_]+)"', text))


def service_flags(service):
    """{flag: is_switch} of a service, and the variables its code still names itself."""
    flags, named = {}, []
    for path in sorted((ROOT / "services" / service / "src").rglob("*.rs")):
        for body, field, ty in arg_attributes(path.read_text()):
            if not re.search(r"\blong\b", body):
                continue
            long = re.search(r'\blong\s*=\s*"([^"]+)"', body)
            flag = long.group(1) if long else field.replace("_", "-")
            flags[flag] = ty == "bool"
            env = re.search(r'\benv\s*=\s*"([^"]+)"', body)
            if env and env.group(1) != rule(service, flag):
                named.append("%s --%s names %s" % (service, flag, env.group(1)))
    # Core flag groups without variables of their own (e.g. ListenerArgs) are the service's
    # own flags under the rule when the service flattens them.
    core = (ROOT / "crates/aurora-core/src/config.rs").read_text()
    service_text = "".join(p.read_text() for p in (ROOT / "services" / service / "src").rglob("*.rs"))
    for group in re.finditer(r"pub struct (\w+) \{(.*?)\n\}", core, re.S):
        if group.group(1) in ("CommonArgs", "NatsArgs", "JwtArgs"):
            continue
        if not re.search(r"\b%s\b" % group.group(1), service_text):
            continue
        for body, field, ty in arg_attributes(group.group(2)):
            if re.search(r"\blong\b", body) and not re.search(r"\benv\s*=", body):
                long = re.search(r'\blong\s*=\s*"([^"]+)"', body)
                flags[long.group(1) if long else field.replace("_", "-")] = ty == "bool"
    return flags, named


SHARED = shared_variables()
FLAGS, NAMED = {}, []
for svc in SERVICES:
    FLAGS[svc], named = service_flags(svc)
    NAMED.extend(named)
    if not FLAGS[svc]:
        fail("no flags found in services/%s/src: is the flag parser out of date?" % svc)
if not {"AURORA_NAMESPACE", "AURORA_REDIS_URL", "AURORA_NATS_URL", "AURORA_JWT_SECRET"} <= SHARED:
    fail("the shared variables were not found in crates/aurora-core/src/config.rs")


def check_var(where, service, name, value=None):
    """One variable set for `service` (None: for every service)."""
    if not name.startswith("AURORA_") or name in SHARED:
        return
    services = [service] if service else SERVICES
    for svc in services:
        for flag, switch in FLAGS[svc].items():
            if rule(svc, flag) == name:
                if service is None:
                    fail("%s: %s is %s's own variable, set here for every service" % (where, name, svc))
                elif switch and value is not None and str(value).lower() not in BOOLEAN:
                    fail("%s: %s is a switch: true or false, not %r" % (where, name, value))
                return
    fail("%s: %s is neither a shared variable nor AURORA_<SERVICE>_<FLAG> of a flag of %s"
         % (where, name, service or "any service"))


# --- compose -------------------------------------------------------------------------------
compose = yaml.safe_load((ROOT / "deploy/compose.yaml").read_text())
for name, svc in compose["services"].items():
    service = ((svc.get("build") or {}).get("args") or {}).get("SERVICE")
    if service not in SERVICES:
        continue
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    for var, value in env.items():
        check_var("deploy/compose.yaml %s" % name, service, var, value)

# --- Dockerfile ----------------------------------------------------------------------------
dockerfile = (ROOT / "deploy/Dockerfile").read_text().replace("\\\n", " ")
for line in dockerfile.splitlines():
    if line.startswith("ENV "):
        for var in re.findall(r"\b([A-Z][A-Z0-9_]*)=", line):
            check_var("deploy/Dockerfile", None, var)

# --- the chart, rendered -------------------------------------------------------------------
for rendered in sys.argv[1:]:
    docs = [d for d in yaml.safe_load_all(pathlib.Path(rendered).read_text()) if d]
    configmaps = {d["metadata"]["name"]: d.get("data") or {}
                  for d in docs if d.get("kind") == "ConfigMap"}
    deployments = [d for d in docs if d.get("kind") in ("Deployment", "StatefulSet")]
    if not deployments:
        fail("%s: no Deployment or StatefulSet rendered" % rendered)
    for cm, data in configmaps.items():
        for var in data:
            check_var("%s ConfigMap %s" % (rendered, cm), None, var)
    for dep in deployments:
        service = dep["metadata"]["labels"]["app.kubernetes.io/component"]
        for container in dep["spec"]["template"]["spec"]["containers"]:
            for item in container.get("env") or []:
                check_var("%s %s %s" % (rendered, dep["kind"], dep["metadata"]["name"]),
                          service, item["name"], item.get("value"))

# --- scripts/run.sh ------------------------------------------------------------------------
run = (ROOT / "scripts/run.sh").read_text().replace("\\\n", " ")
for line in run.splitlines():
    line = line.strip()
    start = re.match(r"start\s+(\S+)\s+\S+\s+(.*)", line)
    if start and start.group(1) in SERVICES:
        for token in start.group(2).split():
            if token == "--":
                break
            var, _, value = token.partition("=")
            check_var("scripts/run.sh %s" % start.group(1), start.group(1), var, value.strip('"'))
    exported = re.match(r"export\s+([A-Z][A-Z0-9_]*)=", line)
    if exported:
        check_var("scripts/run.sh (exported)", None, exported.group(1))

# --- docs/configuration.md against the code ------------------------------------------------
table_old = set()
listed = {svc: set() for svc in SERVICES}
section = None
for line in (ROOT / "docs/configuration.md").read_text().splitlines():
    heading = re.match(r"###\s+(\S+)\s*$", line)
    if heading:
        section = heading.group(1) if heading.group(1) in SERVICES else None
        continue
    # A flag added after the rename has no old variable: its old column is "—".
    row = re.match(r"\|\s*`--([a-z0-9-]+)`(?:[^|\\]|\\.)*\|\s*(?:`([A-Z0-9_]+)`|—)\s*\|\s*`([A-Z0-9_]+)`\s*\|", line)
    if section and row:
        flag, old, new = row.groups()
        if old:
            table_old.add(old)
        if flag not in FLAGS[section]:
            fail("docs/configuration.md: %s has no flag --%s (any more?)" % (section, flag))
        if new != rule(section, flag):
            fail("docs/configuration.md: %s --%s is %s, not %s" % (section, flag, rule(section, flag), new))
        listed[section].add(flag)
for svc in SERVICES:
    for flag in sorted(set(FLAGS[svc]) - listed[svc]):
        fail("docs/configuration.md: %s --%s (%s) is missing from the table" % (svc, flag, rule(svc, flag)))
if len(table_old) < 10:
    fail("docs/configuration.md: the per-service tables were not found")

# --- the values schema refuses the old names -----------------------------------------------
schema = yaml.safe_load((ROOT / "k8s/aurora/values.schema.json").read_text())
refused = set(schema["definitions"]["envVars"]["items"]["properties"]["name"].get("not", {}).get("enum", []))
for old in sorted(table_old - refused):
    fail("k8s/aurora/values.schema.json: extraEnv accepts the old variable %s" % old)

# --- no shipped file names an old variable -------------------------------------------------
skip = {ROOT / "k8s/aurora/values.schema.json", ROOT / "k8s/aurora/ci/bad-env-values.yaml"}
shipped = [ROOT / "README.md", ROOT / "scripts/run.sh"]
shipped += [p for p in (ROOT / "deploy").rglob("*") if p.is_file()]
shipped += [p for p in (ROOT / "k8s").rglob("*") if p.is_file()]
for path in shipped:
    if path in skip:
        continue
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        continue
    for old in sorted(table_old & set(re.findall(r"\bAURORA_[A-Z0-9_]+\b", text))):
        fail("%s names the old variable %s" % (path.relative_to(ROOT), old))

for note in NAMED:
    print("  note: %s (the rule's name is ignored until the flag loses its env attribute)" % note)
if errors:
    for e in errors:
        print("  " + e, file=sys.stderr)
    sys.exit("%d variable name problem(s): see docs/configuration.md" % len(errors))
print("  %d shared variables, %d service flags; compose, Dockerfile, chart (%d renders), run.sh "
      "and docs/configuration.md follow the rule" % (
          len(SHARED), sum(len(f) for f in FLAGS.values()), len(sys.argv) - 1))
