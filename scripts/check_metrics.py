#!/usr/bin/env python3
"""Checks every place that names Aurora's metrics against the code that registers them.

The metrics, their kind and their label names are read from the code: each service's
`services/<service>/src/telemetry.rs` (the one module that records its metrics) and aurora-core's
shared ones (`crates/aurora-core/src/{ops,bus,listener,jetstream,durability,ledger}.rs`; their `#[cfg(test)]` part left out).
Test files are never read. Then:

1. no service records a metric outside its telemetry module (it would not be checked);
2. the metric table of deploy/README.md ("## Monitoring") lists every metric exactly once, with
   the kind and the label names the code gives it, and no metric the code does not register;
3. every query of the Grafana dashboard (deploy/grafana/aurora-dashboard.json) and every rule of
   deploy/prometheus/aurora-rules.yaml names only registered metrics (a histogram's `_bucket`,
   `_sum`, `_count`), and groups, matches or templates only labels those metrics carry or the
   scrape adds (namespace, site, job, instance; `le` of a histogram).

Usage: scripts/check_metrics.py            check (exit 1 with the reasons)
       scripts/check_metrics.py --table    print the table the code implies (to paste in the README)
"""

import json
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = ROOT / "deploy/README.md"
DASHBOARD = ROOT / "deploy/grafana/aurora-dashboard.json"
RULES = ROOT / "deploy/prometheus/aurora-rules.yaml"
CORE = ["crates/aurora-core/src/ops.rs", "crates/aurora-core/src/bus.rs", "crates/aurora-core/src/listener.rs", "crates/aurora-core/src/jetstream.rs", "crates/aurora-core/src/durability.rs", "crates/aurora-core/src/ledger.rs"]
# Labels a scrape adds to every series (Prometheus: job, instance; deploy/prometheus/prometheus.yml
# and the tests add namespace and site; the Prometheus Operator adds namespace, pod, service...).
SCRAPE_LABELS = {"namespace", "site", "job", "instance", "pod", "container", "endpoint"}
# Series Prometheus makes itself.
PROMETHEUS_METRICS = {"up": set(), "scrape_duration_seconds": set()}
NAME_RULE = re.compile(r"^aurora_(mqtt_bridge|device_registry|ws_gateway|federation_gateway|eve_ingest|bus|ops|listener|jetstream|durability|ledger)_[a-z0-9_]+$")
MACRO = re.compile(r"metrics::(counter|gauge|histogram)!\(")

errors = []


def fail(msg):
    errors.append(msg)


def balanced(text, start):
    """The text from `start` (just after an opening parenthesis) to its closing one."""
    depth = 1
    i = start
    in_str = False
    while i < len(text):
        c = text[i]
        if in_str:
            if c == "\\":
                i += 1
            elif c == '"':
                in_str = False
        elif c == '"':
            in_str = True
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return text[start:i]
        i += 1
    raise ValueError("unbalanced macro call")


def code_metrics():
    """{name: {"kind", "labels", "where", "doc"}} from the telemetry modules and aurora-core."""
    files = sorted(ROOT.glob("services/*/src/telemetry.rs")) + [ROOT / p for p in CORE]
    metrics = {}
    for path in files:
        rel = path.relative_to(ROOT)
        text = path.read_text()
        cut = text.find("#[cfg(test)]")
        if cut >= 0:
            text = text[:cut]
        consts, docs = {}, {}
        for m in re.finditer(r'((?:[ \t]*///[^\n]*\n)*)[ \t]*pub const ([A-Z_]+): &str = "(aurora_[a-z0-9_]+)";', text):
            consts[m.group(2)] = m.group(3)
            doc = " ".join(l.strip()[3:].strip() for l in m.group(1).splitlines() if l.strip())
            docs[m.group(3)] = doc
        for m in MACRO.finditer(text):
            kind = m.group(1)
            args = balanced(text, m.end())
            first = args.split(",", 1)[0].strip()
            if first.startswith('"'):
                name = first.strip('"')
            elif first in consts:
                name = consts[first]
            else:
                fail(f"{rel}: a {kind} named by {first!r}, which is not a metric-name constant of this file")
                continue
            labels = set(re.findall(r'"([a-z_][a-z0-9_]*)"\s*=>', args))
            for ident in re.findall(r"&([a-z_][a-z0-9_]*)\b", args):
                lets = list(re.finditer(r"let %s\s*=\s*\[(.*?)\];" % ident, text[: m.start()], re.S))
                if not lets:
                    fail(f"{rel}: labels {ident} of {name} not found")
                    continue
                labels |= set(re.findall(r'\(\s*"([a-z_][a-z0-9_]*)"\s*,', lets[-1].group(1)))
            entry = metrics.setdefault(name, {"kind": kind, "labels": set(), "where": str(rel), "doc": docs.get(name, "")})
            if entry["kind"] != kind:
                fail(f"{name} is a {entry['kind']} in {entry['where']} and a {kind} in {rel}")
            entry["labels"] |= labels
        for const, name in consts.items():
            if name not in metrics:
                fail(f"{rel}: {const} = {name} is declared but never recorded")
    for name in metrics:
        if not NAME_RULE.match(name):
            fail(f"{name} ({metrics[name]['where']}) is not aurora_<service>_<what>_<unit>")
    return metrics


def recorded_elsewhere():
    """Services recording metrics outside their telemetry module."""
    for path in sorted(ROOT.glob("services/*/src/**/*.rs")):
        if path.name == "telemetry.rs":
            continue
        text = path.read_text()
        for m in MACRO.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            fail(f"{path.relative_to(ROOT)}:{line}: a metric recorded outside telemetry.rs (move it there)")


def readme_table():
    """[(line, name, kind, labels)] of the README's metric table."""
    text = README.read_text()
    section = re.search(r"^## Monitoring\n(.*?)(?=^## )", text, re.S | re.M)
    if not section:
        fail("deploy/README.md has no '## Monitoring' section")
        return []
    start_line = text[: section.start(1)].count("\n") + 1
    rows = []
    for i, line in enumerate(section.group(1).splitlines()):
        m = re.match(r"^\|\s*`(aurora_[a-z0-9_]+)`\s*\|\s*([a-z]+)\s*\|\s*([^|]*)\|", line)
        if m:
            labels = set(re.findall(r"`([a-z_][a-z0-9_]*)`", m.group(3)))
            rows.append((start_line + i, m.group(1), m.group(2), labels))
        elif line.startswith("| `"):
            fail(f"deploy/README.md:{start_line + i}: a metric row not of the form | `name` | kind | `labels` | ...")
    if not rows:
        fail("deploy/README.md: the Monitoring section has no metric table")
    return rows


def check_readme(metrics):
    seen = {}
    for line, name, kind, labels in readme_table():
        where = f"deploy/README.md:{line}"
        if name in seen:
            fail(f"{where}: {name} listed twice (also line {seen[name]})")
        seen[name] = line
        if name not in metrics:
            fail(f"{where}: {name} is registered by no telemetry module")
            continue
        code = metrics[name]
        if kind != code["kind"]:
            fail(f"{where}: {name} is a {code['kind']} in {code['where']}, not a {kind}")
        if labels != code["labels"]:
            extra, missing = sorted(labels - code["labels"]), sorted(code["labels"] - labels)
            fail(f"{where}: {name} labels {sorted(labels)} but {code['where']} sets {sorted(code['labels'])}"
                 + (f" (not set by the code: {extra})" if extra else "")
                 + (f" (missing: {missing})" if missing else ""))
    for name in sorted(set(metrics) - set(seen)):
        fail(f"deploy/README.md: {name} ({metrics[name]['where']}) is missing from the metric table")
    return len(seen)


def series_of(name, metrics):
    """(metric, is histogram part) for a name in a query, or None."""
    if name in metrics:
        return name, False
    base = re.sub(r"_(bucket|sum|count)$", "", name)
    if base != name and base in metrics and metrics[base]["kind"] == "histogram":
        return base, name.endswith("_bucket")
    return None


def check_expr(where, expr, metrics, templated_labels=()):
    """Metric names and label names of one PromQL expression."""
    # Grafana's variables and Prometheus's template text are not PromQL.
    expr = re.sub(r"\$__[a-z_]+|\$\{?[a-z_]+\}?", "1m", expr)
    used_metrics = set()
    allowed = set(SCRAPE_LABELS)
    for name in re.findall(r"\b([a-z_][a-z0-9_]*)\s*(?=\{|\[|\)|\s|$| offset|,)", expr):
        if name.startswith("aurora_"):
            found = series_of(name, metrics)
            if not found:
                fail(f"{where}: {name} is registered by no telemetry module")
                continue
            base, bucket = found
            used_metrics.add(name)
            allowed |= metrics[base]["labels"]
            if bucket:
                allowed.add("le")
        elif name in PROMETHEUS_METRICS:
            used_metrics.add(name)
    if not used_metrics:
        fail(f"{where}: names no Aurora metric")
    labels = set()
    for sel in re.findall(r"\{([^}]*)\}", expr):
        labels |= set(re.findall(r"([a-z_][a-z0-9_]*)\s*(?:=~|!~|!=|=)", sel))
    for grp in re.findall(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", expr):
        labels |= {l.strip() for l in grp.split(",") if l.strip()}
    labels |= set(templated_labels)
    for label in sorted(labels - allowed):
        fail(f"{where}: label {label!r} is set on none of {sorted(used_metrics)} (nor by the scrape)")
    return used_metrics


def check_dashboard(metrics):
    dash = json.loads(DASHBOARD.read_text())
    queries = 0
    names = set()
    for var in dash.get("templating", {}).get("list", []):
        q = var.get("query")
        q = q.get("query", "") if isinstance(q, dict) else (q or "")
        m = re.match(r"label_values\((.*),\s*([a-z_]+)\)$", q.strip())
        if var.get("type") == "query":
            if not m:
                fail(f"dashboard variable {var.get('name')}: {q!r} is not label_values(<selector>, <label>)")
                continue
            check_expr(f"dashboard variable {var['name']}", m.group(1), metrics, [m.group(2)])
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            queries += 1
            legend = re.findall(r"\{\{\s*([a-z_]+)\s*\}\}", target.get("legendFormat", ""))
            names |= check_expr(f"dashboard panel {panel['title']!r}", target["expr"], metrics, legend)
    if not queries:
        fail("the dashboard has no queries")
    return len(dash["panels"]), queries, names


def check_rules(metrics):
    try:
        import yaml
    except ImportError:
        fail("PyYAML is needed to read the rules (python3-yaml, or the check-deploy venv)")
        return 0, set()
    doc = yaml.safe_load(RULES.read_text())
    count = 0
    names = set()
    for group in doc.get("groups", []):
        for rule in group.get("rules", []):
            count += 1
            name = rule.get("alert") or rule.get("record")
            templated = set()
            for text in list(rule.get("annotations", {}).values()) + list(rule.get("labels", {}).values()):
                templated |= set(re.findall(r"\$labels\.([a-z_][a-z0-9_]*)", str(text)))
            names |= check_expr(f"rule {name}", rule["expr"], metrics)
            # A label an annotation prints must survive the expression's aggregation.
            expr = rule["expr"]
            kept = None
            for grp in re.findall(r"\bby\s*\(([^)]*)\)", expr):
                g = {l.strip() for l in grp.split(",") if l.strip()}
                kept = g if kept is None else kept & g
            if kept is not None:
                for label in sorted(templated - kept):
                    fail(f"rule {name}: an annotation prints $labels.{label}, which the aggregation drops")
    if not count:
        fail(f"{RULES.relative_to(ROOT)} has no rules")
    return count, names


def print_table(metrics):
    print("| metric | kind | labels | meaning |")
    print("|---|---|---|---|")
    for name in sorted(metrics):
        m = metrics[name]
        labels = ", ".join(f"`{l}`" for l in sorted(m["labels"]))
        print(f"| `{name}` | {m['kind']} | {labels} | {m['doc']} |")


def main():
    metrics = code_metrics()
    if "--table" in sys.argv[1:]:
        print_table(metrics)
        return 0
    recorded_elsewhere()
    listed = check_readme(metrics)
    panels, queries, dash_names = check_dashboard(metrics)
    rules, rule_names = check_rules(metrics)
    if errors:
        for e in errors:
            print(f"check-metrics: {e}", file=sys.stderr)
        print(f"check-metrics: {len(errors)} problem(s)", file=sys.stderr)
        return 1
    print(f"  {len(metrics)} metrics in the code, all {listed} in deploy/README.md with their kind and labels")
    print(f"  dashboard: {panels} panels, {queries} queries on {len(dash_names)} metrics; rules: {rules} on {len(rule_names)} metrics")
    return 0


if __name__ == "__main__":
    sys.exit(main())
