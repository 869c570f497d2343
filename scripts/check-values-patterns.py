#!/usr/bin/env python3
"""Checks that the chart's values schema accepts exactly the namespaces and site ids the
services accept, by asking the services themselves.

A value the schema accepts but a service refuses makes every pod crash-loop; one the schema
refuses but the services accept is an install refused for nothing. The services' rules are in
their code (the namespace: `aurora_core::Names::new`, which every service and the `aurora`
CLI call; the site id: federation-gateway's `valid_site_id`); this script runs the built
federation-gateway binary, which checks both, on a few hundred candidates (the edges of each
rule, and random strings of the characters that matter) and compares its answer with the
values schema's (`aurora.namespace`, `aurora.siteId`).

The binary is asked without any server: its ops port is taken by this script, so a value it
accepts ends the start at once with "cannot serve the ops endpoints", and a value it refuses
ends it before, with "invalid configuration" (or a flag error).

Usage: check-values-patterns.py SCHEMA FEDERATION_GATEWAY_BINARY
(scripts/check-deploy.sh builds the binary and runs this with its virtualenv's jsonschema).
"""

import concurrent.futures
import json
import os
import random
import socket
import subprocess
import sys

import jsonschema

ACCEPTED = "cannot serve the ops endpoints"


def candidates(max_len, seed):
    """Edge cases of a 'characters of a set, length 1..max_len' rule, then random strings."""
    edge = [
        "", "a", "z", "A", "Z", "0", "9", "_", "-", "aurora", "site-local", "site-eu-1",
        "Site_A", "a1", "1a", "-a", "_a", "a-", "a_", "a.b", "a b", " a", "a:b", "a/b",
        "a*", "a>", "a$b", "é", "aé", "ß", "a\tb", "A" * max_len, "a" * max_len,
        "a" * (max_len + 1), "a" * (max_len - 1), "a" * 32, "a" * 33, "a" * 64, "a" * 65,
        "0" * max_len, "-" * max_len, "_" * max_len,
    ]
    # No newline: JSON Schema (and Helm's Go regexps) anchor `$` at the very end, Python's
    # `re` also before a final newline; the edges above cover the character classes.
    alphabet = "abmzAMZ059_-. :/*>é"
    rng = random.Random(seed)
    out = list(edge)
    for i in range(300):
        # Every other string from the characters most rules allow, so that both answers
        # come up often.
        chars = alphabet if i % 2 else "amz059_-"
        n = rng.choice([1, 2, 3, 8, max_len - 1, max_len, max_len + 1, rng.randint(0, 70)])
        out.append("".join(rng.choice(chars) for _ in range(max(0, n))))
    return list(dict.fromkeys(out))


def main():
    schema_path, binary = sys.argv[1], sys.argv[2]
    schema = json.load(open(schema_path))
    aurora = schema["properties"]["aurora"]["properties"]
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "AURORA_OPS_ADDR": "127.0.0.1:%d" % held.getsockname()[1],
        "AURORA_LOG_FORMAT": "json",
        "RUST_LOG": "off",
    }

    def service_accepts(flag, value, other):
        out = subprocess.run(
            [binary, "--%s=%s" % (flag, value)] + other,
            env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30,
        )
        if out.returncode == 0:
            raise SystemExit("%s --%s=%r exited 0: it should have stopped at the ops port" % (binary, flag, value))
        return ACCEPTED in out.stderr

    checks = [
        # (value name, flag, the rule's longest value, the other flag held valid)
        ("namespace", "namespace", 32, ["--site-id=site-a"]),
        ("siteId", "site-id", 64, ["--namespace=aurora"]),
    ]
    failures = []
    for key, flag, max_len, other in checks:
        validator = jsonschema.Draft7Validator(aurora[key])
        values = candidates(max_len, seed=key)
        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            answers = list(pool.map(lambda v: service_accepts(flag, v, other), values))
        accepted = 0
        for value, service in zip(values, answers):
            chart = validator.is_valid(value)
            accepted += service
            if chart != service:
                failures.append("aurora.%s %r: the values schema %s it, the services %s it" % (
                    key, value, "accepts" if chart else "refuses", "accept" if service else "refuse"))
        if accepted == 0 or accepted == len(values):
            failures.append("aurora.%s: the services accepted %d of %d candidates: the check itself is broken" % (
                key, accepted, len(values)))
        print("  aurora.%s (--%s): %d candidates, %d accepted by the services, schema and services agree on %d"
              % (key, flag, len(values), accepted, len(values) - sum(1 for f in failures if f.startswith("aurora.%s " % key))))
    held.close()
    for f in failures:
        print("  " + f, file=sys.stderr)
    if failures:
        sys.exit("the values schema and the services disagree: fix the pattern in %s" % schema_path)


if __name__ == "__main__":
    main()
