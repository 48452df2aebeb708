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
import ssl
import subprocess
import sys
from pathlib import Path

from benchkit import API, SIDEKEY_PORT, UP_TLS, load, render_sidekey, start_upstream, wait_port
TOTAL = re.compile(r"dhat: Total:\s+([\d,]+) bytes in ([\d,]+) blocks")


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
        wait_port(SIDEKEY_PORT, proc)
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
    upstream = start_upstream(args.upstream, run)
    results = {}
    try:
        config = render_sidekey(run, "sidekey-allocs.yaml")
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
