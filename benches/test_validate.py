"""Self-check of the run validation and of how report.py shows a failed run.

    python3 -m unittest discover -s benches

(no dependencies; scripts/test runs it).
"""

import copy
import tempfile
import unittest
from pathlib import Path

import report
import validate

# wrk's figures for a working run, c=16, 4 s (as harness.py records them).
WRK_OK = {
    "requests": 96000, "errors": 0, "connect_errors": 0, "read_errors": 0, "write_errors": 0,
    "status_errors": 0, "timeout_errors": 0, "seconds": 4.0, "mean_us": 640.0, "p50_us": 600,
    "p99_us": 1500, "rps": 24000.0, "load": {"tool": "wrk", "concurrency": 16},
    "stall_probe": {"connections": 16, "stalled": 0, "idle_s": 1.8, "max_idle_ms": 3},
}

# mitmproxy's plain-HTTP runs in the committed results.json of 2026-11-23 (before the checks):
# 5 requests per connection, then nothing.
MITM_BROKEN = {
    "plain_c1": {"requests": 5, "errors": 0, "seconds": 5.009, "p50_us": 3129, "rps": 0.998},
    "plain_c16": {"requests": 80, "errors": 0, "seconds": 5.012, "p50_us": 46002, "rps": 15.96},
    "plain_c128": {"requests": 640, "errors": 0, "seconds": 5.016, "p50_us": 461892, "rps": 127.6},
    "plain_rate": {"requests": 50, "errors": 0, "seconds": 5.01, "p50_us": 41258, "rps": 9.98},
}

LOAD_OK = {"requests": 1800, "errors": 0, "bad_status": 0, "bad_status_code": 0, "timeouts": 0,
           "seconds": 4.0, "rps": 450.0, "p50_us": 40000, "p99_us": 90000,
           "load": {"tool": "bench-load", "concurrency": 16}}


def wrk(**changes):
    run = copy.deepcopy(WRK_OK)
    run.update(changes)
    return run


class Problem(unittest.TestCase):
    def test_working_runs_count(self):
        self.assertIsNone(validate.problem("plain_c16", wrk()))
        self.assertIsNone(validate.problem("https_keepalive", dict(LOAD_OK)))

    def test_wrong_status_and_socket_errors(self):
        why = validate.problem("plain_c16", wrk(errors=3, status_errors=3))
        self.assertIn("3 answers with status ≥ 400", why)
        why = validate.problem("plain_c16", wrk(errors=2, read_errors=1, connect_errors=1))
        self.assertIn("2 socket errors", why)
        self.assertIn("wrk timeout", validate.problem("plain_c16", wrk(errors=1, timeout_errors=1)))

    def test_stalled_connections(self):
        run = wrk(stall_probe={"connections": 16, "stalled": 16, "idle_s": 1.8, "max_idle_ms": 3500})
        self.assertIn("16 of 16 connections had received nothing for 1.8 s", validate.problem("plain_c16", run))

    def test_too_few_requests(self):
        why = validate.problem("plain_c128", wrk(requests=128, load={"tool": "wrk", "concurrency": 128}))
        self.assertIn("only 128 requests answered with 128 in flight", why)

    def test_connections_idle_without_answers(self):
        # 800 answers at 0.64 ms on 16 connections over 4 s: 0.8 % of their time.
        self.assertIn("connections stopped answering", validate.problem("plain_c16", wrk(requests=800)))
        # The fixed-rate pause counts as the connection's time: 10 × 4 s at (0.3 + 2) ms each.
        rate = wrk(requests=17000, mean_us=300.0, load={"tool": "wrk", "concurrency": 10, "delay_ms": 2})
        self.assertIsNone(validate.problem("plain_rate", rate))

    def test_mitmproxy_broken_runs_fail(self):
        for key, run in MITM_BROKEN.items():
            with self.subTest(key):
                self.assertIn("connections stopped answering", validate.problem(key, run))

    def test_bench_load_errors(self):
        why = validate.problem("https_keepalive", dict(LOAD_OK, errors=5, bad_status=5, bad_status_code=403))
        self.assertIn("5 answers not 2xx (last 403)", why)
        why = validate.problem("https_keepalive", dict(LOAD_OK, errors=3, timeouts=2))
        self.assertIn("2 requests (or connection attempt) with no answer within 10 s", why)
        self.assertIn("1 broken connection", why)
        self.assertIn("16 in flight", validate.problem("https_keepalive", dict(LOAD_OK, requests=16)))
        # Results from before bench-load told errors apart.
        self.assertIn("without a 2xx answer", validate.problem("h2", {"requests": 900, "errors": 1}))

    def test_sse_and_idle(self):
        sse = {"requests": 10, "errors": 0, "bad_status": 0, "timeouts": 0,
               "load": {"tool": "bench-load", "concurrency": 1, "count": 10, "timeout_s": 5}}
        self.assertIsNone(validate.problem("sse", sse))
        why = validate.problem("sse", dict(sse, requests=5, errors=1, timeouts=1))
        self.assertIn("within 5 s", why)
        self.assertEqual(validate.problem("sse", dict(sse, requests=9)), "9 of 10 streams answered")
        self.assertIsNone(validate.idle_problem({"opened": 1000, "wanted": 1000}))
        self.assertIn("7 of 10,000 connections", validate.idle_problem({"opened": 9993, "wanted": 10000}))
        self.assertEqual(validate.problem("plain_c1", {"error": "wrk failed: x"}), "wrk failed: x")


def results_with(mitm_runs):
    """A results dict as harness.py writes it, two rounds, mitmproxy's runs given."""
    ok = {"direct": 40000.0, "sidekey": 15000.0, "nginx": 30000.0, "mitmproxy": 400.0}
    raw, merged = {}, {}
    for key in ("plain_c1", "plain_c16", "plain_c128", "plain_rate"):
        c = validate.LOADS[key]["concurrency"]
        raw[key] = {}
        for name, rps in ok.items():
            run = wrk(requests=int(rps * 4), mean_us=c / rps * 1e6, rps=rps, cpu_s=1.0,
                      load=dict(validate.LOADS[key]),
                      stall_probe={"connections": c, "stalled": 0, "idle_s": 1.8, "max_idle_ms": 1})
            if "delay_ms" in validate.LOADS[key]:
                run["mean_us"] = max(run["mean_us"] - 2000, 100.0)
            raw[key][name] = [run, run]
        if key in mitm_runs:
            raw[key]["mitmproxy"] = mitm_runs[key]
        merged[key] = {n: dict(runs[0]) for n, runs in raw[key].items()}
    return {
        "date": "2026-12-06 00:00 UTC", "loadavg_start": ["0", "0", "0"], "loadavg_end": ["0", "0", "0"],
        "quick": False, "machine": {"cpu": "test", "cores": 2, "memory": "1 GiB"},
        "versions": {k: "test" for k in ("sidekey", "nginx", "envoy", "squid", "mitmproxy", "wrk", "kernel")},
        "settings": {"seconds": 4, "rounds": 2, "idle_conns": 10},
        "idle_rss_kb": {"sidekey": 10000, "mitmproxy": 70000},
        "idle_conns": {"sidekey": {"before_kb": 1, "with_idle_kb": 11, "added_kb": 10, "opened": 10, "wanted": 10,
                                   "per_conn_kb": 1.0},
                       "mitmproxy": {"before_kb": 1, "with_idle_kb": 11, "added_kb": 10, "opened": 9, "wanted": 10,
                                     "per_conn_kb": 1.1}},
        "raw": raw, **merged,
    }


class Apply(unittest.TestCase):
    def test_one_failed_round_fails_the_scenario(self):
        stalled = wrk(load={"tool": "wrk", "concurrency": 16},
                      stall_probe={"connections": 16, "stalled": 3, "idle_s": 1.8, "max_idle_ms": 4000})
        results = results_with({"plain_c16": [wrk(), stalled]})
        failed = validate.apply(results)
        self.assertIn(("plain_c16", "mitmproxy"), [(k, n) for k, n, _ in failed])
        self.assertEqual(set(results["plain_c16"]["mitmproxy"]), {"failed"})
        self.assertIn("(round 2 of 2)", results["plain_c16"]["mitmproxy"]["failed"])
        self.assertNotIn("failed", results["plain_c16"]["sidekey"])
        self.assertIn("1 of 10 connections", results["idle_conns"]["mitmproxy"]["failed"])
        self.assertEqual(validate.apply(copy.deepcopy(results)), failed)  # idempotent


class Report(unittest.TestCase):
    def render(self, results):
        with tempfile.TemporaryDirectory() as tmp:
            chart, report.chart = report.chart, lambda results, path: None
            try:
                return report.write(results, tmp).read_text()
            finally:
                report.chart = chart

    def test_failed_run_has_no_number_and_no_ratio(self):
        results = results_with({k: [dict(run), dict(run)] for k, run in MITM_BROKEN.items()})
        md = self.render(results)
        row = next(l for l in md.splitlines() if l.startswith("| mitmproxy | failed"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        self.assertTrue(all(c.startswith("failed: ") for c in cells[1:4]), cells)
        self.assertEqual(cells[4:], ["–", "–", "–"])  # vs direct, sidekey ÷ this, CPU
        self.assertNotIn("× |", row)
        for line in md.splitlines():
            if "| mitmproxy |" in line and "c=" in line:
                self.assertIn("failed: ", line)
        self.assertIn("Every run is checked before any figure or ratio is computed", md)
        self.assertNotIn("predates the checks", md)

    def test_results_from_before_the_checks_say_so(self):
        results = results_with({k: [dict(run), dict(run)] for k, run in MITM_BROKEN.items()})
        for per_target in results["raw"].values():
            for runs in per_target.values():
                for run in runs:
                    run.pop("load", None)
                    run.pop("stall_probe", None)
        md = self.render(results)
        self.assertIn("predates the checks", md)
        self.assertIn("| mitmproxy | failed: connections stopped answering: 640 answers", md)
        self.assertIn("(rounds 1, 2 of 2)", md)

    def test_working_run_keeps_its_figures(self):
        md = self.render(results_with({}))
        row = next(l for l in md.splitlines() if l.startswith("| mitmproxy | 400"))
        self.assertIn("37.50×", row)  # sidekey ÷ mitmproxy at c=128
        self.assertNotIn("predates the checks", md)


if __name__ == "__main__":
    unittest.main()
