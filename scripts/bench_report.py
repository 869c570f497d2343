#!/usr/bin/env python3
"""Writes BENCHMARKS.md from bench/results/*.json (each written by one `make bench-*`)."""
import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
ORDER = ["mqtt", "registry", "ws", "federation", "eve"]


def fmt(v):
    if isinstance(v, float):
        return f"{v:,.3f}" if abs(v) < 10 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def quantity(q):
    if not q:
        return "n/a"
    return f"{fmt(q.get('value'))} {q.get('unit', '')} ({q.get('name', '')})".strip()


def main():
    results = {}
    for path in sorted((ROOT / "bench" / "results").glob("*.json")):
        try:
            results[path.stem] = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            print(f"bench_report: skipping {path.name}: {e}", file=sys.stderr)
    names = [n for n in ORDER if n in results] + sorted(set(results) - set(ORDER))
    out = [
        "# Benchmarks",
        "",
        "Written by `make bench` (scripts/bench_report.py) from `bench/results/*.json`; each row",
        "was measured by its own `make bench-<name>` on this project's 2-core machine, with the",
        "ceiling measured in the same run. The machine is shared and noisy: compare within a row.",
        "",
        "| bench | service | figure | ceiling (same run) | ratio | target | met | measured |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for n in names:
        r = results[n]
        ratio = r.get("ratio")
        out.append(
            "| {} | {} | {} | {} | {} | {} | {} | {} |".format(
                f"`{r.get('command', 'make bench-' + n)}`",
                r.get("service", ""),
                quantity(r.get("figure")),
                quantity(r.get("ceiling")),
                f"{ratio:.1%}" if isinstance(ratio, (int, float)) else "n/a",
                r.get("target", ""),
                {True: "yes", False: "**no**"}.get(r.get("met"), "n/a"),
                r.get("measured_at", ""),
            )
        )
    rounds = [(n, results[n]["details"]["scale_down_round"]) for n in names
              if isinstance(results[n].get("details"), dict)
              and isinstance(results[n]["details"].get("scale_down_round"), dict)]
    if rounds:
        out += [
            "",
            "Scale-down rounds (replicas of the service in one group; one leaves with SIGTERM",
            "mid-round and never returns; ratio to the ceiling measured just before and just after):",
            "",
            "| bench | replicas | figure | ceiling (same run) | ratio | lost | duplicated | left at | leave took | session handed back | met | measured |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for n, sd in rounds:
            r = results[n]
            before, after = sd.get("ceiling_before_msg_s"), sd.get("ceiling_after_msg_s")
            ceiling = ((before + after) / 2
                       if isinstance(before, (int, float)) and isinstance(after, (int, float))
                       else None)
            ratio = sd.get("ratio")
            out.append(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
                    f"`{r.get('command', 'make bench-' + n)}`",
                    fmt(sd.get("replicas", "n/a")),
                    f"{fmt(sd.get('msg_s'))} msg/s",
                    f"{fmt(ceiling)} msg/s (mean of {fmt(before)} and {fmt(after)})"
                    if ceiling is not None else "n/a",
                    f"{ratio:.1%}" if isinstance(ratio, (int, float)) else "n/a",
                    fmt(sd.get("lost", "n/a")),
                    fmt(sd.get("duplicated", "n/a")),
                    f"{fmt(sd.get('left_at_entries', 'n/a'))} of {fmt(r.get('details', {}).get('throughput_messages', 'n/a'))} entries",
                    f"{fmt(sd.get('leave_seconds', 'n/a'))} s",
                    {True: "yes", False: "**no**"}.get(sd.get("leave_session_handed_back"), "n/a"),
                    {True: "yes", False: "**no**"}.get(sd.get("met"), "n/a"),
                    r.get("measured_at", ""),
                )
            )
    waits = []
    for n in names:
        d = results[n].get("details")
        if not isinstance(d, dict):
            continue
        mqtt = d.get("replica_wait_rounds")
        if isinstance(mqtt, dict):
            for rw in mqtt.get("rounds", []):
                waits.append((n, rw.get("redis_wait_replicas"), rw.get("msg_s"), "msg/s",
                              rw.get("ceiling_before_msg_s"), rw.get("ceiling_after_msg_s"),
                              rw.get("ratio"), rw.get("lost"), rw.get("duplicated")))
        eve = d.get("replica_wait_round")
        if isinstance(eve, dict):
            waits.append((n, 1, eve.get("events_per_s"), "events/s",
                          eve.get("ceiling_before_per_s"), eve.get("ceiling_after_per_s"),
                          eve.get("ratio"), None, None))
    if waits:
        out += [
            "",
            "Replica wait (`--redis-wait-replicas`: every batch that gates an acknowledgement",
            "waits for that many Redis replicas): the service against a Redis of its own with one",
            "replica on loopback, between two measurements of the same ceiling as the row above:",
            "",
            "| bench | --redis-wait-replicas | figure | ceiling (same run) | ratio | lost | duplicated | measured |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for n, wait, value, unit, before, after, ratio, lost, dup in waits:
            ceiling = ((before + after) / 2
                       if isinstance(before, (int, float)) and isinstance(after, (int, float))
                       else None)
            out.append(
                "| {} | {} | {} | {} | {} | {} | {} | {} |".format(
                    f"`{results[n].get('command', 'make bench-' + n)}`",
                    fmt(wait),
                    f"{fmt(value)} {unit}",
                    f"{fmt(ceiling)} {unit} (mean of {fmt(before)} and {fmt(after)})"
                    if ceiling is not None else "n/a",
                    f"{ratio:.1%}" if isinstance(ratio, (int, float)) else "n/a",
                    fmt(lost) if lost is not None else "n/a",
                    fmt(dup) if dup is not None else "n/a",
                    results[n].get("measured_at", ""),
                )
            )
    sightings = [(n, results[n]["details"]["ioc_sightings"]) for n in names
                 if isinstance(results[n].get("details"), dict)
                 and isinstance(results[n]["details"].get("ioc_sightings"), dict)]
    if sightings:
        out += [
            "",
            "IOC sightings (the figure above was measured with these indicators loaded and",
            "sightings on; memory of the service as a process of its own, idle after start):",
            "",
            "| bench | IOCs loaded | sighting alerts | ready after | RSS with IOCs | RSS sightings off | per IOC | measured |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for n, s in sightings:
            mem = s.get("memory_of_the_process") or {}
            kib = lambda v: f"{v / 1024:,.0f} MiB" if isinstance(v, (int, float)) else "n/a"
            out.append(
                "| {} | {} | {} | {} | {} | {} | {} | {} |".format(
                    f"`{results[n].get('command', 'make bench-' + n)}`",
                    fmt(s.get("iocs_on_stream", "n/a")) if s.get("sightings_on", True) else "off",
                    fmt(s.get("sighting_alerts", "n/a")),
                    f"{fmt(s.get('service_ready_after_s', 'n/a'))} s",
                    kib(mem.get("rss_kib_with_iocs")),
                    kib(mem.get("rss_kib_sightings_off")),
                    f"{fmt(mem.get('bytes_per_ioc', 'n/a'))} B",
                    results[n].get("measured_at", ""),
                )
            )
    traces = [(n, results[n]["details"]["trace_sampling_rounds"]) for n in names
              if isinstance(results[n].get("details"), dict)
              and isinstance(results[n]["details"].get("trace_sampling_rounds"), dict)]
    if traces:
        out += [
            "",
            "Tracing at 1% (`AURORA_BENCH_TRACE=1`, or `only` for these rounds alone): pairs of rounds",
            "of the release binary, untraced and traced (`parentbased_traceidratio`, 1%), the order",
            "swapped every pair; the figure is the median of the pairs' traced/untraced throughput",
            "ratios, the target at least 0.97 (details and what each round carries: the JSON below):",
            "",
            "| bench | pairs | traced/untraced (median) | spread | CPU per message traced/untraced (median) | spans received (traced rounds) | met | measured |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for n, t in traces:
            ratios = t.get("pair_ratios") or []
            cpu = next((v for k, v in sorted(t.items())
                        if "cpu" in k and k.endswith("ratio_median")), None)
            spans = [r.get("spans_received") for r in t.get("rounds", []) if r.get("traced")]
            spans = [s for s in spans if isinstance(s, int)]
            out.append(
                "| {} | {} | {} | {} | {} | {} | {} | {} |".format(
                    f"`{results[n].get('command', 'make bench-' + n)}`",
                    len(ratios) or "n/a",
                    fmt(t.get("ratio_median", "n/a")),
                    f"{fmt(t.get('ratio_min', 'n/a'))} to {fmt(t.get('ratio_max', 'n/a'))}",
                    fmt(cpu) if cpu is not None else "not measured",
                    f"{fmt(sum(spans))} ({', '.join(fmt(s) for s in spans)})" if spans else "n/a",
                    {True: "yes", False: "**no**"}.get(t.get("met"), "n/a"),
                    t.get("measured_at", results[n].get("measured_at", "")),
                )
            )
    missing = [n for n in ORDER if n not in results]
    if missing:
        out += ["", "Not measured yet: " + ", ".join(f"`make bench-{n}`" for n in missing) + "."]
    for n in names:
        r = results[n]
        out += ["", f"## {n}: {r.get('service', '')}", "", "```json",
                json.dumps(r.get("details", {}), indent=2, sort_keys=True), "```"]
        if r.get("notes"):
            out += ["", str(r["notes"])]
    notes = ROOT / "bench" / "NOTES.md"
    if notes.exists():
        out += ["", notes.read_text().rstrip()]
    (ROOT / "BENCHMARKS.md").write_text("\n".join(out) + "\n")
    print(f"wrote BENCHMARKS.md ({len(names)} benchmarks)")


if __name__ == "__main__":
    main()
