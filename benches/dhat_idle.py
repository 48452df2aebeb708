"""What sidekey's heap holds per idle keep-alive connection, by allocation site (DHAT).

sidekey built with `--features dhat-heap` (as for `scripts/bench --allocs`) is started on the
benchmark's config; N idle connections are opened through it with `bench-load --mode idle` (one
request each, after a warm-up of 100), and sidekey is stopped while they are held, so that DHAT's
peak (t-gmax) is the heap with N connections open. Prints the heap at the peak per connection and
the largest sites (bytes and blocks per connection, a few frames each).

With --intercepted, the connections are CONNECT tunnels to the bench API's HTTPS port with TLS
inside (sidekey's minted leaf), one request each: what an idle intercepted connection holds.

Usage: dhat_idle.py --sidekey DHAT_BUILD --upstream bench-upstream --load bench-load [-n 2000]
       [--intercepted]
"""

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import memory as M

SKIP = re.compile(r"dhat-0|alloc/src/|core/src|hashbrown|raw_vec")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--sidekey", required=True)
    p.add_argument("--upstream", required=True)
    p.add_argument("--load", required=True)
    p.add_argument("-n", type=int, default=2000)
    p.add_argument("--sites", type=int, default=12)
    p.add_argument("--intercepted", action="store_true",
                   help="CONNECT tunnels with TLS inside (sidekey's minted leaf), not plain HTTP")
    p.add_argument("--run-dir", default="/tmp/sidekey-dhat-idle")
    args = p.parse_args()
    run = Path(args.run_dir)
    run.mkdir(parents=True, exist_ok=True)
    (run / "dhat-heap.json").unlink(missing_ok=True)
    up = M.start_upstream(args.upstream, run)
    try:
        config = M.render(run)
        env = {**os.environ, "SIDEKEY_WORKER_THREADS": "1", "SIDEKEY_LOG": "warn"}
        proc = subprocess.Popen([args.sidekey, "run", "--config", str(config)], cwd=run,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        M.wait_port(M.SIDEKEY_PORT, proc=proc)
        time.sleep(1)
        intercepted = run if args.intercepted else None
        gen, _ = M.idle(args.load, 100, intercepted=intercepted)
        M.close(gen)
        time.sleep(0.5)
        gen, opened = M.idle(args.load, args.n, intercepted=intercepted)
        time.sleep(1)
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=120)
        M.close(gen)
    finally:
        up.terminate()
        up.wait()
    d = json.load(open(run / "dhat-heap.json"))
    ftbl = d["ftbl"]
    pps = sorted(d["pps"], key=lambda pp: -pp["gb"])
    total, blocks = sum(pp["gb"] for pp in pps), sum(pp["gbk"] for pp in pps)
    print(f"heap at its peak with {opened} idle connections: {total / opened:.0f} B and "
          f"{blocks / opened:.2f} blocks per connection")
    for pp in pps[:args.sites]:
        frames = [re.sub(r"^\[\d+\]: 0x[0-9a-f]+: ", "", ftbl[i]) for i in pp["fs"]]
        shown = [f for f in frames if not SKIP.search(f)][:4]
        print(f"{pp['gb'] / opened:8.0f} B {pp['gbk'] / opened:5.2f} blocks per connection\n      "
              + "\n      ".join(s[:150] for s in shown))


if __name__ == "__main__":
    sys.exit(main())
