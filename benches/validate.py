"""Whether a benchmark run worked, checked before any figure or ratio is computed from it.

A run is one load generator invocation against one target (one round of one scenario). It counts
only if every request got the expected answer and its figures are plausible:

- wrk (plain HTTP): no socket errors (connect, read, write), no timeouts, no answer with a status
  of 400 or more (wrk's own counts; the proxies here answer 200 or an error status, never 3xx);
  none of its connections stalled: near the end of the run (at 90 % of it), no connection had
  received nothing for `stall_after(seconds)` (the kernel's TCP info through `ss`, lastrcv; wrk
  never counts a request still waiting for its answer, so a stalled connection is invisible in
  its own figures: that is how mitmproxy's broken plain-HTTP runs, 5 requests per connection and
  then nothing, came out as 1, 16 and 128 req/s); more requests answered than connections; and
  the answered requests fill at least MIN_BUSY of the connections' time (requests × (mean
  latency + pause) ≥ MIN_BUSY × connections × duration: Little's law for a closed loop, which
  also catches a stall that the probe missed, and is all there is for results written before it).
- bench-load (TLS, tunnels, HTTP/2, SSE, idle connections): no request without a 2xx answer
  (`errors`: of them `bad_status` were answered with another status, `timeouts` got nothing
  within its `--timeout`, the rest broke their connection); more requests answered than requests
  in flight at once; for SSE, every stream answered; for idle connections, every connection's
  first request answered.

`problem()` says why a run does not count (None when it does); `apply()` replaces every failed
target's figures in a results dict by {"failed": why}, so that nothing downstream (medians,
ratios, targets, the chart) is computed from it. The harness and report.py both call it.
"""

# What each scenario asks of its load generator: requests in flight at once (connections, or
# connections × streams for HTTP/2, or handshake workers), the pause after each answer (wrk
# `delay()`), and for SSE how many streams one after another. benches/harness.py drives the
# runs with these same numbers.
LOADS = {
    "plain_c1": {"tool": "wrk", "concurrency": 1},
    "plain_c16": {"tool": "wrk", "concurrency": 16},
    "plain_c128": {"tool": "wrk", "concurrency": 128},
    "plain_rate": {"tool": "wrk", "concurrency": 10, "delay_ms": 2},
    "https_keepalive": {"tool": "bench-load", "concurrency": 16},
    "https_handshake": {"tool": "bench-load", "concurrency": 8},
    "tunnel_keepalive": {"tool": "bench-load", "concurrency": 16},
    "tunnel_new": {"tool": "bench-load", "concurrency": 8},
    "h2": {"tool": "bench-load", "concurrency": 4 * 32, "connections": 4, "streams": 32},
    "sse": {"tool": "bench-load", "concurrency": 1, "timeout_s": 5},  # the harness adds "count"
}

# bench-load's `--timeout` unless the scenario says otherwise (LOADS[key]["timeout_s"]).
LOAD_TIMEOUT_S = 10


def stall_after(seconds):
    """How long one of wrk's connections may go without receiving anything, in a run of
    `seconds`, before it counts as stalled (probed at 90 % of the run)."""
    return max(1.0, 0.45 * seconds)

# Answered requests must account for at least this share of the connections' time (wrk). A
# working closed-loop run is near 1: short runs on the bench machine gave 0.79 (direct at c=128,
# where the load generator's core is saturated and its own turn-around shows) to 1.3; a
# connection that waits for an answer that never comes adds time and no request: mitmproxy's
# stalled runs gave 0.003 (c=1), 0.04 (fixed rate), 0.05 (c=16) and 0.46 (c=128).
MIN_BUSY = 0.6


def plural(n, word):
    return f"{n:,} {word}" if n == 1 else f"{n:,} {word}s"


def problem(key, run):
    """Why this run of scenario `key` does not count, or None if it does."""
    if run is None:
        return "no run"
    if isinstance(run.get("failed"), str):
        return run["failed"]
    if run.get("error"):  # the load generator itself failed or hung (set by the harness)
        return str(run["error"])
    load = dict(LOADS.get(key, {}))
    load.update(run.get("load") or {})
    requests = int(run.get("requests") or 0)
    reasons = []
    if load.get("tool") == "wrk" and "status_errors" in run:
        socket_errors = sum(int(run.get(k) or 0) for k in ("connect_errors", "read_errors", "write_errors"))
        if run["status_errors"]:
            reasons.append(plural(int(run["status_errors"]), "answer") + " with status ≥ 400")
        if socket_errors:
            reasons.append(plural(socket_errors, "socket error") + " (connect, read or write)")
        if run.get("timeout_errors"):
            reasons.append(plural(int(run["timeout_errors"]), "wrk timeout"))
        probe = run.get("stall_probe") or {}
        if probe.get("stalled"):
            reasons.append(f"{probe['stalled']:,} of {plural(probe['connections'], 'connection')} had "
                           f"received nothing for {probe['idle_s']:g} s near the end (requests left unanswered)")
    elif "bad_status" in run:
        bad, timeouts = int(run.get("bad_status") or 0), int(run.get("timeouts") or 0)
        broken = int(run.get("errors") or 0) - bad - timeouts
        if bad:
            reasons.append(plural(bad, "answer") + f" not 2xx (last {run.get('bad_status_code')})")
        if timeouts:
            reasons.append(plural(timeouts, "request") + " (or connection attempt) with no answer within "
                           f"{load.get('timeout_s', LOAD_TIMEOUT_S):g} s")
        if broken:
            reasons.append(plural(broken, "broken connection"))
    elif run.get("errors"):
        reasons.append(plural(int(run["errors"]), "request") + " without a 2xx answer")
    if reasons:
        return ", ".join(reasons)

    concurrency = int(load.get("concurrency") or 1)
    if key == "sse":
        count = int(load.get("count") or 0)  # results written before the harness stored it: none
        if requests == 0 or requests < count:
            return f"{requests} of {count or '?'} streams answered"
        return None
    if requests <= concurrency:
        return (f"only {plural(requests, 'request')} answered with {concurrency} in flight at once "
                "(connections that stop answering)")
    seconds = run.get("seconds")
    mean = run.get("mean_us", run.get("p50_us"))  # results written before mean_us: the median
    if load.get("tool") == "wrk" and seconds and mean is not None:
        busy = requests * (mean + 1000 * (load.get("delay_ms") or 0)) / (concurrency * seconds * 1e6)
        if busy < MIN_BUSY:
            return (f"connections stopped answering: {requests:,} answers at {mean / 1000:.2f} ms "
                    f"mean fill {busy:.0%} of {plural(concurrency, 'connection')} × {seconds:.1f} s")
    return None


def idle_problem(entry):
    """Why an idle-connections measurement does not count, or None."""
    if not entry:
        return "no run"
    if isinstance(entry.get("failed"), str):
        return entry["failed"]
    if entry.get("error"):
        return str(entry["error"])
    opened, wanted = entry.get("opened") or 0, entry.get("wanted") or 0
    if opened < wanted:
        return f"{wanted - opened:,} of {wanted:,} connections got no 2xx answer to their request"
    return None


def apply(results):
    """Marks every failed run in `results` (the harness's dict) and drops its figures: a
    scenario's entry for a target becomes {"failed": why} when any of its rounds failed.
    Returns [(scenario, target, why)]."""
    failed = []
    for key, per_target in (results.get("raw") or {}).items():
        for name, runs in per_target.items():
            whys = [(i + 1, problem(key, run)) for i, run in enumerate(runs)]
            bad = [(i, why) for i, why in whys if why]
            if not bad:
                continue
            why = bad[0][1]  # the first failed round's reason; which rounds failed
            if len(runs) > 1:
                why += f" (round{'s' if len(bad) > 1 else ''} {', '.join(str(i) for i, _ in bad)} of {len(runs)})"
            results.setdefault(key, {})[name] = {"failed": why}
            failed.append((key, name, why))
    for name, entry in (results.get("idle_conns") or {}).items():
        why = idle_problem(entry)
        if why:
            results["idle_conns"][name] = {"failed": why, "wanted": entry.get("wanted")}
            failed.append(("idle_conns", name, why))
    return failed


def failed(results, key, name):
    """Why this target's run of scenario `key` failed, or None (also when it was not run)."""
    entry = (results.get(key) or {}).get(name)
    if isinstance(entry, dict) and isinstance(entry.get("failed"), str):
        return entry["failed"]
    return None
