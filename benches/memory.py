"""Idle memory of sidekey builds: RSS after start, and what idle keep-alive connections add.

For each binary given (`--sidekey LABEL=PATH`, repeatable), `--starts` times: start it on the
benchmark's config (`peers/sidekey.yaml`, one worker thread as in the harness), wait
`--settle` seconds after its port answers, and read VmRSS, RssAnon and RssFile from
/proc/PID/status; the medians are reported. With `--idle-conns N`, each start then opens N idle
keep-alive connections with `bench-load --mode idle` (one request each) after a warm-up of
`--warm` connections, and reports what they add (VmRSS and RssAnon) per connection, and the
RSS `--after-close` seconds after they are closed (freed heap the allocator keeps resident).
With `--intercepted` they are CONNECT tunnels to the bench API's HTTPS port with TLS inside
(sidekey's minted leaf), one request each.
`--cache` sets the executable's page-cache state before each start (see page_cache).
Also prints the binary's file size and the size of its `.text`.

Usage:
  memory.py --upstream target/release/bench-upstream --sidekey cur=target/release/sidekey
            [--sidekey fat=/tmp/sidekey-fat] [--load target/release/bench-load --idle-conns 2000]
            [--starts 3] [--json]
Writes nothing to the repository.
"""

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchkit import API, UP_HTTP, UP_TLS, render_sidekey, start_upstream, wait_port

# Not allocs.py's and instructions.py's ports, so that they can run side by side.
SIDEKEY_PORT = 18400
ADMIN_PORT = 18401


def render(run):
    return render_sidekey(run, "sidekey-memory.yaml", SIDEKEY_PORT, ADMIN_PORT)


def status(pid):
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
                fields[key] = int(value.split()[0])
    return fields


def idle(load, n, hold=120, intercepted=None):
    """Opens n idle connections through sidekey; returns (process, opened) once they are open.

    Plain keep-alive connections (an absolute-form GET each), or with `intercepted` (the run
    directory, where sidekey wrote its CA) CONNECT tunnels to the bench API's HTTPS port, TLS
    with sidekey's minted leaf inside, one request each."""
    if intercepted is None:
        how = ["--host", f"{API}:{UP_HTTP}", "--uri", f"http://{API}:{UP_HTTP}/"]
    else:
        authority = f"{API}:{UP_TLS}"
        how = ["--tunnel", authority, "--tls", API, "--ca", str(intercepted / "sidekey-ca.pem"),
               "--host", authority, "--uri", "/"]
    gen = subprocess.Popen(
        [load, "--connect", f"127.0.0.1:{SIDEKEY_PORT}", *how, "--mode", "idle", "-c", str(n),
         "--hold", str(hold)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = gen.stdout.readline()
    if not line.startswith("ready"):
        gen.kill()
        raise SystemExit(f"bench-load: {line!r}")
    return gen, int(line.split()[1])


def close(gen):
    gen.stdin.close()
    gen.wait(timeout=60)


def page_cache(binary, how):
    """RssFile after start depends on which pages of the executable are in the page cache (the
    kernel maps cached pages around each fault, up to 64 KiB): `warm` reads the whole file first
    (as when another sidekey on the node runs the same image), `cold` evicts it (a fresh node)."""
    with open(binary, "rb") as f:
        if how == "warm":
            while f.read(1 << 20):
                pass
        elif how == "cold":
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def one_start(binary, config, run, args):
    page_cache(binary, args.cache)
    env = {**os.environ, "SIDEKEY_WORKER_THREADS": str(args.worker_threads), "SIDEKEY_LOG": "warn"}
    proc = subprocess.Popen([binary, "run", "--config", str(config)], cwd=run,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        wait_port(SIDEKEY_PORT, proc=proc)
        time.sleep(args.settle)
        out = {"idle": status(proc.pid)}
        intercepted = run if args.intercepted else None
        if args.idle_conns:
            if args.warm:
                gen, _ = idle(args.load, args.warm, intercepted=intercepted)
                close(gen)
                time.sleep(1.0)
            before = status(proc.pid)
            gen, opened = idle(args.load, args.idle_conns, intercepted=intercepted)
            time.sleep(1.0)
            after = status(proc.pid)
            close(gen)
            # What stays resident once they are closed: freed heap the allocator keeps.
            time.sleep(args.after_close)
            closed = status(proc.pid)
            out["conns"] = {
                "closed": closed,
                "opened": opened,
                "before": before,
                "after": after,
                "per_conn_kb": (after["VmRSS"] - before["VmRSS"]) / opened,
                "per_conn_anon_kb": (after["RssAnon"] - before["RssAnon"]) / opened,
            }
        return out
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def sizes(binary):
    out = {"file_bytes": os.path.getsize(binary)}
    try:
        for line in subprocess.run(["size", "-A", binary], capture_output=True, text=True).stdout.splitlines():
            fields = line.split()
            if fields and fields[0] in (".text", ".rodata", ".eh_frame", ".gcc_except_table"):
                out[fields[0]] = int(fields[1])
    except (OSError, ValueError):
        pass
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--sidekey", action="append", required=True, help="LABEL=PATH (repeatable)")
    p.add_argument("--upstream", required=True, help="bench-upstream (the config trusts its CA)")
    p.add_argument("--load", help="bench-load (needed with --idle-conns)")
    p.add_argument("--idle-conns", type=int, default=0)
    p.add_argument("--intercepted", action="store_true",
                   help="the idle connections are CONNECT tunnels with TLS inside, one request each")
    p.add_argument("--warm", type=int, default=100, help="connections opened and closed first")
    p.add_argument("--after-close", type=float, default=10.0,
                   help="seconds after closing them to read RSS again")
    p.add_argument("--starts", type=int, default=3)
    p.add_argument("--cache", choices=("warm", "cold", "as-is"), default="warm",
                   help="the executable's pages in the page cache before each start")
    p.add_argument("--settle", type=float, default=2.0)
    p.add_argument("--worker-threads", type=int, default=1)
    p.add_argument("--run-dir", default="/tmp/sidekey-memory")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    run = Path(args.run_dir)
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    if args.idle_conns and not args.load:
        raise SystemExit("--idle-conns needs --load")
    upstream = start_upstream(args.upstream, run)
    results = {}
    try:
        config = render(run)
        for spec in args.sidekey:
            label, _, binary = spec.partition("=")
            starts = [one_start(binary, config, run, args) for _ in range(args.starts)]
            med = lambda f: statistics.median(f(s) for s in starts)
            r = {"sizes": sizes(binary), "starts": starts}
            for key in ("VmRSS", "RssAnon", "RssFile"):
                r[key] = med(lambda s: s["idle"][key])
            if args.idle_conns:
                r["per_conn_kb"] = med(lambda s: s["conns"]["per_conn_kb"])
                r["per_conn_anon_kb"] = med(lambda s: s["conns"]["per_conn_anon_kb"])
                r["closed_VmRSS"] = med(lambda s: s["conns"]["closed"]["VmRSS"])
                r["closed_RssAnon"] = med(lambda s: s["conns"]["closed"]["RssAnon"])
            results[label] = r
    finally:
        upstream.terminate()
        upstream.wait()
    if args.json:
        print(json.dumps(results, indent=1))
    for label, r in results.items():
        s = r["sizes"]
        line = (f"{label:14} file {s['file_bytes'] / 1e6:6.1f} MB  .text {s.get('.text', 0) / 1e6:5.1f} MB"
                f"  VmRSS {r['VmRSS'] / 1024:5.1f} MB  RssAnon {r['RssAnon'] / 1024:4.1f}"
                f"  RssFile {r['RssFile'] / 1024:5.1f}")
        if "per_conn_kb" in r:
            line += (f"  per idle conn {r['per_conn_kb']:5.1f} KB (anon {r['per_conn_anon_kb']:5.1f})"
                     f"  closed: VmRSS {r['closed_VmRSS'] / 1024:5.1f} MB, RssAnon {r['closed_RssAnon'] / 1024:5.1f}")
        print(line, flush=True)


if __name__ == "__main__":
    sys.exit(main())
