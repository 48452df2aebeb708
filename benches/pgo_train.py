#!/usr/bin/env python3
"""The training run of a profile-guided build (scripts/build-pgo): an instrumented sidekey does
the work it is built for, and the counts it writes at exit tell the compiler which code is hot.

It starts bench-upstream and three sidekeys on the benchmarks' configurations (benches/peers:
injection, task grants required, blind tunnels), drives each scenario of the benchmark with
bench-load for a few seconds (plain HTTP forward at 16 and 128 connections, intercepted HTTPS
kept alive and one handshake per request, HTTP/2, grants on plain HTTP and at CONNECT, blind
tunnels, SSE), then stops the sidekeys with SIGTERM so that they drain and write their profiles. The run
directory (configs, logs, the audit files) is removed after a run that worked.

A scenario that answers anything but 2xx, or answers nothing, fails the run: a profile of
refusals would teach the compiler the wrong path. Refusals (a host or method no route allows, a
CONNECT to such a host, a missing or forged task grant) are then sent a few hundred times each,
and must be answered with their status: enough for the code to count as run, far too little to
weigh against the hot path's million requests.

    pgo_train.py --sidekey BIN --upstream BIN --load BIN --run-dir DIR [--seconds 3]
"""

import argparse
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from benchkit import API, UP_HTTP, UP_TLS, render, start_upstream, wait_port

# The three sidekeys' listeners (the harness's ports: the two never run at once).
PORTS = {"SIDEKEY": 19001, "SIDEKEY_ADMIN": 19091, "SIDEKEY_TUNNEL": 19002,
         "SIDEKEY_GRANTS": 19003, "SIDEKEY_GRANTS_ADMIN": 19093}
PLAIN = f"{API}:{UP_HTTP}"
TLS = f"{API}:{UP_TLS}"
TUNNEL = f"tunnel.bench.test:{UP_TLS}"


def log(msg):
    print(f"[pgo] {msg}", flush=True)


def refused(port, method, target, headers, status, n, name):
    """Sends `n` requests that sidekey must refuse with `status`, on kept-alive connections
    (http.client opens a new one when sidekey closes one)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        for _ in range(n):
            conn.request(method, target, headers={"Host": target.split("/")[2] if "//" in target else target,
                                                  **headers})
            response = conn.getresponse()
            response.read()
            if response.status != status:
                raise RuntimeError(f"refused, {name}: answered {response.status}, not {status}")
            if method == "CONNECT":
                conn.close()
    finally:
        conn.close()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sidekey", required=True, help="the instrumented sidekey")
    p.add_argument("--upstream", required=True, help="bench-upstream")
    p.add_argument("--load", required=True, help="bench-load")
    p.add_argument("--run-dir", required=True)
    p.add_argument("--seconds", type=int, default=3, help="seconds per scenario")
    args = p.parse_args()

    run = Path(args.run_dir)
    shutil.rmtree(run, ignore_errors=True)
    (run / "grants").mkdir(parents=True)
    procs = []

    def start(config, port):
        config = render(config, run / config, RUN=run, **PORTS)
        proc = subprocess.Popen([args.sidekey, "run", "-c", str(config)],
                                env={**os.environ, "SIDEKEY_WORKER_THREADS": "1", "SIDEKEY_LOG": "warn"},
                                stdout=subprocess.DEVNULL, stderr=open(run / f"{config.stem}.log", "w"))
        procs.append(proc)
        wait_port(PORTS[port], proc, timeout=30)
        return proc

    try:
        procs.append(start_upstream(args.upstream, run))
        made = subprocess.run([args.sidekey, "grant", "keygen", "--dir", str(run / "grants")],
                              capture_output=True, text=True)
        if made.returncode != 0:
            raise RuntimeError(f"sidekey grant keygen: {made.stderr}")
        signed = subprocess.run([args.sidekey, "grant", "sign", "--key", str(run / "grants" / "grant-key.pem"),
                                 "--audience", "bench", "--sub", "pgo-agent", "--task", "pgo-task",
                                 "--user", "pgo-user", "--route", "bench:GET", "--ttl", "1h"],
                                capture_output=True, text=True)
        if signed.returncode != 0:
            raise RuntimeError(f"sidekey grant sign: {signed.stderr}")
        grant = f"Bearer {signed.stdout.strip()}"

        sidekeys = [start(config, port) for config, port in (
            ("sidekey.yaml", "SIDEKEY"), ("sidekey-tunnel.yaml", "SIDEKEY_TUNNEL"),
            ("sidekey-grants.yaml", "SIDEKEY_GRANTS"))]

        def through(port, ca, *extra):
            return ["--connect", f"127.0.0.1:{port}", "--tunnel", TLS, "--tls", API, "--ca", str(run / ca),
                    "--host", TLS, "--uri", "/", *extra]

        plain = ["--connect", f"127.0.0.1:{PORTS['SIDEKEY']}", "--host", PLAIN, "--uri", f"http://{PLAIN}/"]
        https = through(PORTS["SIDEKEY"], "sidekey-ca.pem")
        granted = ["--connect", f"127.0.0.1:{PORTS['SIDEKEY_GRANTS']}", "--host", PLAIN,
                   "--uri", f"http://{PLAIN}/", "--proxy-auth", grant]
        granted_https = through(PORTS["SIDEKEY_GRANTS"], "sidekey-grants-ca.pem", "--proxy-auth", grant)
        tunnel = ["--connect", f"127.0.0.1:{PORTS['SIDEKEY_TUNNEL']}", "--tunnel", TUNNEL, "--tls",
                  "tunnel.bench.test", "--ca", str(run / "upstream-ca.pem"), "--host", TUNNEL, "--uri", "/"]
        d = str(args.seconds)
        scenarios = [
            ("plain HTTP, 16 connections", plain + ["--mode", "load", "-c", "16", "-d", d]),
            ("plain HTTP, 128 connections", plain + ["--mode", "load", "-c", "128", "-d", d]),
            ("intercepted HTTPS, kept alive", https + ["--mode", "load", "-c", "16", "-d", d]),
            ("intercepted HTTPS, a handshake per request", https + ["--mode", "handshake", "-c", "4", "-d", d]),
            ("HTTP/2, 4 connections x 32 streams", https + ["--h2", "--mode", "load", "-c", "4",
                                                            "--streams", "32", "-d", d]),
            ("task grant, plain HTTP", granted + ["--mode", "load", "-c", "16", "-d", d]),
            ("task grant at CONNECT", granted_https + ["--mode", "load", "-c", "16", "-d", d]),
            ("blind tunnels, kept alive", tunnel + ["--mode", "load", "-c", "16", "-d", d]),
            ("blind tunnels, a new one per request", tunnel + ["--mode", "handshake", "-c", "4", "-d", d]),
            ("SSE", ["--connect", f"127.0.0.1:{PORTS['SIDEKEY']}", "--host", PLAIN,
                     "--uri", f"http://{PLAIN}/sse", "--mode", "sse", "--count", "3"]),
        ]
        for name, load_args in scenarios:
            out = subprocess.run([args.load, *load_args], capture_output=True, text=True, timeout=120)
            if out.returncode != 0:
                raise RuntimeError(f"{name}: bench-load failed: {out.stderr[-400:]}")
            result = json.loads(out.stdout)
            if result.get("errors") or not result.get("requests"):
                raise RuntimeError(f"{name}: {result.get('requests')} answered, {result.get('errors')} errors "
                                   f"(last status {result.get('bad_status_code')})")
            log(f"{name}: {result['requests']} requests")

        # Refusals, a few hundred of each: not the hot path, but code that runs on a proxy at rest
        # (an agent that asks for a host it may not reach). Code that never ran in training is
        # left where it was among the 19,000 functions that never run, and one refusal then
        # maps pages of it all over the binary (benches/NOTES.md, "Refusals in the training").
        for name, port, method, target, headers, status in (
                ("a host no route names", PORTS["SIDEKEY"], "GET", f"http://other.bench.test:{UP_HTTP}/", {}, 403),
                ("a method the route does not allow", PORTS["SIDEKEY"], "DELETE", f"http://{PLAIN}/", {}, 403),
                ("CONNECT to a host no route names", PORTS["SIDEKEY"], "CONNECT", "other.bench.test:443", {}, 403),
                ("no task grant", PORTS["SIDEKEY_GRANTS"], "GET", f"http://{PLAIN}/", {}, 407),
                ("a task grant that does not verify", PORTS["SIDEKEY_GRANTS"], "GET", f"http://{PLAIN}/",
                 {"Proxy-Authorization": "Bearer not.a.grant"}, 407)):
            refused(port, method, target, headers, status, 300, name)
            log(f"refused, {name}: 300 requests answered {status}")

        # SIGTERM: each sidekey drains and returns from main, and the profile runtime writes
        # its counts at exit. A sidekey killed instead writes nothing.
        for proc in sidekeys:
            proc.send_signal(signal.SIGTERM)
        for proc in sidekeys:
            code = proc.wait(timeout=30)
            if code != 0:
                raise RuntimeError(f"sidekey exited with {code} at SIGTERM: no profile written")
        # The audit files of a million requests (some 400 MB); a failed run keeps them to be read.
        shutil.rmtree(run)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


if __name__ == "__main__":
    try:
        main()
    except (RuntimeError, subprocess.TimeoutExpired) as err:
        sys.exit(f"[pgo] training failed: {err}")
