#!/usr/bin/env python3
"""What a task's first request costs with per-task credentials: the time sidekey adds to the
first request of a new task grant (grant verification and one issuer round trip) over the
second request of the same task (grant and credential cached).

Run through `scripts/bench --first-request` (it builds sidekey; the issuer peers are the test
peers scripts/install-test-deps installs: moto for AWS STS, oidc-provider for OAuth2). One
sidekey with three routes, each with a per-task credential: `local` (sidekey's own JWT signer,
no network), `aws-sts` (AssumeRoleWithWebIdentity at moto; keys sign the request), `oauth2`
(RFC 8693 exchange at oidc-provider of a task assertion for the task's user). For each of N
tasks: a fresh grant (`sidekey grant sign`), then two requests through sidekey on new
connections (curl), the first and the second of that task; reported are the medians and p90 of
first − second per issuer. A route where any request does not answer 200 (curl's code 000: no
answer at all) or reports no time is shown as failed, with why, never as a number (the same rule
as benches/validate.py for the harness). Prints a Markdown table (and JSON with --json).
"""

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sidekey"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port} after {timeout}s")


def curl_ms(proxy, url):
    """One request through sidekey on a new connection: (status, total ms)."""
    out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-m", "30", "-x", proxy,
                          "-w", "%{http_code} %{time_total}", url],
                         capture_output=True, text=True, env={"PATH": os.environ["PATH"]})
    code, seconds = (out.stdout.split() + ["0", "0"])[:2]
    return int(code), float(seconds) * 1000


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--sidekey", required=True)
    p.add_argument("--tasks", type=int, default=15)
    p.add_argument("--json", action="store_true")
    opts = p.parse_args()
    sidekey = opts.sidekey
    procs = []
    work = Path(tempfile.mkdtemp(prefix="sidekey-first-request-"))
    try:
        # An upstream: any HTTP server on loopback answering 200.
        up_port = free_port()
        (work / "www").mkdir()
        (work / "www" / "index.html").write_text("ok\n")
        up = subprocess.Popen([sys.executable, "-m", "http.server", str(up_port), "--bind", "127.0.0.1",
                               "--directory", str(work / "www")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(up)
        wait_port(up_port, up)

        moto_port = free_port()
        moto = subprocess.Popen([str(CACHE / "peers/moto/venv/bin/moto_server"), "-H", "127.0.0.1",
                                 "-p", str(moto_port)], cwd=work,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(moto)
        wait_port(moto_port, moto)

        oauth_dir = ROOT / "tests/peers/oauth2"
        oauth = subprocess.Popen(["node", str(oauth_dir / "server.mjs"), "0"], cwd=oauth_dir,
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                 env={**os.environ, "OAUTH2_CLIENT_SECRET": "bench-secret"})
        procs.append(oauth)
        ready = json.loads(oauth.stdout.readline())
        token_url = ready["token_url"]

        subprocess.run([sidekey, "grant", "keygen", "--dir", str(work)], check=True,
                       capture_output=True)
        (work / "identity.jwt").write_text("eyJhbGciOiJub25lIn0.eyJzdWIiOiJwb2QifQ.\n")
        (work / "secret").write_text("bench-secret\n")
        fwd, admin = free_port(), free_port()
        config = f"""
listen: {{ forward: 127.0.0.1:{fwd}, routes: off, admin: 127.0.0.1:{admin} }}
ca: {{ cert_out: {work}/ca.pem }}
upstream:
  resolve:
    local.bench.test:80: 127.0.0.1:{up_port}
    sts.bench.test:80: 127.0.0.1:{up_port}
    oauth.bench.test:80: 127.0.0.1:{up_port}
identity: {{ token_file: {work}/identity.jwt }}
issuers:
  local: {{ kind: local, issuer: sidekey-tasks }}
  sts:
    kind: aws-sts
    role_arn: arn:aws:iam::123456789012:role/bench
    region: us-east-1
    endpoint: http://127.0.0.1:{moto_port}
  idp:
    kind: oauth2
    token_url: {token_url}
    grant: token_exchange
    client_id: sidekey-basic
    client_secret_file: {work}/secret
credentials:
  local-task: {{ issuer: local, audience: bench, per_task: true }}
  sts-task: {{ issuer: sts, per_task: true }}
  oauth-task: {{ issuer: idp, audience: bench, per_task: true, task_assertion_issuer: local }}
grants:
  audience: bench
  required: true
  trusted: [{{ jwks_file: {work}/grant-jwks.json }}]
routes:
  - {{ name: local, hosts: [local.bench.test], schemes: [http], methods: [GET], credential: local-task, allow_private: true, inject: {{ header: Authorization, value: "Bearer {{token}}" }} }}
  - {{ name: sts, hosts: [sts.bench.test], schemes: [http], methods: [GET], credential: sts-task, allow_private: true, inject: {{ sigv4: {{ service: s3, region: us-east-1 }} }} }}
  - {{ name: oauth, hosts: [oauth.bench.test], schemes: [http], methods: [GET], credential: oauth-task, allow_private: true, inject: {{ header: Authorization, value: "Bearer {{token}}" }} }}
audit: {{ file: {work}/audit.log }}
"""
        (work / "sidekey.yaml").write_text(config)
        sk = subprocess.Popen([sidekey, "run", "-c", str(work / "sidekey.yaml")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env={**os.environ, "SIDEKEY_LOG": "warn"})
        procs.append(sk)
        wait_port(fwd, sk)
        wait_port(admin, sk)
        # The authorization server trusts sidekey's task assertions (signed by `local`).
        req = urllib.request.Request(token_url.rsplit("/", 1)[0] + "/_trust_jwks", method="POST",
                                     data=json.dumps({"jwks_url": f"http://127.0.0.1:{admin}/.well-known/jwks.json",
                                                      "issuer": "sidekey-tasks"}).encode(),
                                     headers={"Content-Type": "application/json"})
        urllib.request.urlopen(req, timeout=10).read()

        results = {}
        for route in ("local", "sts", "oauth"):
            firsts, seconds, added, failed = [], [], [], []
            for i in range(opts.tasks):
                grant = subprocess.run([sidekey, "grant", "sign", "--key", str(work / "grant-key.pem"),
                                        "--audience", "bench", "--sub", "agent", "--task", f"{route}-{i}",
                                        "--user", "alice", "--ttl", "30m"],
                                       check=True, capture_output=True, text=True).stdout.strip()
                proxy = f"http://task:{grant}@127.0.0.1:{fwd}"
                url = f"http://{route}.bench.test/"
                c1, t1 = curl_ms(proxy, url)
                c2, t2 = curl_ms(proxy, url)
                if c1 != 200 or c2 != 200 or t1 <= 0 or t2 <= 0:
                    failed.append((c1, c2))
                    continue
                firsts.append(t1)
                seconds.append(t2)
                added.append(t1 - t2)
            if failed:
                statuses = ", ".join(f"{a:03d}/{b:03d}" for a, b in failed[:3])
                results[route] = {"failed": f"{len(failed)} of {opts.tasks} tasks had a request not answered "
                                            f"200 (first/second: {statuses}{', …' if len(failed) > 3 else ''})"}
                continue
            added.sort()
            results[route] = {
                "tasks": len(added),
                "first_ms_p50": statistics.median(firsts),
                "second_ms_p50": statistics.median(seconds),
                "added_ms_p50": statistics.median(added),
                "added_ms_p90": added[int(0.9 * (len(added) - 1))],
            }
        if opts.json:
            print(json.dumps(results, indent=2))
        labels = {"local": "local (sidekey signs a JWT; no network)",
                  "sts": "aws-sts (AssumeRoleWithWebIdentity at moto)",
                  "oauth": "oauth2 (RFC 8693 exchange at oidc-provider)"}
        print("| per-task credential | tasks | first request p50 ms | second request p50 ms | added p50 ms | added p90 ms |")
        print("|---|---|---|---|---|---|")
        for route, r in results.items():
            if "failed" in r:
                print(f"| {labels[route]} | failed: {r['failed']} | – | – | – | – |")
            else:
                print(f"| {labels[route]} | {r['tasks']} | {r['first_ms_p50']:.2f} | {r['second_ms_p50']:.2f} "
                      f"| {r['added_ms_p50']:.2f} | {r['added_ms_p90']:.2f} |")
        return 0 if all("failed" not in r for r in results.values()) else 1
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
