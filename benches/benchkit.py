"""What the single-purpose bench scripts (allocs.py, instructions.py, memory.py, dhat_idle.py)
share: the ports and hosts of benches/peers/, waiting for a port, rendering a peer config, the
bench upstream, and a keep-alive load of plain HTTP through a proxy."""

import http.client
import socket
import subprocess
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SIDEKEY_PORT = 18300
ADMIN_PORT = 18301
UP_HTTP = 18080
UP_TLS = 18443
API = "api.bench.test"


def wait_port(port, proc=None, timeout=60.0):
    """Until something accepts on 127.0.0.1:`port`; RuntimeError if `proc` exits first or
    `timeout` passes."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode} before listening on {port}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port} after {timeout} s")


def render(name, out, **values):
    """benches/peers/`name` with each `@KEY@` replaced by `values[KEY]`, written to `out`."""
    text = (HERE / "peers" / name).read_text()
    for key, value in values.items():
        text = text.replace(f"@{key}@", str(value))
    out.write_text(text)
    return out


def render_sidekey(run, name, port=SIDEKEY_PORT, admin=ADMIN_PORT):
    """sidekey's bench config (peers/sidekey.yaml) for the run directory `run`, as `name`."""
    return render("sidekey.yaml", run / name, SIDEKEY=port, SIDEKEY_ADMIN=admin, RUN=run)


def start_upstream(binary, run):
    """bench-upstream on UP_HTTP and UP_TLS (its CA written to run/upstream-ca.pem), once it
    listens."""
    upstream = subprocess.Popen([binary, "--http", f"127.0.0.1:{UP_HTTP}",
                                 "--https", f"127.0.0.1:{UP_TLS}",
                                 "--ca-out", str(run / "upstream-ca.pem")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(UP_TLS, upstream)
    except RuntimeError:
        upstream.kill()
        raise
    return upstream


def load(port, n):
    """n absolute-form GETs for the bench API on one keep-alive connection to a proxy on
    `port`, each carrying the agent's own Authorization (which the proxy replaces); every
    answer must be a 200."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    for i in range(n):
        conn.request("GET", f"http://{API}:{UP_HTTP}/", headers={
            "Host": f"{API}:{UP_HTTP}", "Authorization": "Bearer agent-dummy-key"})
        resp = conn.getresponse()
        resp.read()
        if resp.status != 200:
            raise RuntimeError(f"request {i}: status {resp.status}")
    conn.close()
