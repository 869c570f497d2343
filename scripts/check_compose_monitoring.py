#!/usr/bin/env python3
"""Checks the monitoring of the compose stack (deploy/compose.yaml), run by
scripts/check-deploy.sh:

- deploy/prometheus/compose.yml scrapes every Aurora service of the compose file at
  <service>:<the port of its AURORA_OPS_ADDR>, with the `namespace` and `site` labels equal to
  the compose defaults of AURORA_NAMESPACE and AURORA_SITE_ID (the dashboard and the alert
  rules filter by them), and `promtool check config` accepts it (with its rule files), when
  promtool is installed;
- the prometheus service mounts that file and every rule file it names;
- Grafana, if in the stack, gets the provisioning directory with a Prometheus data source
  pointing at the stack's Prometheus, and the dashboard file where the dashboard provider reads.
"""

import pathlib
import re
import shutil
import subprocess
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "deploy/compose.yaml"
PROMETHEUS = ROOT / "deploy/prometheus/compose.yml"

errors = []


def fail(message):
    errors.append(message)


def default_of(value):
    """The value of "${VAR:-default}" when VAR is unset, or the literal."""
    m = re.fullmatch(r"\$\{[A-Za-z_][A-Za-z0-9_]*:?-([^}]*)\}", str(value))
    return m.group(1) if m else str(value)


def mounts(svc):
    """container path -> host path (relative to deploy/) of the bind mounts of a service."""
    out = {}
    for v in svc.get("volumes") or []:
        if isinstance(v, str):
            parts = v.split(":")
            if len(parts) >= 2 and parts[0].startswith("."):
                out[parts[1]] = parts[0]
        elif isinstance(v, dict) and v.get("type") == "bind":
            out[v["target"]] = v["source"]
    return out


def main():
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    anchors_env = {}
    aurora = {}
    for name, svc in services.items():
        args = ((svc.get("build") or {}).get("args")) or {}
        if "SERVICE" not in args:
            continue
        env = svc.get("environment") or {}
        anchors_env = env
        ops = str(env.get("AURORA_OPS_ADDR", ""))
        if ":" not in ops:
            fail("compose service %s sets no AURORA_OPS_ADDR" % name)
            continue
        aurora[name] = int(ops.rsplit(":", 1)[1])
    namespace = default_of(anchors_env.get("AURORA_NAMESPACE", "aurora"))
    site = default_of(anchors_env.get("AURORA_SITE_ID", ""))

    prom = yaml.safe_load(PROMETHEUS.read_text())
    scraped = {}
    for job in prom.get("scrape_configs") or []:
        for sc in job.get("static_configs") or []:
            for target in sc.get("targets") or []:
                scraped[target] = sc.get("labels") or {}
    for name, port in sorted(aurora.items()):
        target = "%s:%d" % (name, port)
        if target not in scraped:
            fail("%s does not scrape %s (compose service %s)" % (PROMETHEUS.relative_to(ROOT), target, name))
            continue
        labels = scraped[target]
        if labels.get("namespace") != namespace or labels.get("site") != site:
            fail(
                "%s: %s has labels %s, expected namespace=%s, site=%s (the compose defaults)"
                % (PROMETHEUS.relative_to(ROOT), target, labels, namespace, site)
            )

    prometheus = services.get("prometheus")
    if not prometheus:
        fail("deploy/compose.yaml has no prometheus service")
    else:
        m = mounts(prometheus)
        config = next((a for a in prometheus.get("command") or [] if a.startswith("--config.file=")), "")
        config = config.split("=", 1)[1] if config else "/etc/prometheus/prometheus.yml"
        if (ROOT / "deploy" / m.get(config, "")).resolve() != PROMETHEUS.resolve():
            fail("the prometheus service does not mount %s at %s" % (PROMETHEUS.relative_to(ROOT), config))
        for rule in prom.get("rule_files") or []:
            inside = str(pathlib.PurePosixPath(config).parent / rule)
            host = m.get(inside)
            if not host or not (ROOT / "deploy" / host).exists():
                fail("the prometheus service does not mount the rule file %s at %s" % (rule, inside))

    grafana = services.get("grafana")
    if grafana:
        m = mounts(grafana)
        prov = m.get("/etc/grafana/provisioning")
        if not prov:
            fail("the grafana service does not mount its provisioning directory")
        else:
            pdir = ROOT / "deploy" / prov
            sources = [d for f in sorted((pdir / "datasources").glob("*.yaml"))
                       for d in (yaml.safe_load(f.read_text()) or {}).get("datasources") or []]
            if not any(d.get("type") == "prometheus" and d.get("url") == "http://prometheus:9090" for d in sources):
                fail("no Grafana data source of type prometheus at http://prometheus:9090")
            providers = [p for f in sorted((pdir / "dashboards").glob("*.yaml"))
                         for p in (yaml.safe_load(f.read_text()) or {}).get("providers") or []]
            paths = {(p.get("options") or {}).get("path") for p in providers}
            dash = [c for c, h in m.items() if h.endswith("aurora-dashboard.json")]
            if not dash or not any(str(pathlib.PurePosixPath(d).parent) in paths for d in dash):
                fail("the dashboard is not mounted where a Grafana dashboard provider reads (%s)" % sorted(p for p in paths if p))

    promtool = shutil.which("promtool")
    if promtool:
        out = subprocess.run([promtool, "check", "config", str(PROMETHEUS)], capture_output=True, text=True)
        if out.returncode != 0:
            fail("promtool check config %s: %s%s" % (PROMETHEUS.relative_to(ROOT), out.stdout, out.stderr))

    if errors:
        for e in errors:
            print("  " + e, file=sys.stderr)
        sys.exit("the compose stack's monitoring is incomplete (%d problem(s))" % len(errors))
    print(
        "  Prometheus scrapes %d services (namespace=%s, site=%s)%s%s"
        % (len(aurora), namespace, site, "; Grafana provisioned" if grafana else "",
           "; promtool check config passed" if promtool else "; promtool not installed, config not checked")
    )


if __name__ == "__main__":
    main()
