"""Turns the harness's results.json into RESULTS.md (tables, ratios, targets) and a PNG chart.

`python3 benches/report.py benches/results.json` re-renders without re-running anything.
"""

import json
import sys
from pathlib import Path

from validate import LOAD_TIMEOUT_S, LOADS, MIN_BUSY, apply as check_runs, failed, stall_after

PEERS = ["nginx", "envoy", "squid", "mitmproxy"]


def fmt(v, digits=0):
    if v is None:
        return "–"
    if digits == 0:
        return f"{v:,.0f}"
    return f"{v:,.{digits}f}"


def ms(us):
    return "–" if us is None else f"{us / 1000:.2f}"


def ratio(a, b):
    if not a or not b:
        return None
    return a / b


def x(v):
    return "–" if v is None else f"{v:.2f}×"


def table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def get(results, key, name, field):
    """A figure of a run that worked; None if the run failed (a failed run keeps only why)."""
    return ((results.get(key) or {}).get(name) or {}).get(field)


def cell(results, key, name, field, show=fmt):
    """A table cell: the figure, or "failed: why" for a run that failed (never a number)."""
    why = failed(results, key, name)
    if why:
        return f"failed: {why}"
    return show(get(results, key, name, field))


def cpu_per_100k(results, key, name):
    r = (results.get(key) or {}).get(name) or {}
    if not r.get("cpu_s") or not r.get("requests"):
        return None
    return r["cpu_s"] / r["requests"] * 100_000


def predates_checks(results):
    """Results written before the harness recorded each run's load (and checked it)."""
    runs = [run for per in (results.get("raw") or {}).values() for rs in per.values() for run in rs]
    return bool(runs) and not any("load" in run for run in runs)


def write(results, dest):
    dest = Path(dest)
    # Before any figure or ratio: a run that did not answer every request as expected, or whose
    # figures are implausible, keeps only why (benches/validate.py).
    check_runs(results)
    names = ["direct", "sidekey"] + PEERS
    lines = []
    add = lines.append
    add("# sidekey benchmark results\n")
    add("Written by `scripts/bench`" + (" --quick (short runs: indicative only)" if results.get("quick") else "")
        + f" on {results['date']}. Reproduce with `scripts/bench` (full, about 15 minutes plus the first builds on 2 cores) or "
        "`scripts/bench --quick`.\n")
    m = results["machine"]
    add(f"**Machine:** {m['cpu']}, {m['cores']} cores, {m['memory']}; kernel {results['versions']['kernel']}. "
        f"**Load average** at start {' '.join(results['loadavg_start'])}, at end "
        f"{' '.join(results.get('loadavg_end', ['?']))} (other work on the machine shows up as noise).\n")
    v = results["versions"]
    add("**Versions:** " + "; ".join(f"{k} {v[k]}" for k in ("sidekey", "nginx", "envoy", "squid", "mitmproxy", "wrk")) + ".\n")
    s = results["settings"]
    if s.get("only") or s.get("targets"):
        add(f"**Partial run:** scenarios {', '.join(s.get('only') or ['all'])}; targets "
            f"{', '.join(s.get('targets') or ['all'])} (`--only`, `--targets`).\n")
    add("**Method.** Every proxy runs on core 0 with one worker (sidekey `SIDEKEY_WORKER_THREADS=1`, "
        "nginx `worker_processes 1`, Envoy `--concurrency 1`, squid without SMP workers, mitmproxy is "
        "one Python process); the load generator (wrk, or `bench-load` for TLS, tunnels, HTTP/2, SSE "
        "and idle connections) and the upstream (`bench-upstream`, one thread) share core 1. Each "
        "proxy does the same work: the agent's `Authorization: Bearer agent-dummy-key` is replaced "
        "by a bearer token for `api.bench.test` (the peers' token is as long as the JWT sidekey "
        "mints), any other host gets 403 — checked before the runs. Every proxy writes one log line "
        "per request to a file (sidekey `audit: { file: … }`, the peers' access logs). "
        f"Runs last {s['seconds']} s, {s['rounds']} round(s)"
        + (f" ({s['plain_rounds']} for plain HTTP, whose p99s are targets and move between rounds)"
           if s.get("plain_rounds", s["rounds"]) != s["rounds"] else "")
        + ", targets interleaved in a rotated order "
        "each round; figures are medians over rounds. *Added latency* is the proxy's percentile "
        "minus the direct percentile at the same load. CPU is user+system of the proxy's processes "
        "from /proc.")
    add(f"**Every run is checked before any figure or ratio is computed from it** "
        "(`benches/validate.py`). It counts only if every request got the expected answer — wrk: no "
        "socket error, no timeout, no status ≥ 400 (wrk's own counts), and none of its connections "
        f"had received nothing for {stall_after(s['seconds']):g} s when probed at 90 % of the run (the "
        "kernel's TCP info through `ss`: wrk never counts a request still waiting for its answer); "
        f"`bench-load`: every request answered 2xx within {LOAD_TIMEOUT_S} s (an SSE stream within "
        f"{LOADS['sse']['timeout_s']} s), every SSE stream and every idle connection's request "
        "answered — and if its figures are plausible: more requests answered than requests in "
        f"flight at once, and for wrk the answered requests fill at least {MIN_BUSY:.0%} of the "
        f"connections' time (requests × (mean latency + pause) ≥ {MIN_BUSY} × connections × "
        "duration). A run that fails is shown as *failed: why*, with no figure and no ratio; one "
        "failed round fails the target's scenario."
        + (" *This run predates the checks; they were applied afterwards to what it kept: wrk's "
           "total error count, its median latency in place of the mean, no stall probe; `bench-load` "
           "had no timeout then, and a run that hung was left out (shown as failed).*"
           if predates_checks(results) else "") + "\n")

    # ---- plain HTTP
    # A section whose scenarios were not run (`--only`) is left out: `del lines[mark:]`.
    mark = len(lines)
    add("## Plain HTTP forward proxy with header injection (HTTP/1.1, keep-alive)\n")
    rows = []
    for n in names + ["floor"]:
        if not any((results.get(k) or {}).get(n) for k in ("plain_c1", "plain_c16", "plain_c128")):
            continue
        rps128 = get(results, "plain_c128", n, "rps")
        rows.append([
            n,
            cell(results, "plain_c1", n, "rps"),
            cell(results, "plain_c16", n, "rps"),
            cell(results, "plain_c128", n, "rps"),
            x(ratio(rps128, get(results, "plain_c128", "direct", "rps"))),
            x(ratio(get(results, "plain_c128", "sidekey", "rps"), rps128)) if n not in ("sidekey", "direct") else "",
            fmt(cpu_per_100k(results, "plain_c128", n), 2),
        ])
    add(table(["target", "req/s c=1", "req/s c=16", "req/s c=128", "c=128 vs direct",
               "sidekey ÷ this", "CPU s / 100k req"], rows))
    if any((results.get(k) or {}).get("floor") for k in ("plain_c16", "plain_c128")):
        add("\n*floor* is not a proxy but a measuring stick (`bench-floor`, benches/tools/src/floor.rs): "
            "tokio's one-thread runtime and hyper's HTTP/1 server and client doing this forward and "
            "nothing else — the token replaced, no policy, credential, audit record, metrics, limits "
            "or shared pool. It shows what a proxy built on these dependencies can reach on this "
            "machine, against nginx.")
    add("")
    add("Latency (ms): the target's p50 / p99 / p99.9, and in brackets what the proxy adds to direct.\n")
    rows = []
    for key, label in (("plain_c1", "c=1"), ("plain_c16", "c=16"), ("plain_c128", "c=128"),
                       ("plain_rate", "fixed rate")):
        for n in names + ["floor"]:
            r = (results.get(key) or {}).get(n)
            if not r:
                continue
            why = failed(results, key, n)
            if why:
                rows.append([label, n, f"failed: {why}", "–", "–", "–"])
                continue
            d = (results.get(key) or {}).get("direct") or {}
            cells = []
            for p in ("p50_us", "p99_us", "p999_us"):
                if n == "direct":
                    cells.append(ms(r.get(p)))
                else:
                    added = None if r.get(p) is None or d.get(p) is None else r[p] - d[p]
                    cells.append(f"{ms(r.get(p))} (+{ms(added)})")
            rows.append([label, n, fmt(r.get("rps"))] + cells)
    add(table(["load", "target", "req/s", "p50", "p99", "p99.9"], rows))
    rate = LOADS["plain_rate"]
    add(f"\n*Fixed rate*: {rate['concurrency']} connections, each pausing {rate['delay_ms']} ms between "
        "requests (wrk `delay()`): the same offered load for every target, below saturation for all "
        "but mitmproxy.\n")
    if not rows:
        del lines[mark:]

    # ---- HTTPS
    mark = len(lines)
    add("## HTTPS with interception\n")
    add("sidekey and mitmproxy intercept `CONNECT api.bench.test:18443` (TLS terminated with a "
        "minted leaf, request re-encrypted to the upstream). nginx and Envoy cannot intercept a "
        "forward CONNECT, so they are measured as TLS-terminating *reverse* proxies doing the same "
        "TLS work on both sides (no CONNECT round trip). New connections are full handshakes (no "
        "session resumption): one TCP connect (+ CONNECT), one TLS handshake, one request.\n")
    rows = []
    for n in names:
        kind = (results.get("https_kind") or {}).get(n, "")
        ka = get(results, "https_keepalive", n, "rps")
        hs = get(results, "https_handshake", n, "rps")
        if not (results.get("https_keepalive") or {}).get(n) and not (results.get("https_handshake") or {}).get(n):
            continue
        rows.append([
            n, kind, cell(results, "https_keepalive", n, "rps"), ms(get(results, "https_keepalive", n, "p99_us")),
            x(ratio(get(results, "https_keepalive", "sidekey", "rps"), ka)) if n not in ("sidekey", "direct") else "",
            cell(results, "https_handshake", n, "rps"),
            x(ratio(get(results, "https_handshake", "sidekey", "rps"), hs)) if n not in ("sidekey", "direct") else "",
            fmt(cpu_per_100k(results, "https_keepalive", n), 2),
        ])
    add(table(["target", "how", f"keep-alive req/s (c={LOADS['https_keepalive']['concurrency']})", "p99 ms",
               "sidekey ÷ this", f"new connections/s (c={LOADS['https_handshake']['concurrency']})",
               "sidekey ÷ this", "CPU s / 100k req"], rows))
    add("")
    if not rows:
        del lines[mark:]

    # ---- tunnel
    mark = len(lines)
    add("## Blind CONNECT tunnel\n")
    add("sidekey with `unmatched: tunnel` (no route names `tunnel.bench.test`) against squid; TLS "
        "end to end between client and upstream.\n")
    rows = []
    for n in ("direct", "sidekey-tunnel", "squid"):
        if not (results.get("tunnel_keepalive") or {}).get(n) and not (results.get("tunnel_new") or {}).get(n):
            continue
        rows.append([n, cell(results, "tunnel_keepalive", n, "rps"), ms(get(results, "tunnel_keepalive", n, "p99_us")),
                     cell(results, "tunnel_new", n, "rps"),
                     fmt(cpu_per_100k(results, "tunnel_keepalive", n), 2)])
    add(table(["target", f"req/s in tunnels (c={LOADS['tunnel_keepalive']['concurrency']})", "p99 ms",
               f"new tunnels/s (c={LOADS['tunnel_new']['concurrency']})", "CPU s / 100k req"], rows))
    add("")
    if not rows:
        del lines[mark:]

    # ---- h2
    mark = len(lines)
    add(f"## HTTP/2 multiplexed (TLS, {LOADS['h2']['connections']} connections × {LOADS['h2']['streams']} streams)\n")
    rows = []
    for n in names:
        r = (results.get("h2") or {}).get(n)
        if not r:
            continue
        rows.append([n, cell(results, "h2", n, "rps"), ms(r.get("p50_us")), ms(r.get("p99_us")),
                     x(ratio(get(results, "h2", "sidekey", "rps"), r.get("rps"))) if n not in ("sidekey", "direct") else "",
                     fmt(cpu_per_100k(results, "h2", n), 2)])
    add(table(["target", "req/s", "p50 ms", "p99 ms", "sidekey ÷ this", "CPU s / 100k req"], rows))
    add("\nsidekey and mitmproxy through CONNECT; nginx and Envoy as TLS reverse proxies. squid "
        "speaks HTTP/1.1 only.\n")
    if not rows:
        del lines[mark:]

    # ---- SSE
    mark = len(lines)
    add("## Streaming: SSE time to first byte\n")
    add("The upstream writes the first event at once and four more 100 ms apart; a proxy that "
        "buffered the stream would show a first byte near the stream's end (~400 ms).\n")
    rows = []
    for n in names:
        r = (results.get("sse") or {}).get(n)
        if not r:
            # Results written before failed runs were kept: the harness left a failed run out.
            if "sse" in results and n in (results.get("plain_c1") or {}):
                rows.append([n, "failed: no complete run within 30 s", "–", "–"])
            continue
        rows.append([n, cell(results, "sse", n, "p50_us", ms), ms(r.get("max_us")),
                     ms(r.get("stream_total_p50_us"))])
    add(table(["target", "first byte p50 ms", "first byte max ms", "whole stream p50 ms"], rows))
    add("")
    if not rows:
        del lines[mark:]

    # ---- grants
    grant_rows = []
    for key, label, field in (("plain_c16", "plain HTTP, c=16, req/s", "rps"),
                              ("plain_c128", "plain HTTP, c=128, req/s", "rps"),
                              ("plain_rate", "plain HTTP, fixed rate, p99 µs", "p99_us"),
                              ("https_keepalive", "HTTPS keep-alive (CONNECT + interception), req/s", "rps"),
                              ("h2", "HTTP/2, 4 × 32 streams, req/s", "rps")):
        if not (results.get(key) or {}).get("sidekey-grants"):
            continue
        off = get(results, key, "sidekey", field)
        on = get(results, key, "sidekey-grants", field)
        broken = [f"{n}: {failed(results, key, n) or 'not measured'}" for n in ("sidekey", "sidekey-grants")
                  if failed(results, key, n) or get(results, key, n, field) in (None, 0)]
        if broken:
            grant_rows.append([label, cell(results, key, "sidekey", field), cell(results, key, "sidekey-grants", field),
                               "failed: " + "; ".join(broken)])
        else:
            grant_rows.append([label, fmt(off), fmt(on), x(ratio(on, off))])
    if grant_rows:
        add("## Task grants: what they cost\n")
        add("The same sidekey and work, with `grants.required: true` and every request (plain HTTP) or "
            "CONNECT (HTTPS, HTTP/2) presenting a grant as `Proxy-Authorization: Bearer` — a cached "
            "grant costs a lookup (see the `grant_check` micro-benchmarks: `scripts/bench --micro`). "
            "A failed run is shown as failed, never as a ratio.\n")
        add(table(["scenario", "grants off", "grants on", "on / off"], grant_rows))
        add("")

    # ---- memory
    add("## Memory (RSS, all of the proxy's processes)\n")
    idle = results.get("idle_rss_kb") or {}
    anon = results.get("idle_anon_kb") or {}
    after = results.get("after_load_rss_kb") or {}
    conns = results.get("idle_conns") or {}
    rows = []
    for n in ["sidekey"] + PEERS + ["sidekey-tunnel"]:
        c = conns.get(n) or {}
        if n not in idle:
            continue
        if c.get("failed"):
            rows.append([n, fmt((idle.get(n) or 0) / 1024, 1), fmt(anon[n] / 1024, 1) if n in anon else "–",
                         fmt((after.get(n) or 0) / 1024, 1) if n in after else "–",
                         f"failed: {c['failed']}", "–", "–", "–"])
            continue
        rows.append([
            n, fmt((idle.get(n) or 0) / 1024, 1),
            fmt(anon[n] / 1024, 1) if n in anon else "–",
            fmt((after.get(n) or 0) / 1024, 1) if n in after else "–",
            f"{c.get('opened', '–')}/{c.get('wanted', '–')}" if c else "–",
            fmt((c.get("with_idle_kb") or 0) / 1024, 1) if c else "–",
            fmt((c.get("added_kb") or 0) / 1024, 1) if c else "–",
            fmt(c.get("per_conn_kb"), 1) if c else "–",
        ])
    add(table(["proxy", "idle after start MB", "of it anonymous MB", "after the load runs MB", "idle conns open",
               "with them MB", "added MB", "KB per connection"], rows))
    add("\nIdle connections: plain HTTP keep-alive, one request each, then held open "
        f"({results['settings']['idle_conns']} wanted); the proxy also holds its upstream side. "
        "Anonymous memory (RssAnon: heap, stacks) is what the process allocated; the rest of "
        "RSS is pages of its executable and libraries, clean and shared between processes "
        "running the same binary.\n")

    # ---- targets
    add("## Targets\n")
    add("The performance issue's targets, and the earlier ones (Envoy, mitmproxy) that must not regress.\n")
    rows = targets(results)
    add(table(["target", "measured", "met?"], rows))
    add("")
    notes = dest / "NOTES.md"
    if notes.exists():
        add("See [NOTES.md](NOTES.md) for the profile behind each miss and the proposed fixes.\n")
    add("![chart](results.png)\n")

    path = dest / "RESULTS.md"
    path.write_text("\n".join(lines))
    try:
        chart(results, dest / "results.png")
    except Exception as e:  # the table matters more than the picture
        print(f"chart not drawn: {e}", file=sys.stderr)
    return path


def not_measured(results, key, *names):
    """The words for a target not measured, saying why when a run it needs failed."""
    why = [f"{n}'s run failed: {failed(results, key, n)}" for n in names if failed(results, key, n)]
    return "not measured" + (f" ({'; '.join(why)})" if why else "")


def targets(results):
    rows = []

    def line(name, value, goal, text, key=None, needs=()):
        if value is None:
            rows.append([name, not_measured(results, key, *needs), "–"])
        else:
            rows.append([name, text, "yes" if value >= goal else f"no ({value / goal:.0%} of the goal)"])

    for key, label in (("plain_c16", "plain HTTP, c=16"), ("plain_c128", "plain HTTP, c=128"),
                       ("https_keepalive", "intercepted HTTPS keep-alive, nginx as a TLS reverse proxy"),
                       ("h2", "HTTP/2, nginx as a TLS reverse proxy")):
        r = ratio(get(results, key, "sidekey", "rps"), get(results, key, "nginx", "rps"))
        line(f"req/s per core ≥ nginx ({label})", r, 1.0, f"{x(r)} nginx", key, ("sidekey", "nginx"))
    s128 = get(results, "plain_c128", "sidekey", "rps")
    line("req/s per core ≥ 1.5× Envoy (plain HTTP, c=128)", ratio(s128, get(results, "plain_c128", "envoy", "rps")), 1.5,
         f"{x(ratio(s128, get(results, 'plain_c128', 'envoy', 'rps')))} Envoy", "plain_c128", ("sidekey", "envoy"))
    # p99 added latency ≤ 1.2× nginx's, at the fixed rate and at c=16.
    for key, label in (("plain_rate", "fixed rate"), ("plain_c16", "c=16"), ("plain_c128", "c=128")):
        d = get(results, key, "direct", "p99_us")
        s = get(results, key, "sidekey", "p99_us")
        n = get(results, key, "nginx", "p99_us")
        if None in (d, s, n):
            rows.append([f"p99 added latency ≤ 1.2× nginx's ({label})",
                         not_measured(results, key, "direct", "sidekey", "nginx"), "–"])
            continue
        sa, na = max(s - d, 1), max(n - d, 1)
        # The measuring stick's tail beside it: what tokio and hyper alone add at this load.
        f = get(results, key, "floor", "p99_us")
        stick = "" if f is None else f"; floor +{ms(max(f - d, 1))} ms ({max(f - d, 1) / na:.2f}×)"
        rows.append([f"p99 added latency ≤ 1.2× nginx's ({label})",
                     f"sidekey +{ms(sa)} ms, nginx +{ms(na)} ms ({sa / na:.2f}×){stick}",
                     "yes" if sa <= 1.2 * na else f"no ({sa / na:.2f}× vs 1.2×)"])
    hk = ratio(get(results, "https_keepalive", "sidekey", "rps"), get(results, "https_keepalive", "mitmproxy", "rps"))
    line("intercepted HTTPS req/s ≥ 20× mitmproxy (keep-alive)", hk, 20.0, f"{x(hk)} mitmproxy",
         "https_keepalive", ("sidekey", "mitmproxy"))
    idle = (results.get("idle_rss_kb") or {}).get("sidekey")
    if idle is not None:
        mb = idle / 1024
        anon = (results.get("idle_anon_kb") or {}).get("sidekey")
        detail = f" ({anon / 1024:.1f} MB anonymous)" if anon is not None else ""
        rows.append(["idle RSS ≤ 8 MB", f"{mb:.1f} MB{detail}", "yes" if mb <= 8 else f"no ({mb / 8:.2f}× the goal)"])
    c = (results.get("idle_conns") or {}).get("sidekey")
    if c and c.get("failed"):
        rows.append(["10k idle connections add ≤ 64 MB", f"not measured (sidekey's run failed: {c['failed']})", "–"])
    elif c and c.get("opened"):
        mb = c["added_kb"] / 1024
        scaled = mb * 10000 / c["opened"]
        rows.append([f"10k idle connections add ≤ 64 MB",
                     f"+{mb:.1f} MB for {c['opened']} ({scaled:.1f} MB per 10k)",
                     "yes" if scaled <= 64 and c["opened"] == c["wanted"] else f"no ({scaled / 64:.2f}× the goal)"])
    return rows


def chart(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["direct", "sidekey", "nginx", "envoy", "squid", "mitmproxy"]
    panels = [
        ("plain HTTP req/s (c=128)", "plain_c128", names),
        ("plain HTTP p99 ms (fixed rate)", "plain_rate", names),
        ("HTTPS keep-alive req/s", "https_keepalive", ["direct", "sidekey", "nginx", "envoy", "mitmproxy"]),
        ("HTTP/2 req/s", "h2", ["direct", "sidekey", "nginx", "envoy", "mitmproxy"]),
    ]
    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(20, 4.2))
    colors = {"direct": "#999999", "sidekey": "#2b7bba", "nginx": "#4daf4a", "envoy": "#984ea3",
              "squid": "#ff7f00", "mitmproxy": "#e41a1c", "sidekey-tunnel": "#2b7bba"}
    for ax, (title, key, ns) in zip(axes, panels):
        field = "p99_us" if "p99" in title else "rps"
        vals = [get(results, key, n, field) or 0 for n in ns]
        if field == "p99_us":
            vals = [v / 1000 for v in vals]
        # A failed run has no bar: its label says so.
        labels = [f"{n}\n(failed)" if failed(results, key, n) else n for n in ns]
        ax.bar(labels, vals, color=[colors[n] for n in ns])
        ax.set_title(title, fontsize=10)
        ax.tick_params(axis="x", rotation=45, labelsize=8)
    ax = axes[-1]
    idle = results.get("idle_rss_kb") or {}
    ns = [n for n in ["sidekey", "nginx", "envoy", "squid", "mitmproxy"] if n in idle]
    ax.bar(ns, [idle[n] / 1024 for n in ns], color=[colors[n] for n in ns])
    ax.set_title("idle RSS MB", fontsize=10)
    ax.tick_params(axis="x", rotation=45, labelsize=8)
    fig.suptitle(f"sidekey vs peers, one core each — {results['date']}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    src = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "results.json")
    print(write(json.loads(src.read_text()), src.parent))
