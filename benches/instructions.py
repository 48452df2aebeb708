"""Instructions per request, counted by callgrind, sidekey side by side with nginx
(`scripts/bench --instructions`).

Each target runs under `valgrind --tool=callgrind` twice — N1 and N2 requests on one keep-alive
connection, absolute-form plain HTTP with the bearer token injected (the same work as the plain
scenario of `harness.py`) — and the figure is (I(N2) - I(N1)) / (N2 - N1): the user-space
instructions one more request costs, start-up and the connection excluded. Counting is exact
and does not depend on what else the machine is doing, so a change can be measured on a busy
machine: the same binary and inputs give the same count within a fraction of a percent.
Kernel work (syscalls, loopback TCP) is not counted, for either target.

Every answer is checked (status 200, and for sidekey the token replaced); a run that fails is
reported as failed, never as a figure.

With --profile, sidekey's functions with the most instructions per request (self and
inclusive) are printed: the difference of the two runs' `callgrind_annotate` counts, divided by
N2 - N1.

With --syscalls, the same runs under `strace -f -c` count system calls per request instead
(every thread; the kernel side of the work, which instructions leave out).

With --wrk C, the load is wrk with C keep-alive connections for 4 s, then for 12 s (the plain
scenario; the difference of the two runs' counts divided by the difference of the requests wrk
saw answered, every one of them without error): what a count is under concurrent load, where
requests are served back to back, rather than one at a time.

With --cache, the same runs under `valgrind --tool=cachegrind --cache-sim=yes` count, per
request, the misses of a simulated cache shaped like this machine's (read from sysfs: L1
instruction and data caches, and the L2 as the last level): how much code and data one request
walks through, which instructions alone do not show (a request that runs 40k instructions
spread over much code misses the instruction cache where a tighter one does not).

With --scenario https, the requests are intercepted keep-alive HTTPS instead: a CONNECT and TLS
with sidekey's minted leaf, the request sent on over TLS to the bench API's HTTPS port; nginx,
which cannot intercept a CONNECT, does the same TLS work as a reverse proxy (TLS in, TLS out).

Usage: instructions.py --sidekey BIN --upstream BIN [--run-dir DIR] [--n1 200] [--n2 1200]
                       [--scenario plain|https] [--targets sidekey,nginx] [--profile]
                       [--syscalls] [--json]
"""

import argparse
import http.client
import json
import os
import re
import shutil
import ssl
import signal
import socket
import subprocess
import sys
from pathlib import Path

from benchkit import (API, SIDEKEY_PORT, UP_HTTP, UP_TLS, load, render, render_sidekey,
                      start_upstream, wait_port)

NGINX_HTTP = 18310
NGINX_TLS = 18311
FLOOR_HTTP = 18320
SUMMARY = re.compile(r"^(?:summary|totals):\s+(\d+)", re.M)
# A token of a JWT's length for nginx to inject (sidekey injects the JWT its local issuer mints).
PEER_TOKEN = "x" * 300


class Https:
    """The intercepted-HTTPS scenario: keep-alive HTTPS on one connection, TLS 1.3 on both legs.
    To sidekey, a CONNECT to the bench API's HTTPS port and TLS inside with the leaf sidekey mints
    (trusting its CA); to nginx, TLS to its reverse-proxy listener (nginx cannot intercept a
    CONNECT), which sends the request on over TLS to the same upstream."""

    def __init__(self, ca, tunnel):
        self.ca, self.tunnel = ca, tunnel

    def connection(self, port):
        ctx = ssl.create_default_context(cafile=str(self.ca))
        if self.tunnel:
            conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=60, context=ctx)
            conn.set_tunnel(f"{API}:{UP_TLS}")
        else:
            # The certificate names the API and the TCP address is loopback: connected here,
            # with the API's name for SNI and the certificate check.
            conn = http.client.HTTPSConnection(API, port, timeout=60, context=ctx)
            conn.sock = ctx.wrap_socket(
                socket.create_connection(("127.0.0.1", port), timeout=60), server_hostname=API)
        return conn

    def get(self, conn, path):
        conn.request("GET", path, headers={
            "Host": f"{API}:{UP_TLS}", "Authorization": "Bearer agent-dummy-key"})
        resp = conn.getresponse()
        return resp.status, resp.read()


def check_injection(port, https=None):
    if https is None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.request("GET", f"http://{API}:{UP_HTTP}/headers", headers={
            "Host": f"{API}:{UP_HTTP}", "Authorization": "Bearer agent-dummy-key"})
        resp = conn.getresponse()
        status, body = resp.status, resp.read()
    else:
        conn = https.connection(port)
        status, body = https.get(conn, "/headers")
    body = body.decode(errors="replace")
    conn.close()
    if status != 200 or "agent-dummy-key" in body or "Bearer " not in body:
        raise RuntimeError(f"the token was not injected: {status} {body[:200]}")


def load_https(https, port, n):
    """n GETs on one keep-alive HTTPS connection; every answer must be a 200."""
    conn = https.connection(port)
    for i in range(n):
        status, _ = https.get(conn, "/")
        if status != 200:
            raise RuntimeError(f"request {i}: status {status}")
    conn.close()


# What a run counts: "instructions" (callgrind), "syscalls" (strace -c, every thread) or
# "cache" (cachegrind's simulated cache misses).
MODE = "instructions"

# With --wrk: wrk's connections, its two runs' seconds, and the requests each run answered.
WRK = None
WRK_SECONDS = (4, 12)
SERVED = {}
WRK_SCRIPT = f"""
wrk.method = "GET"
wrk.path = "http://{API}:{UP_HTTP}/"
wrk.headers["Host"] = "{API}:{UP_HTTP}"
wrk.headers["Authorization"] = "Bearer agent-dummy-key"
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('{{"requests":%d,"errors":%d}}\\n', summary.requests,
    e.connect + e.read + e.write + e.status + e.timeout))
end
"""


def load_wrk(port, seconds, run, out):
    """wrk's keep-alive load for `seconds`; the requests it saw answered go in SERVED[out]."""
    script = run / "wrk.lua"
    script.write_text(WRK_SCRIPT)
    w = subprocess.run(["wrk", "-t1", f"-c{WRK}", f"-d{seconds}s", "--timeout", "30s",
                        "-s", str(script), f"http://127.0.0.1:{port}"],
                       capture_output=True, text=True, timeout=seconds + 120)
    m = re.search(r'"requests":(\d+),"errors":(\d+)', w.stdout)
    if not m:
        raise RuntimeError(f"wrk gave no summary: {w.stdout[-300:]} {w.stderr[-300:]}")
    if int(m.group(2)):
        raise RuntimeError(f"wrk saw {m.group(2)} errors of {m.group(1)} requests")
    SERVED[out] = int(m.group(1))


# cachegrind's events, as its summary line lists them with --cache-sim=yes.
CACHE_EVENTS = ("Ir", "I1mr", "ILmr", "Dr", "D1mr", "DLmr", "Dw", "D1mw", "DLmw")


def cache_model():
    """cachegrind's --I1/--D1/--LL for this machine's caches (sysfs, CPU 0): the L1 caches,
    and the L2 as the last level (the cache a core has to itself)."""
    shape = {}
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        level = (index / "level").read_text().strip()
        kind = (index / "type").read_text().strip()
        size = (index / "size").read_text().strip()
        size = int(size[:-1]) * 1024 if size.endswith("K") else int(size)
        ways = (index / "ways_of_associativity").read_text().strip()
        line = (index / "coherency_line_size").read_text().strip()
        name = {("1", "Instruction"): "I1", ("1", "Data"): "D1", ("2", "Unified"): "LL"}.get(
            (level, kind))
        if name:
            shape[name] = f"--{name}={size},{ways},{line}"
    if len(shape) != 3:
        raise RuntimeError(f"cannot read this machine's L1 and L2 caches from sysfs: {shape}")
    return list(shape.values())


def callgrind(cmd, out, cwd, env=None):
    if MODE == "syscalls":
        wrapper = ["strace", "-f", "-c", "-o", str(out)]
    elif MODE == "cache":
        wrapper = ["valgrind", "--tool=cachegrind", "--cache-sim=yes", *cache_model(),
                   f"--cachegrind-out-file={out}"]
    else:
        wrapper = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                   "--dump-instr=no", "--collect-jumps=no"]
    return subprocess.Popen(
        [*wrapper, *cmd],
        cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**os.environ, **(env or {})})


def stop(proc, sig):
    """Sends `sig` to the target: under strace, to the traced child (strace does not pass
    signals on)."""
    if MODE == "syscalls":
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        for child in children:
            os.kill(int(child), sig)
    else:
        proc.send_signal(sig)


def instructions(out):
    text = Path(out).read_text(errors="replace")
    if MODE == "syscalls":
        # strace -c's last line: % time, seconds, usecs/call, calls, [errors,] "total".
        totals = [line.split() for line in text.splitlines() if line.endswith(" total")]
        if not totals:
            raise RuntimeError(f"no totals in {out}")
        return int(totals[-1][3])
    if MODE == "cache":
        events = re.search(r"^events:\s+(.*)$", text, re.M)
        summary = re.search(r"^summary:\s+(.*)$", text, re.M)
        if not events or not summary:
            raise RuntimeError(f"no totals in {out}")
        counts = dict(zip(events.group(1).split(), map(int, summary.group(1).split())))
        return {e: counts.get(e, 0) for e in CACHE_EVENTS}
    m = SUMMARY.search(text)
    if not m:
        raise RuntimeError(f"no totals in {out}")
    return int(m.group(1))


def serve_and_count(cmd, port, n, out, run, env=None, sig=signal.SIGTERM, https=None):
    """Runs `cmd` counted (callgrind or strace), waits for `port`, checks the injection, sends
    `n` requests (plain, or HTTPS as `https` says), stops it with `sig`, and returns its count;
    a target that exits with an error fails the run."""
    proc = callgrind(cmd, out, run, env)
    try:
        wait_port(port, proc, timeout=120)
        check_injection(port, https)
        if WRK is not None:
            load_wrk(port, n, run, out)
        elif https is None:
            load(port, n)
        else:
            load_https(https, port, n)
    finally:
        stop(proc, sig)
        _, err = proc.communicate(timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"{Path(cmd[0]).name} exited with {proc.returncode}: {err[-2000:]}")
    return instructions(out)


def run_sidekey(sidekey, run, n, out, scenario):
    config = render_sidekey(run, "sidekey-instr.yaml")
    # sidekey writes its CA when it starts: the scenario reads it when the first request goes.
    https = Https(run / "sidekey-ca.pem", tunnel=True) if scenario == "https" else None
    return serve_and_count([sidekey, "run", "--config", str(config)], SIDEKEY_PORT, n, out, run,
                           {"SIDEKEY_WORKER_THREADS": "1", "SIDEKEY_LOG": "warn"}, https=https)


def run_nginx(run, n, out, scenario):
    (run / "nginx-tmp").mkdir(exist_ok=True)
    if not (run / "peer-cert.pem").exists():
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:P-256", "-nodes", "-subj", f"/CN={API}",
                        "-addext", f"subjectAltName=DNS:{API}", "-days", "1",
                        "-keyout", str(run / "peer-key.pem"), "-out", str(run / "peer-cert.pem")],
                       check=True, capture_output=True)
    conf = render("nginx.conf", run / "nginx.conf", RUN=run, NGINX_HTTP=NGINX_HTTP,
                  NGINX_TLS=NGINX_TLS, TOKEN=PEER_TOKEN)
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    # One process: the master serves (no worker to follow), like sidekey on one worker thread.
    https = Https(run / "peer-cert.pem", tunnel=False) if scenario == "https" else None
    return serve_and_count([nginx, "-c", str(conf), "-e", str(run / "nginx-error.log"),
                            "-g", "master_process off;"],
                           NGINX_TLS if https else NGINX_HTTP, n, out, run,
                           sig=signal.SIGQUIT, https=https)


def run_floor(floor, run, n, out):
    """bench-floor (benches/tools/src/floor.rs): tokio and hyper doing the scenario's forward and
    nothing else, the floor under any proxy built on them."""
    return serve_and_count([floor, "--listen", f"127.0.0.1:{FLOOR_HTTP}", "--upstream",
                            f"127.0.0.1:{UP_HTTP}", "--allow", f"{API}:{UP_HTTP}",
                            "--token-len", str(len(PEER_TOKEN))], FLOOR_HTTP, n, out, run)


def function_costs(out, inclusive):
    """callgrind_annotate's per-function instruction counts of one run (self or inclusive)."""
    text = subprocess.run(["callgrind_annotate", f"--inclusive={'yes' if inclusive else 'no'}",
                           "--threshold=100", "--auto=no", str(out)],
                          capture_output=True, text=True).stdout
    costs = {}
    for line in text.splitlines():
        m = re.match(r"\s*([\d,]+) \([^)]*\)\s+(.*)$", line)
        if m and "PROGRAM TOTALS" not in line and "=>" not in line:
            name = re.sub(r" \[[^\]]*\]$", "", m.group(2))
            costs[name] = costs.get(name, 0) + int(m.group(1).replace(",", ""))
    return costs


def crate_of(location):
    """Where a function of callgrind_annotate's `file:function` comes from: a registry crate's
    name, a sidekey crate, a part of Rust's standard library, or libc's source directory. Code
    inlined into a function counts for that function's crate."""
    path = location.split(":", 1)[0]
    if "/registry/src/" in path:
        return re.sub(r"-\d+\.\d+.*$", "", path.split("/registry/src/")[1].split("/")[1])
    if "/rust/deps/" in path:  # the standard library's own copies (hashbrown)
        return "std:" + re.sub(r"-\d+\.\d+.*$", "", path.split("/rust/deps/")[1].split("/")[0])
    if path.startswith("/rustc/") and "/library/" in path:
        return "std:" + path.split("/library/")[1].split("/")[0]
    if "/crates/" in path:
        return "sidekey-" + path.split("/crates/")[1].split("/")[0]
    if "/benches/tools/" in path:
        return "bench-floor"
    if path.startswith("./"):
        return "libc:" + path.split("/")[1]
    return "other (no debug information)" if path == "???" else "other"


def by_crate(first, second, requests):
    """Instructions per request by crate: the difference of two runs' self costs."""
    totals = []
    for out in (first, second):
        per_crate = {}
        for name, cost in function_costs(out, inclusive=False).items():
            crate = crate_of(name)
            per_crate[crate] = per_crate.get(crate, 0) + cost
        totals.append(per_crate)
    per = {k: (totals[1].get(k, 0) - totals[0].get(k, 0)) / requests
           for k in set(totals[0]) | set(totals[1])}
    whole = sum(per.values()) or 1
    return "\n".join(f"{v:9.0f}  {100 * v / whole:5.1f} %  {k}"
                     for k, v in sorted(per.items(), key=lambda kv: -kv[1]) if abs(v) >= 50)


def profile(first, second, requests, top=40):
    """The functions one request spends most in: the difference of two runs' per-function
    counts (so start-up drops out), divided by the requests between them."""
    lines = []
    for inclusive in (False, True):
        a, b = function_costs(first, inclusive), function_costs(second, inclusive)
        per = {k: (b.get(k, 0) - a.get(k, 0)) / requests for k in set(a) | set(b)}
        lines.append(f"-- per request, {'inclusive' if inclusive else 'self'}:")
        for name, v in sorted(per.items(), key=lambda kv: -kv[1])[:top]:
            name = re.sub(r"^.*/registry/src/[^/]+/", "", name)
            lines.append(f"{v:9.0f}  {name[:160]}")
    return "\n".join(lines)


def cache_per_request(counts, n):
    """Per request, from the two runs' cachegrind totals: instructions, L1 instruction misses,
    L1 data misses (reads and writes), last-level (L2) misses of each."""
    d = {e: (counts[1][e] - counts[0][e]) / n for e in CACHE_EVENTS}
    if d["Ir"] <= 0:
        raise RuntimeError(f"implausible counts {counts}")
    return {"instructions": round(d["Ir"]), "i1_misses": round(d["I1mr"]),
            "d1_misses": round(d["D1mr"] + d["D1mw"]), "l2_misses": round(d["ILmr"] + d["DLmr"] + d["DLmw"], 1),
            "i1_misses_per_1k_instructions": round(1000 * d["I1mr"] / d["Ir"], 1)}


def print_cache(results, as_json):
    if as_json:
        print(json.dumps(results))
        return
    print(f"{'':8} {'instructions':>12} {'L1i misses':>11} {'L1d misses':>11} {'L2 misses':>10}   per request"
          f" (simulated: {' '.join(cache_model())})")
    for target, r in results.items():
        if "failed" in r:
            print(f"{target:8} failed: {r['failed']}")
        else:
            print(f"{target:8} {r['instructions']:12,} {r['i1_misses']:11,} {r['d1_misses']:11,} "
                  f"{r['l2_misses']:10,}   ({r['i1_misses_per_1k_instructions']} L1i misses per 1k "
                  f"instructions)")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--sidekey", required=True)
    p.add_argument("--upstream", required=True)
    p.add_argument("--run-dir", default="/tmp/sidekey-instructions")
    p.add_argument("--n1", type=int, default=200)
    p.add_argument("--n2", type=int, default=1200)
    p.add_argument("--scenario", choices=("plain", "https"), default="plain",
                   help="plain: absolute-form HTTP; https: intercepted keep-alive HTTPS (to "
                        "nginx: its TLS reverse proxy)")
    p.add_argument("--targets", default="sidekey,nginx",
                   help="any of sidekey, nginx, floor (bench-floor: tokio and hyper alone)")
    p.add_argument("--floor", help="the bench-floor binary (default: beside --upstream)")
    p.add_argument("--by-crate", action="store_true",
                   help="split each target's instructions per request by the crate (or libc "
                        "part) of the function they run in")
    p.add_argument("--profile", action="store_true")
    p.add_argument("--syscalls", action="store_true",
                   help="count system calls per request (strace -c) instead of instructions")
    p.add_argument("--cache", action="store_true",
                   help="count simulated cache misses per request (cachegrind, this machine's "
                        "L1 and L2) instead of instructions")
    p.add_argument("--wrk", type=int, metavar="C",
                   help="load with wrk, C connections, for 4 s then 12 s, instead of N1 and N2 "
                        "requests one at a time")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    if args.syscalls and args.cache:
        raise SystemExit("--syscalls and --cache count different runs: one at a time")
    if args.wrk is not None and args.scenario != "plain":
        raise SystemExit("--wrk loads the plain scenario only")
    if args.floor is None:
        args.floor = str(Path(args.upstream).with_name("bench-floor"))
    global MODE, WRK
    WRK = args.wrk
    if WRK is not None:
        args.n1, args.n2 = WRK_SECONDS
    MODE = "syscalls" if args.syscalls else "cache" if args.cache else "instructions"
    unit = "system calls" if args.syscalls else "instructions"
    run = Path(args.run_dir)
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    upstream = start_upstream(args.upstream, run)
    results = {}
    answered = {}  # requests each target's count is divided by
    try:
        for target in args.targets.split(","):
            try:
                counts = []
                for n in (args.n1, args.n2):
                    out = run / f"callgrind.{target}.{n}"
                    if target == "sidekey":
                        counts.append(run_sidekey(args.sidekey, run, n, out, args.scenario))
                    elif target == "nginx":
                        counts.append(run_nginx(run, n, out, args.scenario))
                    elif target == "floor" and args.scenario == "https":
                        raise RuntimeError("bench-floor serves plain HTTP only")
                    elif target == "floor":
                        counts.append(run_floor(args.floor, run, n, out))
                    else:
                        raise SystemExit(f"unknown target {target}")
                requests = args.n2 - args.n1
                if WRK is not None:
                    requests = (SERVED[run / f"callgrind.{target}.{args.n2}"]
                                - SERVED[run / f"callgrind.{target}.{args.n1}"])
                    if requests <= 0:
                        raise RuntimeError("the longer wrk run answered no more requests")
                answered[target] = requests
                if args.cache:
                    results[target] = cache_per_request(counts, requests)
                    continue
                per = (counts[1] - counts[0]) / requests
                if per <= 0:
                    raise RuntimeError(f"implausible counts {counts}")
                results[target] = {"instructions": round(per, 2) if args.syscalls else round(per)}
            except RuntimeError as e:
                results[target] = {"failed": str(e)}
    finally:
        upstream.terminate()
        upstream.wait()
    if args.cache:
        return print_cache(results, args.json)
    base = results.get("nginx", {}).get("instructions")
    for r in results.values():
        if base and "instructions" in r:
            r["vs_nginx"] = round(r["instructions"] / base, 2)
    if args.json:
        print(json.dumps(results))
    else:
        for target, r in results.items():
            if "failed" in r:
                print(f"{target:8} failed: {r['failed']}")
            else:
                ratio = f"  ({r['vs_nginx']:.2f}x nginx)" if "vs_nginx" in r else ""
                print(f"{target:8} {r['instructions']:9,} {unit} per request{ratio}")
    for wanted, title, show in ((args.by_crate, "per request, by crate", by_crate),
                                (args.profile, "its functions", profile)):
        if not wanted or args.syscalls:
            continue
        for target, r in results.items():
            if "instructions" in r:
                print(f"-- {target}, {title}:")
                print(show(run / f"callgrind.{target}.{args.n1}",
                           run / f"callgrind.{target}.{args.n2}", answered[target]))


if __name__ == "__main__":
    sys.exit(main())
