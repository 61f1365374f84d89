#!/usr/bin/env python3
"""Turns bench/run's measurements into bench/results.md's "bench/run" section
and an SVG plot. Standard library only."""

import argparse
import json
import re
import statistics
from collections import defaultdict
from pathlib import Path

START = "<!-- bench/run:start -->"
END = "<!-- bench/run:end -->"
TARGETS = ["direct", "sluice", "hyper", "nginx", "haproxy"]
LAYERS = [
    ("bare", "bare proxy (no limit, no retry, no credential)"),
    ("limiter", "+ rate limiter"),
    ("retry", "+ retries (3 attempts, budget)"),
    ("auth", "+ credential injection (header from a Secret file)"),
    ("cachehit", "cache hit (answered by the sidecar)"),
]


def load(path):
    rows = []
    for line in Path(path).read_text().splitlines():
        if line.strip():
            rows.append(json.loads(line))
    return rows


def summarize(row):
    oha = row["oha"]
    codes = oha.get("statusCodeDistribution", {})
    total = sum(codes.values())
    ok = codes.get("200", 0)
    pct = oha["latencyPercentiles"]
    return {
        "rps": oha["summary"]["requestsPerSec"],
        "p50": pct["p50"] * 1000,
        "p99": pct["p99"] * 1000,
        "p999": pct["p99.9"] * 1000,
        "cpu10k": row["cpu_s"] / total * 10000 if total and row["cpu_s"] else None,
        "idle_mib": row["idle_rss_kb"] / 1024 if row["idle_rss_kb"] else None,
        "rss_mib": row["rss_kb"] / 1024 if row["rss_kb"] else None,
        "ok": ok,
        "total": total,
        # oha cancels the requests in flight when the time is up: not errors.
        "errors": {k: v for k, v in oha.get("errorDistribution", {}).items() if "deadline" not in k.lower()},
    }


def median_of(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def medians(rows):
    by = defaultdict(list)
    for row in rows:
        by[(row["target"], row["mode"])].append(summarize(row))
    out = {}
    for key, runs in by.items():
        out[key] = {k: median_of([r[k] for r in runs]) for k in ("rps", "p50", "p99", "p999", "cpu10k", "idle_mib", "rss_mib")}
        cpus = [r["cpu10k"] for r in runs if r["cpu10k"] is not None]
        out[key]["cpu_range"] = (min(cpus), max(cpus)) if cpus else None
        out[key]["non_200"] = sum(r["total"] - r["ok"] for r in runs)
        out[key]["errors"] = sum(sum(r["errors"].values()) for r in runs)
    return out


def paired_ratios(rows, mode, key, invert=False):
    """Sluice / nginx per round: the two ran minutes apart at most, so a
    drift of the machine's speed over the run cancels out of each pair."""
    by_round = defaultdict(dict)
    for row in rows:
        if row["mode"] == mode and row["target"] in ("sluice", "nginx"):
            by_round[row["round"]][row["target"]] = summarize(row)[key]
    ratios = []
    for pair in by_round.values():
        s, n = pair.get("sluice"), pair.get("nginx")
        if s and n:
            ratios.append(n / s if invert else s / n)
    return sorted(ratios)


def ratio_line(ratios):
    if not ratios:
        return "–"
    spread = f", rounds {ratios[0]:.2f}–{ratios[-1]:.2f}" if len(ratios) > 1 else ""
    return f"**{statistics.median(ratios):.2f}x** (median of {len(ratios)} paired rounds{spread})"


def fmt(value, digits=2, unit=""):
    if value is None:
        return "–"
    return f"{value:,.{digits}f}{unit}"


def accuracy(path):
    lines = []
    if not Path(path).exists():
        return lines
    for spec in load(path):
        arrivals = sorted(int(x) for x in Path(spec["arrivals"]).read_text().split())
        limit, window_us = spec["limit"], spec["per_ms"] * 1000
        # Most arrivals in any window of `per`, sliding over every arrival.
        most, start = 0, 0
        for end, t in enumerate(arrivals):
            while arrivals[start] <= t - window_us:
                start += 1
            most = max(most, end - start + 1)
        span = (arrivals[-1] - arrivals[0]) / 1e6 if len(arrivals) > 1 else 0
        full_windows = int(span // (window_us / 1e6))
        per_window = []
        for i in range(full_windows):
            lo = arrivals[0] + i * window_us
            per_window.append(sum(1 for t in arrivals if lo <= t < lo + window_us))
        utilization = statistics.mean(per_window) / limit * 100 if per_window else 0
        lines.append(
            f"| {spec['accuracy']} ({spec['pods']} pod{'s' if spec['pods'] > 1 else ''}) | {limit} per {spec['per_ms']} ms"
            f" | {spec['offered_per_s']}/s | {len(arrivals)} | {most} | {max(0, most - limit)}"
            f" | {fmt(utilization, 1)} % | {min(per_window) if per_window else '–'}–{max(per_window) if per_window else '–'} |"
        )
    return lines


def perf_lines(path):
    if not path or not Path(path).exists():
        return []
    by_dso = defaultdict(float)
    metrics = 0.0
    for line in Path(path).read_text().splitlines():
        m = re.match(r"\s*([\d.]+)%\s+(\S+)\s+\[[.k]\]\s+(.*)", line)
        if not m:
            continue
        share, dso, symbol = float(m.group(1)), m.group(2), m.group(3)
        by_dso[dso] += share
        if "prometheus_client" in symbol or "metrics::" in symbol:
            metrics += share
    if not by_dso:
        return []
    top = sorted(by_dso.items(), key=lambda kv: -kv[1])[:4]
    where = ", ".join(f"{dso} {share:.0f} %" for dso, share in top)
    return [
        f"Where the sidecar's CPU goes (perf, ordinary pipeline under load): {where}; "
        f"metrics recording (prometheus-client and the label lookups) {metrics:.1f} %."
    ]


def svg(meds, path):
    width, height, pad = 900, 360, 50
    panels = [
        ("throughput, fixed concurrency (req/s)", "concurrency", "rps"),
        ("p99 latency at a fixed rate (ms)", "rate", "p99"),
        ("CPU per 10k requests (s)", "concurrency", "cpu10k"),
    ]
    colors = {"direct": "#9e9e9e", "sluice": "#1565c0", "hyper": "#6a1b9a", "nginx": "#2e7d32", "haproxy": "#ef6c00"}
    panel_w = (width - pad) / len(panels)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">',
             '<rect width="100%" height="100%" fill="white"/>']
    for i, (title, mode, key) in enumerate(panels):
        x0 = pad / 2 + i * panel_w
        values = [(t, (meds.get((t, mode)) or {}).get(key)) for t in TARGETS]
        values = [(t, v) for t, v in values if v is not None]
        top = max((v for _, v in values), default=1) or 1
        parts.append(f'<text x="{x0 + panel_w / 2}" y="24" text-anchor="middle" font-weight="bold">{title}</text>')
        bar_w = (panel_w - 40) / max(len(values), 1)
        for j, (target, value) in enumerate(values):
            h = (height - 110) * value / top
            x = x0 + 20 + j * bar_w
            y = height - 60 - h
            parts.append(f'<rect x="{x + 6}" y="{y}" width="{bar_w - 12}" height="{h}" fill="{colors[target]}"/>')
            label = f"{value:,.0f}" if value >= 100 else f"{value:.2f}"
            parts.append(f'<text x="{x + bar_w / 2}" y="{y - 4}" text-anchor="middle">{label}</text>')
            parts.append(f'<text x="{x + bar_w / 2}" y="{height - 42}" text-anchor="middle">{target}</text>')
    parts.append("</svg>")
    Path(path).write_text("\n".join(parts) + "\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", required=True)
    ap.add_argument("--accuracy", required=True)
    ap.add_argument("--perf")
    ap.add_argument("--versions")
    ap.add_argument("--duration", type=int)
    ap.add_argument("--connections", type=int)
    ap.add_argument("--rate", type=int)
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--webhook-flood")
    ap.add_argument("--operator-scale")
    ap.add_argument("--markdown", required=True)
    ap.add_argument("--svg", required=True)
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()

    rows = load(args.results)
    meds = medians(rows)
    direct = {mode: meds.get(("direct", mode)) for mode in ("concurrency", "rate")}
    out = [START, "", "## bench/run: Sluice, nginx and HAProxy side by side", ""]
    versions = Path(args.versions).read_text().strip() if args.versions else ""
    out += [
        f"`bench/run`{' --smoke' if args.smoke else ''}: {args.rounds} interleaved round(s), median shown; "
        f"oha, {args.connections} connections, {args.duration} s per run; fixed rate {args.rate} req/s "
        "with latency correction. Proxies pinned to CPU 1, upstream (hyper, one thread) and oha to CPU 0. "
        f"Sluice runs one worker thread with a rate limit, retries, a credential and metrics. "
        "`hyper` is the plainest hyper 1 reverse proxy (sidecar/examples/bench_hyper_proxy.rs: server, "
        f"pooled legacy client, one thread, nothing else): the floor of any hyper-based proxy. {versions}.",
        "",
    ]
    for mode, title in (("concurrency", f"Fixed concurrency ({args.connections} connections)"),
                        ("rate", f"Fixed rate ({args.rate} req/s)")):
        out += [f"### {title}", "",
                "| target | req/s | p50 ms | p99 ms | p99.9 ms | added p50 ms | added p99 ms | CPU s / 10k req | RSS idle MiB | RSS after MiB | non-200 |",
                "|---|---|---|---|---|---|---|---|---|---|---|"]
        base = direct.get(mode) or {}
        for target in TARGETS:
            m = meds.get((target, mode))
            if not m:
                continue
            added50 = m["p50"] - base["p50"] if target != "direct" and base else None
            added99 = m["p99"] - base["p99"] if target != "direct" and base else None
            out.append(
                f"| {target} | {fmt(m['rps'], 0)} | {fmt(m['p50'], 3)} | {fmt(m['p99'], 3)} | {fmt(m['p999'], 3)}"
                f" | {fmt(added50, 3)} | {fmt(added99, 3)} | {fmt(m['cpu10k'], 3)} | {fmt(m['idle_mib'], 1)}"
                f" | {fmt(m['rss_mib'], 1)} | {m['non_200'] + m['errors']} |"
            )
        out.append("")
    s, n = meds.get(("sluice", "concurrency")), meds.get(("nginx", "concurrency"))
    h = meds.get(("hyper", "concurrency"))
    sr, nr, dr = meds.get(("sluice", "rate")), meds.get(("nginx", "rate")), direct.get("rate")
    if s and n and sr and nr and dr:
        added_s, added_n = sr["p99"] - dr["p99"], nr["p99"] - dr["p99"]
        out += [
            "Targets (ratios from this run):",
            "",
            f"* throughput Sluice / nginx: **{s['rps'] / n['rps']:.2f}x** of the medians (target ≥ 1.0)"
            + (f"; plain hyper / nginx: {h['rps'] / n['rps']:.2f}x, Sluice / plain hyper: {s['rps'] / h['rps']:.2f}x" if h else ""),
            f"  * paired by round: {ratio_line(paired_ratios(rows, 'concurrency', 'rps'))}",
            f"  * CPU per request, nginx / Sluice (above 1 = Sluice cheaper): {ratio_line(paired_ratios(rows, 'concurrency', 'cpu10k', invert=True))}",
            f"* added p99 at the fixed rate, Sluice vs nginx: **{added_s:.3f} ms vs {added_n:.3f} ms** (target: no more than nginx's)",
            f"  * p99 Sluice / nginx, paired by round (below 1 = Sluice lower): {ratio_line(paired_ratios(rows, 'rate', 'p99'))}",
            f"* Sluice idle RSS: **{fmt(s['idle_mib'], 1)} MiB** (target ≤ 15 MiB)",
            "",
        ]
    out += ["### The cost of each layer (fixed concurrency)", "",
            "Each row is a separate sidecar that adds one thing; the range is the spread over the rounds. "
            "A difference inside the spread is below what this machine can resolve.", "",
            "| sidecar | req/s | p50 ms | CPU s / 10k req (rounds' range) | CPU µs / req over the bare proxy |", "|---|---|---|---|---|"]
    bare = meds.get(("bare", "concurrency"))
    for key, label in LAYERS:
        m = meds.get((key, "concurrency"))
        if not m:
            continue
        extra = (m["cpu10k"] - bare["cpu10k"]) * 100 if bare and m["cpu10k"] and bare["cpu10k"] else None
        spread = m.get("cpu_range")
        spread = f" ({spread[0]:.3f}–{spread[1]:.3f})" if spread else ""
        out.append(f"| {label} | {fmt(m['rps'], 0)} | {fmt(m['p50'], 3)} | {fmt(m['cpu10k'], 3)}{spread} | {fmt(extra, 1)} |")
    out += [""] + perf_lines(args.perf) + [""]
    acc = accuracy(args.accuracy)
    if acc:
        out += ["### Rate-limit accuracy under 10x overload", "",
                "The upstream records every arrival (pinned beside the sidecars, away from the load generator, whose bursts would delay its timestamps); `Reject` mode; Cluster scope = the limit divided between two sidecars as the operator does.", "",
                "| scope | limit | offered | upstream saw | most in any window | over the limit | utilization | per 1 s window |",
                "|---|---|---|---|---|---|---|---|"] + acc + [""]
    for path, title in ((args.webhook_flood, "Webhook flood (`bench/webhook-flood`)"),
                        (args.operator_scale, "Operator at scale (`bench/operator-scale`)")):
        if path and Path(path).exists():
            out += [f"### {title}", "", "```", Path(path).read_text().strip(), "```", ""]
    out += [END]
    section = "\n".join(out) + "\n"
    md = Path(args.markdown)
    text = md.read_text() if md.exists() else ""
    if START in text and END in text:
        text = text[: text.index(START)] + section.rstrip("\n") + text[text.index(END) + len(END):]
    else:
        text = (text.rstrip("\n") + "\n\n" if text else "") + section
    md.write_text(text)
    svg(meds, args.svg)


if __name__ == "__main__":
    main()
