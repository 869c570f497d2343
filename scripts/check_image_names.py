#!/usr/bin/env python3
"""Checks that every place naming the service images uses the one scheme of deploy/README.md
("Image names"):

    [<registry>/]aurora/<service>:<tag>     tag default: the chart's appVersion

where appVersion (k8s/aurora/Chart.yaml) equals the workspace version (Cargo.toml). Run by
scripts/check-deploy.sh as  check_image_names.py HELM  (the helm binary). It compares, with no
registry and default tag and again with IMAGE_REGISTRY/image.registry and IMAGE_TAG/image.tag
set:

- the names deploy/build-images.sh builds (`--list`);
- the `image:` of every Aurora service in deploy/compose.yaml, interpolated as Compose does;
- the images of every container the chart renders (`helm template`), and each service's
  `image.repository` default in values.yaml;

and fails on an image reference in the docs, the Dockerfile, the compose file, the Makefile or
the scripts that is not of the scheme (`aurora-<service>:...`, a registry before
`aurora-<service>`, a literal tag other than appVersion) or on the old IMAGE_PREFIX variable.
"""

import os
import pathlib
import re
import subprocess
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
SERVICES = ["mqtt-bridge", "device-registry", "ws-gateway", "federation-gateway", "eve-ingest"]
REGISTRY = "registry.example.com/acme"
TAG = "9.9.9-check"

errors = []


def fail(message):
    errors.append(message)


def versions():
    chart = yaml.safe_load((ROOT / "k8s/aurora/Chart.yaml").read_text())
    app = str(chart.get("appVersion", ""))
    cargo = re.search(
        r'^\[workspace\.package\][^\[]*?^version\s*=\s*"([^"]+)"',
        (ROOT / "Cargo.toml").read_text(),
        re.M | re.S,
    )
    if not app:
        fail("k8s/aurora/Chart.yaml has no appVersion")
    if not cargo:
        fail("Cargo.toml has no [workspace.package] version")
    elif cargo.group(1) != app:
        fail(
            "the chart's appVersion %r is not the workspace version %r (Cargo.toml): the default "
            "image tag is both" % (app, cargo.group(1))
        )
    return app


def expected(registry, tag):
    prefix = registry + "/" if registry else ""
    return {svc: "%saurora/%s:%s" % (prefix, svc, tag) for svc in SERVICES}


# --- deploy/build-images.sh ----------------------------------------------------------------


def build_script(registry, tag):
    env = {k: v for k, v in os.environ.items() if k not in ("IMAGE_REGISTRY", "IMAGE_TAG", "IMAGE_PREFIX")}
    if registry:
        env["IMAGE_REGISTRY"] = registry
    if tag:
        env["IMAGE_TAG"] = tag
    out = subprocess.run(
        ["bash", "deploy/build-images.sh", "--list"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    if out.returncode != 0:
        fail("deploy/build-images.sh --list failed: %s" % out.stderr.strip())
        return {}
    names = out.stdout.split()
    return dict(zip(SERVICES, names))


# --- deploy/compose.yaml ------------------------------------------------------------------


def interpolate(text, env):
    """Compose interpolation: ${V}, ${V:-d}, ${V-d}, ${V:+r}, ${V+r}, nested, and $$."""
    out, i = [], 0
    while i < len(text):
        if text.startswith("$$", i):
            out.append("$")
            i += 2
        elif text.startswith("${", i):
            depth, j = 1, i + 2
            while j < len(text) and depth:
                if text.startswith("${", j):
                    depth += 1
                    j += 2
                    continue
                if text[j] == "}":
                    depth -= 1
                j += 1
            body = text[i + 2:j - 1]
            m = re.match(r"([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-+?])(.*))?$", body, re.S)
            if not m:
                raise ValueError("bad interpolation ${%s}" % body)
            name, op, arg = m.group(1), m.group(2), m.group(3) or ""
            value = env.get(name)
            is_set, non_empty = value is not None, bool(value)
            if op is None:
                out.append(value or "")
            elif op in (":-", "-"):
                use = non_empty if op == ":-" else is_set
                out.append(value if use else interpolate(arg, env))
            elif op in (":+", "+"):
                use = non_empty if op == ":+" else is_set
                out.append(interpolate(arg, env) if use else "")
            else:
                out.append(value or "")
            i = j
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def compose_images(doc, registry, tag):
    env = {}
    if registry:
        env["IMAGE_REGISTRY"] = registry
    if tag:
        env["IMAGE_TAG"] = tag
    images = {}
    for name, svc in doc["services"].items():
        build = svc.get("build") or {}
        service = (build.get("args") or {}).get("SERVICE")
        if not service:
            continue
        if service != name:
            fail("compose service %s builds SERVICE=%s" % (name, service))
        if "image" not in svc:
            fail("compose service %s has no image: it would get a name of Compose's own" % name)
            continue
        images[service] = interpolate(svc["image"], env)
    return images


# --- the chart ----------------------------------------------------------------------------


def chart_images(helm, registry, tag):
    args = [helm, "template", "aurora", "k8s/aurora", "--namespace", "aurora"]
    if registry:
        args += ["--set", "image.registry=" + registry]
    if tag:
        args += ["--set", "image.tag=" + tag]
    out = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        fail("helm template failed: %s" % out.stderr.strip())
        return set()
    images = set()
    for doc in yaml.safe_load_all(out.stdout):
        if not doc:
            continue
        spec = doc.get("spec") or {}
        pod = (spec.get("template") or {}).get("spec") or spec  # workloads, or a bare Pod
        for key in ("containers", "initContainers"):
            for c in pod.get(key) or []:
                if "image" in c:
                    images.add(c["image"])
    return images


def chart_digest(helm):
    """services.<name>.image.digest renders <registry>/aurora/<name>:<tag>@<digest> (the tag
    for people, the digest decides); the schema refuses a malformed digest."""
    digest = "sha256:" + "0123456789abcdef" * 4
    base = [helm, "template", "aurora", "k8s/aurora", "--set", "image.registry=" + REGISTRY]
    out = subprocess.run(base + ["--set", "services.ws-gateway.image.digest=" + digest],
                         cwd=ROOT, capture_output=True, text=True)
    want = "%s/aurora/ws-gateway:%s@%s" % (REGISTRY, versions(), digest)
    if out.returncode != 0 or want not in out.stdout:
        fail("helm template with services.ws-gateway.image.digest does not render %s: %s" % (want, out.stderr.strip()))
    bad = subprocess.run(base + ["--set", "services.ws-gateway.image.digest=latest"],
                         cwd=ROOT, capture_output=True, text=True)
    if bad.returncode == 0:
        fail("the values schema accepts services.ws-gateway.image.digest=latest")


def chart_values():
    values = yaml.safe_load((ROOT / "k8s/aurora/values.yaml").read_text())
    for svc in SERVICES:
        repo = (((values.get("services") or {}).get(svc) or {}).get("image") or {}).get("repository")
        if repo != "aurora/" + svc:
            fail("k8s/aurora/values.yaml: services.%s.image.repository is %r, not %r" % (svc, repo, "aurora/" + svc))
    image = values.get("image") or {}
    if image.get("registry", "") != "":
        fail("k8s/aurora/values.yaml: image.registry defaults to %r, not \"\" (a local name)" % image.get("registry"))
    if image.get("tag", "") != "":
        fail("k8s/aurora/values.yaml: image.tag defaults to %r, not \"\" (the appVersion)" % image.get("tag"))


# --- docs and scripts -----------------------------------------------------------------------

TEXT_FILES = [
    "README.md",
    "deploy/README.md",
    "deploy/mosquitto/README.md",
    "deploy/Dockerfile",
    "deploy/compose.yaml",
    "k8s/aurora/README.md",
    "k8s/aurora/values.yaml",
    "k8s/aurora/templates/NOTES.txt",
    "Makefile",
    "docs/configuration.md",
]
SVC = "|".join(map(re.escape, SERVICES))
# An image-like reference to a service: optional registry path, aurora, / or -, the service,
# optional tag. Not preceded by a name character (a pod name like <release>-aurora-ws-gateway-0
# is no image).
REF = re.compile(
    r"(?<![\w.\-<>])((?:[A-Za-z0-9.<>${}_-]+(?::\d+)?/)*)aurora([/-])(%s)(?![\w-])(:[A-Za-z0-9_.<>${}-]+)?" % SVC
)
PLACEHOLDER = re.compile(r"^(<[^>]+>|\$\{?[A-Za-z_]+\}?)$")


def check_text(app):
    files = [ROOT / f for f in TEXT_FILES if (ROOT / f).exists()]
    files += sorted((ROOT / "scripts").glob("*.sh")) + [ROOT / "deploy/build-images.sh"]
    for path in files:
        rel = path.relative_to(ROOT)
        for n, line in enumerate(path.read_text().splitlines(), 1):
            where = "%s:%d" % (rel, n)
            # The old variable, unless where the rename is explained (next to the new name).
            if "IMAGE_PREFIX" in line and "IMAGE_REGISTRY" not in line and str(rel) != "deploy/build-images.sh":
                fail("%s: IMAGE_PREFIX is no longer read (IMAGE_REGISTRY, see deploy/README.md): %s" % (where, line.strip()))
            for m in REF.finditer(line):
                registry, sep, svc, tag = m.group(1), m.group(2), m.group(3), m.group(4)
                if sep == "-":
                    if registry or tag:
                        fail("%s: %s is not an image name of the scheme ([<registry>/]aurora/%s:<tag>)" % (where, m.group(0), svc))
                    continue
                if tag:
                    tag = tag[1:]
                    if tag != app and not PLACEHOLDER.match(tag):
                        fail("%s: %s: the tag is neither the appVersion %s nor a placeholder" % (where, m.group(0), app))
    readme = (ROOT / "deploy/README.md").read_text()
    if "[<registry>/]aurora/<service>:<tag>" not in readme:
        fail("deploy/README.md does not state the scheme `[<registry>/]aurora/<service>:<tag>`")


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: check_image_names.py HELM")
    helm = sys.argv[1]
    app = versions()
    doc = yaml.safe_load((ROOT / "deploy/compose.yaml").read_text())
    for registry, tag in (("", ""), (REGISTRY, TAG)):
        want = expected(registry, tag or app)
        case = "registry %r, tag %r" % (registry or "(none)", tag or app)
        got = build_script(registry, tag)
        if got != want:
            fail("deploy/build-images.sh --list (%s): %s, expected %s" % (case, sorted(got.values()), sorted(want.values())))
        got = compose_images(doc, registry, tag)
        if got != want:
            fail("deploy/compose.yaml images (%s): %s, expected %s" % (case, sorted(got.values()), sorted(want.values())))
        got = chart_images(helm, registry, tag)
        if got != set(want.values()):
            fail("helm template images (%s): %s, expected %s" % (case, sorted(got), sorted(want.values())))
    chart_values()
    chart_digest(helm)
    check_text(app)
    if errors:
        for e in errors:
            print("  " + e, file=sys.stderr)
        sys.exit("image names disagree (%d problem(s)); the scheme is in deploy/README.md, Image names" % len(errors))
    print("  %s: build-images.sh, compose.yaml, the chart and the docs agree" % ", ".join(sorted(expected("", app).values())))


if __name__ == "__main__":
    main()
