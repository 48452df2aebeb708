"""Heap allocations per request in sidekey, counted by DHAT (`scripts/bench --allocs`).

sidekey built with `--features dhat-heap` counts every allocation and prints the totals when it
exits. For each scenario it runs twice — N1 and N2 requests on one keep-alive connection, the
benchmark's config (an injected local JWT, audit to a file) — and reports
(blocks(N2) - blocks(N1)) / (N2 - N1): what one more request allocates, start-up and the
connection excluded. Counting is exact (no timing), so small changes show: compare before and
after a change on any machine.

Scenarios: `plain` (absolute-form HTTP through the forward listener) and `https` (CONNECT,
intercepted TLS, requests inside the tunnel).

Usage: allocs.py --sidekey BIN --upstream BIN [--run-dir DIR] [--n1 200] [--n2 1200]
Writes nothing to the repository: the figures go to stdout (and JSON with --json).
"""

import argparse
import http.client
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

from instructions import load

HERE = Path(__file__).resolve().parent
SIDEKEY_PORT = 18300
ADMIN_PORT = 18301
UP_HTTP = 18080
UP_TLS = 18443
API = "api.bench.test"
TOTAL = re.compile(r"dhat: Total:\s+([\d,]+) bytes in ([\d,]+) blocks")


def wait_port(port, timeout=20.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port} after {timeout} s")


def render(run):
    text = (HERE / "peers" / "sidekey.yaml").read_text()
    for key, value in {"@SIDEKEY@": str(SIDEKEY_PORT), "@SIDEKEY_ADMIN@": str(ADMIN_PORT),
                       "@RUN@": str(run)}.items():
        text = text.replace(key, value)
    path = run / "sidekey-allocs.yaml"
    path.write_text(text)
    return path


def plain(n):
    load(SIDEKEY_PORT, n)


def https(n, run):
    ctx = ssl.create_default_context(cafile=str(run / "sidekey-ca.pem"))
    conn = http.client.HTTPSConnection("127.0.0.1", SIDEKEY_PORT, timeout=10, context=ctx)
    conn.set_tunnel(API, UP_TLS)
    for _ in range(n):
        conn.request("GET", "/", headers={"Authorization": "Bearer agent-dummy-key"})
        resp = conn.getresponse()
        resp.read()
        if resp.status != 200:
            raise SystemExit(f"https: status {resp.status}")
    conn.close()


def count(sidekey, config, run, scenario, n):
    """(bytes, blocks) allocated over a sidekey run that served n requests of `scenario`."""
    proc = subprocess.Popen([sidekey, "run", "--config", str(config)], cwd=run,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "SIDEKEY_WORKER_THREADS": "1", "SIDEKEY_LOG": "warn"})
    try:
        wait_port(SIDEKEY_PORT)
        if scenario == "plain":
            plain(n)
        else:
            https(n, run)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    m = TOTAL.search(err)
    if not m:
        raise SystemExit(f"no dhat totals from {sidekey} (built with --features dhat-heap?):\n{err}")
    return tuple(int(g.replace(",", "")) for g in m.groups())


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--sidekey", required=True)
    p.add_argument("--upstream", required=True)
    p.add_argument("--run-dir", default="/tmp/sidekey-allocs")
    p.add_argument("--n1", type=int, default=200)
    p.add_argument("--n2", type=int, default=1200)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    run = Path(args.run_dir)
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    upstream = subprocess.Popen([args.upstream, "--http", f"127.0.0.1:{UP_HTTP}",
                                 "--https", f"127.0.0.1:{UP_TLS}",
                                 "--ca-out", str(run / "upstream-ca.pem")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = {}
    try:
        wait_port(UP_TLS)
        config = render(run)
        for scenario in ("plain", "https"):
            b1, k1 = count(args.sidekey, config, run, scenario, args.n1)
            b2, k2 = count(args.sidekey, config, run, scenario, args.n2)
            extra = args.n2 - args.n1
            results[scenario] = {"allocations": round((k2 - k1) / extra, 1),
                                 "bytes": round((b2 - b1) / extra)}
    finally:
        upstream.terminate()
        upstream.wait()
    if args.json:
        print(json.dumps(results))
    else:
        for scenario, r in results.items():
            print(f"{scenario:6} {r['allocations']:7.1f} allocations, {r['bytes']:7} bytes per request")


if __name__ == "__main__":
    sys.exit(main())
