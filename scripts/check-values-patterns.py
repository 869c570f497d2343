#!/usr/bin/env python3
"""Checks that the chart's values schema accepts exactly the namespaces, site ids and approval
public keys the services accept, by asking the services themselves.

A value the schema accepts but a service refuses makes every pod crash-loop; one the schema
refuses but the services accept is an install refused for nothing. The services' rules are in
their code (the namespace: `aurora_core::Names::new`, which every service and the `aurora`
CLI call; the site id: federation-gateway's `valid_site_id`); this script runs the built
federation-gateway binary, which checks both, on a few hundred candidates (the edges of each
rule, and random strings of the characters that matter) and compares its answer with the
values schema's (`aurora.namespace`, `aurora.siteId`). The approval public keys
(`approvals.publicKeys`: 32 bytes of standard base64, canonical) are asked of the built
mqtt-bridge (`--approval-public-keys`; device-registry parses them with the same
`aurora_core::approval::ApproverKeys`): real keys, and each one mangled in the ways a key is
mangled when pasted (padding, alphabet, length, trailing bits, a hex key id instead).

The binary is asked without any server: its ops port is taken by this script, so a value it
accepts ends the start at once with "cannot serve the ops endpoints", and a value it refuses
ends it before, with "invalid configuration" (or a flag error).

Usage: check-values-patterns.py SCHEMA FEDERATION_GATEWAY_BINARY MQTT_BRIDGE_BINARY
(scripts/check-deploy.sh builds the binaries and runs this with its virtualenv's jsonschema).
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


# Ed25519 public keys (made for the chart's CI values; they sign nothing), and the all-zero key.
REAL_KEYS = [
    "jaYAb6vYzfzwjSl15rdclV5BD+VTtN6xk3PIUdlAtAo=",
    "1P0vNvyW3IWwzBIjxHn5lSVfcu7qt2WtJhyZ1C9EO48=",
    "A" * 43 + "=",
]
# The last of 43 base64 characters carries 2 bits past the 32 bytes: canonical when they are 0.
CANONICAL_LAST = "AEIMQUYcgkosw048"


def key_candidates():
    """Real keys, and each mangled. Each mangling keeps the bytes or breaks the format, so the
    answer never hangs on whether 32 random bytes are a curve point (which no pattern can say)."""
    out = list(REAL_KEYS)
    for key in REAL_KEYS:
        body = key[:-1]
        out += [
            body, key + "=", key + "==", body + "==", key[:-2] + "=", "A" + key, key[1:],
            key.replace("+", "-").replace("/", "_"), body.rstrip("A") + "=",
            key.encode().hex()[:64], key.encode().hex()[:40],
            key + key, key[:20] + "*" + key[21:], key[:20] + "." + key[21:],
        ]
        # The same bytes with the 2 spare bits set: not canonical, refused by the decoder.
        last = CANONICAL_LAST.index(body[-1])
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
        base = alphabet.index(CANONICAL_LAST[last])
        out += [body[:-1] + alphabet[base + bits] + "=" for bits in (1, 2, 3)]
    return list(dict.fromkeys(out))


def main():
    schema_path, binary, bridge = sys.argv[1], sys.argv[2], sys.argv[3]
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

    def service_accepts(flag, value, other, program=binary):
        out = subprocess.run(
            [program, "--%s=%s" % (flag, value)] + other,
            env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30,
        )
        if out.returncode == 0:
            raise SystemExit("%s --%s=%r exited 0: it should have stopped at the ops port" % (program, flag, value))
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

    keys = key_candidates()
    validator = jsonschema.Draft7Validator(schema["properties"]["approvals"]["properties"]["publicKeys"])
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda k: service_accepts("approval-public-keys", k, [], bridge), keys))
    disagree = 0
    for key, service in zip(keys, answers):
        # One value of the list: the chart joins the list with commas.
        chart = validator.is_valid([key])
        if chart != service:
            disagree += 1
            failures.append("approvals.publicKeys [%r]: the values schema %s it, mqtt-bridge %s it" % (
                key, "accepts" if chart else "refuses", "accepts" if service else "refuses"))
    if sum(answers) != len(REAL_KEYS) or not all(answers[:len(REAL_KEYS)]):
        failures.append("approvals.publicKeys: mqtt-bridge accepted %d of %d candidates, not just the %d real keys: "
                        "the check itself is broken" % (sum(answers), len(keys), len(REAL_KEYS)))
    print("  approvals.publicKeys (mqtt-bridge --approval-public-keys): %d candidates, %d accepted, schema and "
          "service agree on %d" % (len(keys), sum(answers), len(keys) - disagree))
    held.close()
    for f in failures:
        print("  " + f, file=sys.stderr)
    if failures:
        sys.exit("the values schema and the services disagree: fix the pattern in %s" % schema_path)


if __name__ == "__main__":
    main()
