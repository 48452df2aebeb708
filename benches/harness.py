#!/usr/bin/env python3
"""sidekey side by side with nginx, Envoy, squid and mitmproxy, on one machine.

Run through `scripts/bench` (which installs the peers and builds the tools); this file starts
the upstream and every proxy pinned to one core, checks that each one does the same work
(the agent's dummy key replaced by a bearer token for api.bench.test, other hosts refused),
runs the scenarios interleaved, and writes benches/RESULTS.md, benches/results.json and
benches/results.png.

CPU layout: every proxy on core PROXY_CPU (one worker / thread each); the load generators
and the upstream on LOAD_CPU. On a 2-core machine the upstream shares the load generator's core,
the same for every target, so the direct baseline is the cost of client + origin alone.
"""

import argparse
import datetime
import json
import os
import platform
import random
import shutil
import socket
import string
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benches"
PEERS = BENCH / "peers"
sys.path.insert(0, str(BENCH))
import validate  # noqa: E402  (benches/ is not a package)
from validate import LOADS  # noqa: E402

PROXY_CPU = "0"
LOAD_CPU = "1"

PORTS = {
    "UP_HTTP": 18080,
    "UP_TLS": 18443,
    "SIDEKEY": 19001,
    "SIDEKEY_ADMIN": 19091,
    "SIDEKEY_TUNNEL": 19002,
    "SIDEKEY_GRANTS": 19003,
    "SIDEKEY_GRANTS_ADMIN": 19093,
    "NGINX_HTTP": 19011,
    "NGINX_TLS": 19012,
    "ENVOY_HTTP": 19021,
    "ENVOY_TLS": 19022,
    "SQUID": 19031,
    "MITM": 19041,
    "FLOOR": 19051,
}

API = "api.bench.test"
PLAIN_AUTHORITY = f"{API}:{PORTS['UP_HTTP']}"
TLS_AUTHORITY = f"{API}:{PORTS['UP_TLS']}"
TUNNEL_AUTHORITY = f"tunnel.bench.test:{PORTS['UP_TLS']}"


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------
# processes


class Proc:
    """A process this harness started, pinned to a core; measured through /proc."""

    def __init__(self, name, argv, cpu, env=None, cwd=None, stdout=None):
        self.name = name
        self.log = open(RUN / f"{name}.log", "w")
        full_env = dict(os.environ)
        full_env.update(env or {})
        self.popen = subprocess.Popen(
            ["taskset", "-c", cpu] + argv,
            stdout=stdout or self.log,
            stderr=subprocess.STDOUT if stdout is None else self.log,
            env=full_env,
            cwd=cwd,
            start_new_session=True,
        )
        self.pid = self.popen.pid

    def tree(self):
        """This process and its descendants (nginx master + worker, squid kids)."""
        pids, todo = [], [self.pid]
        while todo:
            pid = todo.pop()
            pids.append(pid)
            try:
                for task in os.listdir(f"/proc/{pid}/task"):
                    with open(f"/proc/{pid}/task/{task}/children") as f:
                        todo.extend(int(c) for c in f.read().split())
            except OSError:
                pass
        return pids

    def rss_kb(self, field="VmRSS:"):
        total = 0
        for pid in self.tree():
            try:
                with open(f"/proc/{pid}/status") as f:
                    for line in f:
                        if line.startswith(field):
                            total += int(line.split()[1])
            except OSError:
                pass
        return total

    def anon_kb(self):
        """Resident anonymous memory (heap, stacks): what the process itself allocated, as
        opposed to file pages of its executable and libraries, which are shared and clean."""
        return self.rss_kb("RssAnon:")

    def cpu_seconds(self):
        """user + system seconds of the whole tree (all threads)."""
        ticks = 0
        for pid in self.tree():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                ticks += int(fields[11]) + int(fields[12])
            except (OSError, IndexError, ValueError):
                pass
        return ticks / os.sysconf("SC_CLK_TCK")

    def alive(self):
        return self.popen.poll() is None

    def stop(self):
        if self.alive():
            try:
                os.killpg(self.pid, 15)
                self.popen.wait(timeout=5)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                try:
                    os.killpg(self.pid, 9)
                except ProcessLookupError:
                    pass


STARTED = []


def evict(program):
    """Drops `program`'s executable from the page cache, so that every target starts from its
    file read off the disk, as on a node that has not run it yet. Resident code after start
    depends on it: the kernel maps the cached pages around each fault, and pages cached by a
    write (scripts/bench copies sidekey's binary just before) come in larger blocks than pages
    read (benches/NOTES.md, "Idle RSS: what BOLT saves, and what the page cache does to the
    figure")."""
    path = shutil.which(program) or program
    try:
        fd = os.open(os.path.realpath(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)  # written pages must be clean to be dropped
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    except OSError:
        pass
    finally:
        os.close(fd)


def start(name, argv, cpu=PROXY_CPU, env=None, port=None, timeout=30, **kw):
    evict(argv[0])
    proc = Proc(name, argv, cpu, env=env, **kw)
    STARTED.append(proc)
    if port:
        wait_port(port, timeout, proc)
    return proc


def wait_port(port, timeout, proc=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{proc.name} exited; see {RUN / (proc.name + '.log')}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port} after {timeout}s")


def stop_all():
    for proc in reversed(STARTED):
        proc.stop()


def render(template, dest, **extra):
    text = (PEERS / template).read_text()
    values = {k: str(v) for k, v in PORTS.items()}
    values["RUN"] = str(RUN)
    values.update(extra)
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    Path(dest).write_text(text)
    return dest


def sh(argv, **kw):
    return subprocess.run(argv, capture_output=True, text=True, **kw)


# ---------------------------------------------------------------------------------------------
# checks: every target must do the same work


def curl(args):
    out = sh(["curl", "-s", "-m", "10", "-H", "Authorization: Bearer agent-dummy-key",
              "-w", "\n%{http_code}"] + args)
    body, _, code = out.stdout.rpartition("\n")
    return code, body


def check_injection(name, args, token=None):
    code, body = curl(args)
    ok = code == "200" and body.startswith("Bearer ") and "agent-dummy" not in body
    if token is not None:
        ok = ok and body == f"Bearer {token}"
    if not ok:
        raise RuntimeError(f"{name}: injection check failed: {code} {body[:80]!r}")
    return body[len("Bearer "):]


def check_denied(name, args, code="403"):
    got, _ = curl(args)
    if got != code:
        raise RuntimeError(f"{name}: must be refused ({code}), got {got}")


# ---------------------------------------------------------------------------------------------
# load generators


WRK_SCRIPT = """
wrk.method = "GET"
wrk.path = "{path}"
wrk.headers["Host"] = "{host}"
wrk.headers["Authorization"] = "Bearer agent-dummy-key"
wrk.headers["User-Agent"] = "sidekey-bench"
{extra}
{delay}
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{{"requests":%d,"errors":%d,"connect_errors":%d,"read_errors":%d,"write_errors":%d,'
    .. '"status_errors":%d,"timeout_errors":%d,"seconds":%.3f,"mean_us":%.1f,'
    .. '"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d,"max_us":%d}}\\n',
    summary.requests, e.connect + e.read + e.write + e.status + e.timeout,
    e.connect, e.read, e.write, e.status, e.timeout,
    summary.duration / 1e6, latency.mean, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), latency.max))
end
"""


def wrk(addr, path, connections, seconds, delay_ms=None, headers=()):
    delay = f"function delay() return {delay_ms} end" if delay_ms else ""
    extra = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in headers)
    script = RUN / f"wrk-{abs(hash((path, delay_ms, tuple(headers))))}.lua"
    script.write_text(WRK_SCRIPT.format(path=path, host=PLAIN_AUTHORITY, delay=delay, extra=extra))
    # taskset execs wrk: the process is wrk itself.
    gen = subprocess.Popen(["taskset", "-c", LOAD_CPU, "wrk", "-t1", f"-c{connections}", f"-d{seconds}s",
                            "--timeout", "10s", "-s", str(script), f"http://{addr}"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(seconds * 0.9)
        probe = stall_probe(gen.pid, addr.rsplit(":", 1)[1], validate.stall_after(seconds))
        stdout, stderr = gen.communicate(timeout=seconds + 30)
    except subprocess.TimeoutExpired:
        gen.kill()
        gen.communicate()
        raise RuntimeError(f"wrk did not finish within {seconds + 30} s")
    line = [l for l in stdout.splitlines() if l.startswith("{")]
    if not line:
        raise RuntimeError(f"wrk failed: {stdout[-400:]} {stderr[-400:]}")
    result = json.loads(line[-1])
    result["rps"] = result["requests"] / max(result["seconds"], 1e-9)
    if probe is not None:
        result["stall_probe"] = probe
    return result


def stall_probe(pid, port, idle_s):
    """How many of wrk's connections (process `pid`, to `port`) have received nothing for
    `idle_s` seconds: each connection of a closed loop always waits for an answer, so one that has
    heard nothing for that long is stalled on a request wrk will never count (wrk reports only
    answered requests). From the kernel's TCP info (`ss`, lastrcv); None if ss is missing."""
    try:
        out = sh(["ss", "-tniOpH", "state", "established", f"( dport = :{port} )"], timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    mine = [l for l in out.stdout.splitlines() if f'"wrk",pid={pid},' in l]
    idle_ms = []
    for l in mine:
        # ss leaves lastrcv out when it is 0.
        field = [f for f in l.split() if f.startswith("lastrcv:")]
        idle_ms.append(int(field[0].split(":")[1]) if field else 0)
    return {"connections": len(mine), "stalled": sum(1 for ms in idle_ms if ms >= idle_s * 1000),
            "idle_s": idle_s, "max_idle_ms": max(idle_ms, default=None)}


def load(args, timeout=120):
    try:
        out = sh(["taskset", "-c", LOAD_CPU, str(LOADGEN)] + args, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"bench-load did not finish within {timeout} s")
    line = [l for l in out.stdout.splitlines() if l.startswith("{")]
    if out.returncode != 0 or not line:
        raise RuntimeError(f"bench-load {' '.join(args)}: {out.stderr[-400:]}")
    return json.loads(line[-1])


# ---------------------------------------------------------------------------------------------
# targets


class Target:
    def __init__(self, name, proc, plain=None, https=None, https_kind=None, tunnel=None, h2=True,
                 headers=(), stick=False):
        self.name = name
        # A measuring stick, not a proxy (bench-floor): the plain scenario's throughput and
        # latency only, no SSE or idle-connection runs.
        self.stick = stick
        self.headers = headers  # extra request headers for wrk (a task grant)
        self.proc = proc
        self.plain = plain  # address for plain-HTTP forward (absolute-form), or None
        self.https = https  # bench-load args to reach api.bench.test over TLS through it
        self.https_kind = https_kind  # how: "direct", "CONNECT + interception", "TLS reverse proxy"
        self.tunnel = tunnel  # bench-load args for a blind tunnel
        self.h2 = h2


def measure(proc, key, fn, **load):
    """Runs fn(), one run of scenario `key` (its load: validate.LOADS[key], updated by `load`),
    returning its result with the CPU the proxy spent meanwhile and, under "failed", why the run
    does not count (validate.problem: an unexpected answer, an unanswered request, implausible
    figures). A run that fails or hangs is recorded so rather than ending the whole benchmark."""
    before = proc.cpu_seconds() if proc else 0.0
    try:
        result = fn()
    except (RuntimeError, subprocess.TimeoutExpired, ValueError) as e:
        result = {"error": str(e)[:300]}
    result["load"] = {**LOADS[key], **load}
    if proc:
        result["cpu_s"] = proc.cpu_seconds() - before
    why = validate.problem(key, result)
    if why:
        result["failed"] = why
    return result


def summary(res, text):
    """A run's log line: its figures, or why it failed."""
    return f"FAILED: {res['failed'][:200]}" if res.get("failed") else text


def median(values):
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def merge(runs):
    """Median of each numeric field over rounds."""
    if not runs:
        return None
    keys = set().union(*(r.keys() for r in runs))
    return {k: median([r.get(k) for r in runs if isinstance(r.get(k), (int, float))]) for k in keys}


def run_scenarios(targets, opts, results):
    d = opts.seconds
    rounds = opts.rounds
    only = opts.only
    plain = [t for t in targets if t.plain]
    https = [t for t in targets if t.https]
    tunnels = [t for t in targets if t.tunnel]
    h2 = [t for t in targets if t.https and t.h2]
    raw = {}

    def record(key, target, result):
        raw.setdefault(key, {}).setdefault(target.name, []).append(result)

    # The plain scenario's percentiles are targets, and one round's tail on a shared machine
    # moves by 2-3x between rounds: it runs more rounds, the others stop after `rounds`.
    for r in range(max(rounds, opts.plain_rounds)):
        # Interleaved: every round visits every target, in a rotated order.
        def order(ts):
            k = r % max(len(ts), 1)
            return ts[k:] + ts[:k]

        def conc(key):
            return str(LOADS[key]["concurrency"])

        if "plain" in only and r < opts.plain_rounds:
            log(f"round {r + 1}/{opts.plain_rounds}: plain HTTP forward with injection")
            for key in ("plain_c1", "plain_c16", "plain_c128"):
                c = LOADS[key]["concurrency"]
                for t in order(plain):
                    path = "/" if t.name == "direct" else f"http://{PLAIN_AUTHORITY}/"
                    res = measure(t.proc, key, lambda: wrk(t.plain, path, c, d, headers=t.headers))
                    record(key, t, res)
                    log(f"  {t.name:10} c={c:<3} "
                        + summary(res, f"{res.get('rps', 0):9.0f} req/s  p99 {res.get('p99_us')} us"))
            # A fixed offered rate well under every proxy's limit except mitmproxy's: latency
            # without queueing. 10 connections each pausing 2 ms between requests.
            rate = LOADS["plain_rate"]
            for t in order(plain):
                path = "/" if t.name == "direct" else f"http://{PLAIN_AUTHORITY}/"
                res = measure(t.proc, "plain_rate", lambda: wrk(t.plain, path, rate["concurrency"], d,
                                                                delay_ms=rate["delay_ms"], headers=t.headers))
                record("plain_rate", t, res)
                log(f"  {t.name:10} fixed rate "
                    + summary(res, f"{res.get('rps', 0):7.0f} req/s  p99 {res.get('p99_us')} us"))

        if "https" in only and r < rounds:
            log(f"round {r + 1}/{rounds}: HTTPS (keep-alive, then a new connection per request)")
            for t in order(https):
                res = measure(t.proc, "https_keepalive", lambda: load(
                    t.https + ["--mode", "load", "-c", conc("https_keepalive"), "-d", str(d)]))
                record("https_keepalive", t, res)
                log(f"  {t.name:10} keep-alive " + summary(res, f"{res.get('rps', 0):9.0f} req/s"))
                res = measure(t.proc, "https_handshake", lambda: load(
                    t.https + ["--mode", "handshake", "-c", conc("https_handshake"), "-d", str(d)]))
                record("https_handshake", t, res)
                log(f"  {t.name:10} handshakes " + summary(res, f"{res.get('rps', 0):9.0f} /s"))

        if "tunnel" in only and r < rounds:
            log(f"round {r + 1}/{rounds}: blind CONNECT tunnel")
            for t in order(tunnels):
                res = measure(t.proc, "tunnel_keepalive", lambda: load(
                    t.tunnel + ["--mode", "load", "-c", conc("tunnel_keepalive"), "-d", str(d)]))
                record("tunnel_keepalive", t, res)
                log(f"  {t.name:10} in tunnels " + summary(res, f"{res.get('rps', 0):9.0f} req/s"))
                res = measure(t.proc, "tunnel_new", lambda: load(
                    t.tunnel + ["--mode", "handshake", "-c", conc("tunnel_new"), "-d", str(d)]))
                record("tunnel_new", t, res)
                log(f"  {t.name:10} new tunnels " + summary(res, f"{res.get('rps', 0):7.0f} /s"))

        if "h2" in only and r < rounds:
            h2_load = LOADS["h2"]
            log(f"round {r + 1}/{rounds}: HTTP/2, {h2_load['connections']} connections x "
                f"{h2_load['streams']} streams")
            for t in order(h2):
                res = measure(t.proc, "h2", lambda: load(t.https + [
                    "--h2", "--mode", "load", "-c", str(h2_load["connections"]),
                    "--streams", str(h2_load["streams"]), "-d", str(d)]))
                record("h2", t, res)
                log(f"  {t.name:10} h2 " + summary(res, f"{res.get('rps', 0):9.0f} req/s"))

    if "sse" in only:
        log("streaming: SSE time to first byte")
        for t in plain:
            if t.headers or t.stick:  # bench-load sends no proxy credentials on plain requests
                continue
            path = "/sse" if t.name == "direct" else f"http://{PLAIN_AUTHORITY}/sse"
            # Each stream lasts ~0.4 s: one that has not ended after LOADS["sse"]["timeout_s"] fails the run.
            res = measure(t.proc, "sse", lambda: load(["--connect", t.plain, "--host", PLAIN_AUTHORITY,
                                                       "--uri", path, "--mode", "sse",
                                                       "--timeout", str(LOADS["sse"]["timeout_s"]),
                                                       "--count", str(opts.sse_count)], timeout=30),
                          count=opts.sse_count)
            record("sse", t, res)
            log(f"  {t.name:10} " + summary(res, f"ttfb p50 {res.get('p50_us')} us, "
                                               f"stream {res.get('stream_total_p50_us')} us"))

    for key, per_target in raw.items():
        results[key] = {name: merge(runs) for name, runs in per_target.items()}
        results.setdefault("raw", {})[key] = per_target
    # A target with a failed round gets no figures for that scenario, only why.
    validate.apply(results)


def idle_connections(targets, opts, results):
    """RSS with N idle keep-alive connections (each made one request first)."""
    out = {}
    for t in targets:
        if not t.plain or t.proc is None or t.headers or t.stick:
            continue
        base = t.proc.rss_kb()
        path = f"http://{PLAIN_AUTHORITY}/"
        gen = subprocess.Popen(
            ["taskset", "-c", LOAD_CPU, str(LOADGEN), "--connect", t.plain, "--host",
             PLAIN_AUTHORITY, "--uri", path, "--mode", "idle", "-c", str(opts.idle_conns),
             "--hold", "120"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        opened, peak = 0, base
        deadline = time.time() + opts.idle_timeout
        line = ""
        while time.time() < deadline:
            # bench-load prints "ready N" once every connection is open (or failed).
            import select
            ready, _, _ = select.select([gen.stdout], [], [], 1.0)
            peak = max(peak, t.proc.rss_kb())
            if ready:
                line = gen.stdout.readline()
                break
        error = None
        if line.startswith("ready"):
            opened = int(line.split()[1])
            time.sleep(1.0)
            peak = max(peak, t.proc.rss_kb())
        else:
            error = f"bench-load had not opened {opts.idle_conns} connections after {opts.idle_timeout} s"
        try:
            gen.stdin.close()
            gen.wait(timeout=60)
        except subprocess.TimeoutExpired:
            gen.kill()
        out[t.name] = {
            "before_kb": base,
            "with_idle_kb": peak,
            "added_kb": peak - base,
            "opened": opened,
            "wanted": opts.idle_conns,
            "per_conn_kb": (peak - base) / opened if opened else None,
        }
        if error:
            out[t.name]["error"] = error
        why = validate.idle_problem(out[t.name])
        log(f"  {t.name:10} " + (f"FAILED: {why}" if why else
                                 f"{opened} idle connections: +{(peak - base) / 1024:.1f} MB"))
        time.sleep(2.0)
    results["idle_conns"] = out


# ---------------------------------------------------------------------------------------------
# main


# Scenario groups for --only.
SCENARIOS = ("plain", "https", "tunnel", "h2", "sse", "idle")


def versions():
    def first(argv, pattern=None):
        try:
            out = sh(argv)
            text = (out.stdout + out.stderr).strip().splitlines()
            for line in text:
                if pattern is None or pattern in line:
                    return line.strip()
        except OSError:
            pass
        return "?"

    rev = sh(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]).stdout.strip()
    dirty = sh(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"]).stdout.strip()
    return {
        "sidekey": f"{rev}{'+dirty' if dirty else ''} ({BUILD}, SIDEKEY_WORKER_THREADS=1)",
        "nginx": first(["nginx", "-v"]),
        "envoy": first([str(VENV / "bin" / "envoy"), "--version"], "version"),
        "squid": first(["squid", "-v"], "Version"),
        "mitmproxy": first([str(VENV / "bin" / "mitmdump"), "--version"], "Mitmproxy"),
        "wrk": first(["wrk", "-v"], "wrk"),
        "kernel": platform.release(),
    }


def machine():
    model = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "memory": mem}


def loadavg():
    return open("/proc/loadavg").read().split()[0:3]


def main():
    global RUN, LOADGEN, UPSTREAM, FLOOR, SIDEKEY, VENV, BUILD
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    p.add_argument("--run-dir", required=True)
    p.add_argument("--venv", required=True)
    p.add_argument("--bin-dir", required=True, help="where sidekey and the bench tools are")
    p.add_argument("--build", default="release",
                   help="how the sidekey measured was built, for the report (scripts/bench: "
                        "'profile-guided release')")
    p.add_argument("--no-write", action="store_true", help="do not overwrite benches/RESULTS.md")
    p.add_argument("--only", default=",".join(SCENARIOS),
                   help=f"scenarios to run, comma-separated: {','.join(SCENARIOS)} (default: all)")
    p.add_argument("--targets", default=None,
                   help="targets to measure, comma-separated (default: all), e.g. direct,sidekey,mitmproxy")
    p.add_argument("--seconds", type=int, default=None, help="seconds per run (default 4, --quick 2)")
    p.add_argument("--rounds", type=int, default=None, help="rounds (default 2, --quick 1)")
    p.add_argument("--plain-rounds", type=int, default=None,
                   help="rounds of the plain scenario, whose p99s are targets (default: --rounds if "
                        "given, else 5, --quick 1)")
    opts = p.parse_args()
    opts.only = [s for s in opts.only.split(",") if s]
    unknown = set(opts.only) - set(SCENARIOS)
    if unknown:
        p.error(f"unknown scenario(s) {', '.join(sorted(unknown))}: choose from {', '.join(SCENARIOS)}")
    opts.targets = [n for n in opts.targets.split(",") if n] if opts.targets else None
    if opts.seconds is None:
        opts.seconds = 2 if opts.quick else 4
    if opts.plain_rounds is None:
        # Given rounds apply to every scenario; by default plain HTTP gets more.
        opts.plain_rounds = opts.rounds or (1 if opts.quick else 5)
    if opts.rounds is None:
        opts.rounds = 1 if opts.quick else 2
    opts.sse_count = 3 if opts.quick else 10
    opts.idle_conns = 1000 if opts.quick else 10000
    opts.idle_timeout = 60 if opts.quick else 120

    RUN = Path(opts.run_dir)
    if RUN.exists():
        shutil.rmtree(RUN)
    (RUN / "nginx-tmp").mkdir(parents=True)
    (RUN / "mitm").mkdir()
    # squid drops privileges to its own user: it must be able to write here.
    os.chmod(RUN, 0o777)
    VENV = Path(opts.venv)
    bins = Path(opts.bin_dir)
    LOADGEN = bins / "bench-load"
    BUILD = opts.build
    UPSTREAM = bins / "bench-upstream"
    FLOOR = bins / "bench-floor"
    SIDEKEY = bins / "sidekey"

    results = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "loadavg_start": loadavg(),
        "quick": opts.quick,
        "machine": machine(),
        "versions": versions(),
        "settings": {"seconds": opts.seconds, "rounds": opts.rounds, "plain_rounds": opts.plain_rounds,
                     "idle_conns": opts.idle_conns, "sse_count": opts.sse_count},
    }
    partial = opts.only != list(SCENARIOS) or opts.targets is not None
    if partial:
        results["settings"]["only"] = opts.only
        results["settings"]["targets"] = opts.targets
    log(f"load average at start: {' '.join(results['loadavg_start'])}")
    try:
        targets = setup()
        if opts.targets is not None:
            names = {t.name for t in targets}
            missing = set(opts.targets) - names
            if missing:
                raise SystemExit(f"unknown target(s) {', '.join(sorted(missing))}: choose from "
                                 f"{', '.join(t.name for t in targets)}")
            targets = [t for t in targets if t.name in opts.targets]
        results["https_kind"] = {t.name: t.https_kind for t in targets if t.https_kind}
        # Idle: after start, before any request (sidekey has not minted its token yet).
        results["idle_rss_kb"] = {t.name: t.proc.rss_kb() for t in targets if t.proc}
        results["idle_anon_kb"] = {t.name: t.proc.anon_kb() for t in targets if t.proc}
        verify(targets, results)
        run_scenarios(targets, opts, results)
        results["after_load_rss_kb"] = {t.name: t.proc.rss_kb() for t in targets if t.proc}
        if "idle" in opts.only:
            log(f"memory: {opts.idle_conns} idle keep-alive connections")
            idle_connections(targets, opts, results)
    finally:
        stop_all()
    results["loadavg_end"] = loadavg()
    failed = validate.apply(results)
    for key, name, why in failed:
        log(f"failed: {name} {key}: {why}")
    (RUN / "results.json").write_text(json.dumps(results, indent=1))
    import report
    if opts.no_write or partial:
        md = report.write(results, RUN)
        log(f"wrote {md} (benches/RESULTS.md left alone)")
    else:
        (BENCH / "results.json").write_text(json.dumps(results, indent=1))
        md = report.write(results, BENCH)
        log(f"wrote {md}")


def setup():
    log("starting the upstream, sidekey and the peers (proxies pinned to core 0)")
    start("upstream", [str(UPSTREAM), "--http", f"127.0.0.1:{PORTS['UP_HTTP']}",
                       "--https", f"127.0.0.1:{PORTS['UP_TLS']}", "--ca-out", str(RUN / "upstream-ca.pem"),
                       "--peer-cert-out", str(RUN / "peer-cert.pem"), "--peer-key-out", str(RUN / "peer-key.pem")],
          cpu=LOAD_CPU, port=PORTS["UP_TLS"])
    for f in ("upstream-ca.pem", "peer-cert.pem", "peer-key.pem"):
        os.chmod(RUN / f, 0o644)
    (RUN / "hosts").write_text("127.0.0.1 api.bench.test tunnel.bench.test\n")

    env = {"SIDEKEY_WORKER_THREADS": "1", "SIDEKEY_LOG": "warn"}
    sidekey = start("sidekey", [str(SIDEKEY), "run", "-c", render("sidekey.yaml", RUN / "sidekey.yaml")],
                    env=env, port=PORTS["SIDEKEY"])
    sidekey_tunnel = start("sidekey-tunnel",
                           [str(SIDEKEY), "run", "-c", render("sidekey-tunnel.yaml", RUN / "sidekey-tunnel.yaml")],
                           env=env, port=PORTS["SIDEKEY_TUNNEL"])
    # The same sidekey with task grants required: every request presents one (Proxy-Authorization).
    grants_dir = RUN / "grants"
    shutil.rmtree(grants_dir, ignore_errors=True)
    grants_dir.mkdir()
    made = sh([str(SIDEKEY), "grant", "keygen", "--dir", str(grants_dir)])
    if made.returncode != 0:
        raise RuntimeError(f"sidekey grant keygen: {made.stderr}")
    signed = sh([str(SIDEKEY), "grant", "sign", "--key", str(grants_dir / "grant-key.pem"),
                 "--audience", "bench", "--sub", "bench-agent", "--task", "bench-task",
                 "--user", "bench-user", "--route", "bench:GET", "--ttl", "1h"])
    if signed.returncode != 0:
        raise RuntimeError(f"sidekey grant sign: {signed.stderr}")
    global GRANT
    GRANT = signed.stdout.strip()
    sidekey_grants = start("sidekey-grants",
                           [str(SIDEKEY), "run", "-c", render("sidekey-grants.yaml", RUN / "sidekey-grants.yaml")],
                           env=env, port=PORTS["SIDEKEY_GRANTS"])
    check_denied("sidekey-grants (no grant)", ["--proxy", f"http://127.0.0.1:{PORTS['SIDEKEY_GRANTS']}",
                                               f"http://{PLAIN_AUTHORITY}/headers"], code="407")
    check_injection("sidekey-grants", ["--proxy", f"http://127.0.0.1:{PORTS['SIDEKEY_GRANTS']}",
                                       "--proxy-header", f"Proxy-Authorization: Bearer {GRANT}",
                                       f"http://{PLAIN_AUTHORITY}/headers"])

    # The peers inject a token as long as the one sidekey mints, so the work is the same.
    token = check_injection("sidekey", ["--proxy", f"http://127.0.0.1:{PORTS['SIDEKEY']}",
                                        f"http://{PLAIN_AUTHORITY}/headers"])
    peer_token = "".join(random.choice(string.ascii_letters + string.digits) for _ in token)
    global PEER_TOKEN
    PEER_TOKEN = peer_token

    nginx = start("nginx", ["nginx", "-c", render("nginx.conf", RUN / "nginx.conf", TOKEN=peer_token),
                            "-e", str(RUN / "nginx-error.log")], port=PORTS["NGINX_HTTP"])
    # Not a peer: tokio and hyper doing the plain scenario's forward and nothing else
    # (benches/tools/src/floor.rs), a measuring stick for what a proxy built on them can reach.
    floor = start("floor", [str(FLOOR), "--listen", f"127.0.0.1:{PORTS['FLOOR']}",
                            "--upstream", f"127.0.0.1:{PORTS['UP_HTTP']}", "--allow", PLAIN_AUTHORITY,
                            "--token-len", str(len(peer_token))], port=PORTS["FLOOR"])
    envoy = start("envoy", [str(VENV / "bin" / "envoy"), "-c",
                            render("envoy.yaml", RUN / "envoy.yaml", TOKEN=peer_token),
                            "--concurrency", "1", "--use-dynamic-base-id", "--log-level", "warn"],
                  port=PORTS["ENVOY_HTTP"], timeout=60)
    squid = start("squid", ["squid", "-N", "-f", render("squid.conf", RUN / "squid.conf", TOKEN=peer_token)],
                  port=PORTS["SQUID"], timeout=60)
    addon = render("mitm_addon.py", RUN / "mitm_addon.py", TOKEN=peer_token)
    mitm = start("mitmproxy", [str(VENV / "bin" / "mitmdump"), "--listen-host", "127.0.0.1",
                               "-p", str(PORTS["MITM"]), "-q", "-s", str(addon),
                               "--set", f"confdir={RUN / 'mitm'}",
                               "--set", f"ssl_verify_upstream_trusted_ca={RUN / 'upstream-ca.pem'}",
                               "--set", "stream_large_bodies=1"],
                 port=PORTS["MITM"], timeout=60)

    up_ca = str(RUN / "upstream-ca.pem")

    def via_connect(port, ca):
        return ["--connect", f"127.0.0.1:{port}", "--tunnel", TLS_AUTHORITY, "--tls", API,
                "--ca", ca, "--host", TLS_AUTHORITY, "--uri", "/"]

    def reverse(port):
        return ["--connect", f"127.0.0.1:{port}", "--tls", API, "--ca", up_ca,
                "--host", API, "--uri", "/"]

    def tunnel(port):
        return ["--connect", f"127.0.0.1:{port}", "--tunnel", TUNNEL_AUTHORITY, "--tls",
                "tunnel.bench.test", "--ca", up_ca, "--host", TUNNEL_AUTHORITY, "--uri", "/"]

    direct_https = ["--connect", f"127.0.0.1:{PORTS['UP_TLS']}", "--tls", API, "--ca", up_ca,
                    "--host", TLS_AUTHORITY, "--uri", "/"]
    direct_tunnel = ["--connect", f"127.0.0.1:{PORTS['UP_TLS']}", "--tls", "tunnel.bench.test",
                     "--ca", up_ca, "--host", TUNNEL_AUTHORITY, "--uri", "/"]
    return [
        Target("direct", None, plain=f"127.0.0.1:{PORTS['UP_HTTP']}", https=direct_https,
               https_kind="direct TLS to the upstream", tunnel=direct_tunnel),
        Target("sidekey", sidekey, plain=f"127.0.0.1:{PORTS['SIDEKEY']}",
               https=via_connect(PORTS["SIDEKEY"], str(RUN / "sidekey-ca.pem")),
               https_kind="CONNECT + interception"),
        Target("nginx", nginx, plain=f"127.0.0.1:{PORTS['NGINX_HTTP']}", https=reverse(PORTS["NGINX_TLS"]),
               https_kind="TLS reverse proxy (no forward interception)"),
        Target("envoy", envoy, plain=f"127.0.0.1:{PORTS['ENVOY_HTTP']}", https=reverse(PORTS["ENVOY_TLS"]),
               https_kind="TLS reverse proxy (no forward interception)"),
        Target("squid", squid, plain=f"127.0.0.1:{PORTS['SQUID']}", tunnel=tunnel(PORTS["SQUID"])),
        Target("mitmproxy", mitm, plain=f"127.0.0.1:{PORTS['MITM']}",
               https=via_connect(PORTS["MITM"], str(RUN / "mitm" / "mitmproxy-ca-cert.pem")),
               https_kind="CONNECT + interception"),
        Target("sidekey-tunnel", sidekey_tunnel, tunnel=tunnel(PORTS["SIDEKEY_TUNNEL"])),
        Target("floor", floor, plain=f"127.0.0.1:{PORTS['FLOOR']}", stick=True),
        Target("sidekey-grants", sidekey_grants, plain=f"127.0.0.1:{PORTS['SIDEKEY_GRANTS']}",
               https=via_connect(PORTS["SIDEKEY_GRANTS"], str(RUN / "sidekey-grants-ca.pem"))
               + ["--proxy-auth", f"Bearer {GRANT}"],
               https_kind="CONNECT + interception, grant at CONNECT",
               headers=[("Proxy-Authorization", f"Bearer {GRANT}")]),
    ]


def verify(targets, results):
    """Each proxy injects a token of the same length and refuses other hosts."""
    log("checking that every proxy does the same work")
    checked = {}
    for t in targets:
        # sidekey-tunnel routes nothing; sidekey-grants needs a grant (checked in setup).
        if t.proc is None or t.name in ("sidekey-tunnel", "sidekey-grants"):
            continue
        # The floor's token is as long as the peers', all "x".
        token = {"sidekey": None, "floor": "x" * len(PEER_TOKEN)}.get(t.name, PEER_TOKEN)
        if t.plain:
            check_injection(t.name, ["--proxy", f"http://{t.plain}", f"http://{PLAIN_AUTHORITY}/headers"], token)
            check_denied(t.name, ["--proxy", f"http://{t.plain}", "http://other.bench.test:18080/"])
        if t.https:
            args = t.https
            ca = args[args.index("--ca") + 1]
            addr = args[args.index("--connect") + 1]
            if "--tunnel" in args:
                extra = ["--proxy", f"http://{addr}", "--cacert", ca, f"https://{TLS_AUTHORITY}/headers"]
            else:
                port = addr.rsplit(":", 1)[1]
                extra = ["--resolve", f"{API}:{port}:127.0.0.1", "--cacert", ca,
                         f"https://{API}:{port}/headers"]
            check_injection(t.name + " https", extra, token)
        checked[t.name] = "token injected, agent's key removed, other hosts 403"
    results["verified"] = checked


if __name__ == "__main__":
    main()
