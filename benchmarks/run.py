"""relay's fan-out benchmark, against Flask-SSE, the Node server from the talk and Centrifugo, in one run.

    python -m benchmarks.run                 # every scenario, every system (~15 minutes without Centrifugo)
    python -m benchmarks.run --quick         # small sizes, short runs (~2 minutes)
    python -m benchmarks.run --systems relay --scenarios fanout-100x200
    python -m benchmarks.run --scenarios backbone   # relay's Redis backbone against its in-memory one

Starts a private redis-server, then for each scenario and each system: starts the system,
connects the load client, publishes (through Redis, or over HTTP where that is the system's
interface), measures, stops the system. Results go to
``benchmarks/results/<time>.json`` (and ``latest.json``) and a table on standard output.
See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import procstat, servers
from benchmarks.loadgen import LoadClient, Publisher, percentile
from benchmarks.servers import CHANNEL, SYSTEMS, RedisServer

HERE = Path(__file__).resolve().parent
SEQ_BLOCK = 10_000_000  # every measured run publishes its own range of sequence numbers


class Bench:
    def __init__(self, args, workdir: Path):
        self.args = args
        self.workdir = workdir
        self.redis = RedisServer(workdir).start()
        self.block = 0
        self.profile_count = 0

    def log(self, message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

    # -- one measured publish ------------------------------------------------------------------

    def measure(self, system, load: LoadClient, clients: int, rate: float, seconds: float,
                drain: float) -> dict:
        """Publish ``rate`` msg/s for ``seconds`` to ``clients`` connections; wait for them to arrive."""
        self.block += 1
        lo = self.block * SEQ_BLOCK
        count = max(1, int(round(rate * seconds)))
        load.record(lo, lo + count)
        publisher = Publisher(self.redis.port, CHANNEL, system.name, lo, count, rate, cpus=servers.PIN["load"],
                              http_api=system.http_api())
        expected = count * clients  # 0 in a publish-only run (no client): nothing to wait for
        server_cpu0, load_cpu0 = procstat.cpu_seconds(system.pids()), load.cpu_seconds()
        worker_cpu0 = procstat.cpu_seconds(system.worker_pids())
        redis_cpu0 = self.redis.cpu_seconds()
        profiler = self.start_profiler(system, seconds)
        started = time.time()
        publisher.go()
        publish_seconds, behind = publisher.wait(seconds * 3 + 30)
        published_at = time.time()
        # Wait for the deliveries: until all arrived, or nothing arrived for a while, or ``drain``.
        deadline = published_at + drain
        last_count, last_change = -1, time.time()
        while time.time() < deadline:
            received, _, _ = load.progress()
            if received >= expected:
                break
            if received != last_count:
                last_count, last_change = received, time.time()
            elif time.time() - last_change > min(5.0, drain):
                break
            time.sleep(0.1)
        collected = load.collect()
        if profiler is not None:
            try:
                profiler.wait(seconds + 30)
            except subprocess.TimeoutExpired:
                profiler.kill()
        if not clients:  # publish only: let the worker finish the last events before its CPU is read
            self.settle(system, limit=drain)
        server_cpu = procstat.cpu_seconds(system.pids()) - server_cpu0
        worker_cpu = procstat.cpu_seconds(system.worker_pids()) - worker_cpu0
        load_cpu = load.cpu_seconds() - load_cpu0
        redis_cpu = self.redis.cpu_seconds() - redis_cpu0
        lat = sorted(collected.latencies)
        span = max(1e-9, (collected.last_rx or time.time()) - started)
        received_unique = collected.received - collected.duplicates
        return {
            "clients": clients, "rate": rate, "messages": count, "publish_seconds": round(publish_seconds, 3),
            "publisher_worst_lag_ms": round(behind * 1000, 1), **publisher.extra,
            "expected": expected, "received": received_unique,
            "lost": max(0, expected - received_unique),
            "loss_pct": round(100.0 * max(0, expected - received_unique) / max(1, expected), 3),
            "out_of_order": collected.out_of_order, "duplicates": collected.duplicates,
            "latency_ms": {k: round(percentile(lat, q) * 1000, 2) if lat else None
                           for k, q in (("p50", .5), ("p95", .95), ("p99", .99))} | {
                               "max": round(lat[-1] * 1000, 2) if lat else None},
            "deliveries_per_s": round(received_unique / span),
            "last_delivery_after_publish_s": round(max(0.0, (collected.last_rx or published_at) - published_at), 3),
            "server_cpu_s": round(server_cpu, 2),
            "server_cpu_us_per_delivery": round(server_cpu / received_unique * 1e6, 2) if received_unique else None,
            # The worker alone (gunicorn's arbiter left out), per delivery and per event published
            # (HTTP request, backbone, fan-out); redis-server's the same way.
            "worker_cpu_s": round(worker_cpu, 3),
            "worker_cpu_us_per_delivery": round(worker_cpu / received_unique * 1e6, 2) if received_unique else None,
            "worker_cpu_us_per_event": round(worker_cpu / count * 1e6, 1),
            "load_client_cpu_s": round(load_cpu, 2), "redis_cpu_s": round(redis_cpu, 3),
            "redis_cpu_us_per_delivery": round(redis_cpu / received_unique * 1e6, 2) if received_unique else None,
            "redis_cpu_us_per_event": round(redis_cpu / count * 1e6, 1),
            "connections_open_after": collected.open, "closed_by_server": collected.closed_by_server,
            "load_loop": collected.loop,
        }

    def start_profiler(self, system, seconds: float):
        """``--profile DIR``: py-spy samples the Python server's worker while it publishes."""
        if not self.args.profile or not system.gunicorn:
            return None
        pyspy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        worker = system.pids()[-1]  # gunicorn's arbiter first, then its one worker
        self.profile_count += 1
        out = Path(self.args.profile) / f"{self.profile_count:02d}-{system.name}.txt"
        out.parent.mkdir(parents=True, exist_ok=True)
        return subprocess.Popen([pyspy, "record", "-p", str(worker), "-d", str(max(1, int(seconds))), "-r", "250",
                                 "-f", "raw", "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    # -- scenario plumbing -----------------------------------------------------------------------

    def with_system(self, name: str, clients_plan: list[int], body):
        """Start ``name``, connect ``clients_plan`` batches, run ``body``, stop everything."""
        system = SYSTEMS[name](self.workdir, self.redis.port)
        out: dict = {"load_average_before": procstat.load_average()}
        redis_before = self.redis.server_connections()
        system.start(self.redis)
        load = LoadClient("127.0.0.1", system.port, system.stream_path, self.args.processes, cpus=servers.PIN["load"],
                          chunked=system.chunked)
        try:
            time.sleep(0.5)
            pids = system.pids()
            out["rss_idle_mb"] = round(procstat.rss_bytes(pids) / 2**20, 1)
            out["connect"] = []
            total = 0
            for n in clients_plan:
                rss0 = procstat.rss_bytes(system.pids())
                t0 = time.monotonic()
                header_wait = 1.0 if system.headers_with_first_event else None
                result = load.connect(n, timeout=self.args.connect_timeout, header_wait=header_wait)
                if system.subscribes_per_client:
                    # Its connections answer with the first event: count the clients it has
                    # subscribed for (one Redis connection each), waiting while that grows.
                    target = total + result["ok"]
                    deadline, seen, last_change = time.time() + self.args.connect_timeout, -1, time.time()
                    while time.time() < deadline:
                        held = self.redis.server_connections() - redis_before
                        if held >= target:
                            break
                        if held != seen:
                            seen, last_change = held, time.time()
                        elif time.time() - last_change > 3:
                            break
                        time.sleep(0.2)
                    held = self.redis.server_connections() - redis_before
                    result["seconds"] = time.monotonic() - t0
                    result["failed"] += max(0, total + result["ok"] - held)
                    result["ok"] = max(0, held - total)
                total += result["ok"]
                time.sleep(1.0)  # let the server settle (lazy allocations, first heartbeat timers)
                rss1 = procstat.rss_bytes(system.pids())
                out["connect"].append({
                    "requested": n, "connected": result["ok"], "total_connected": total,
                    "failed": result["failed"], "errors": result["errors"],
                    "seconds": round(result["seconds"], 2),
                    "rss_before_mb": round(rss0 / 2**20, 1), "rss_after_mb": round(rss1 / 2**20, 1),
                    "rss_per_connection_kb": round((rss1 - rss0) / max(1, result["ok"]) / 1024, 1),
                })
                self.log(f"  {name}: {total} connected (+{result['ok']}, {result['failed']} failed) "
                         f"in {result['seconds']:.1f}s, RSS {rss1 / 2**20:.0f} MB")
            out["redis_connections"] = self.redis.server_connections() - redis_before
            out["clients"] = total
            out.update(body(system, load, total))
        finally:
            load.close()
            system.stop()
        return out

    def settle(self, system, limit: float = 30.0) -> None:
        """Wait until the server is idle (under 10% of a core for half a second): a backlog from
        the previous pass must not weigh on the next one."""
        deadline = time.time() + limit
        time.sleep(1.0)
        while time.time() < deadline:
            before = procstat.cpu_seconds(system.pids())
            time.sleep(0.5)
            if procstat.cpu_seconds(system.pids()) - before < 0.05:
                return

    def fanout(self, name: str, clients: int, rate: float, seconds: float) -> dict:
        def body(system, load, connected):
            passes = []
            for i in range(self.args.passes):
                if i:
                    self.settle(system)
                passes.append(self.fanout_pass(name, system, load, connected, rate, seconds, i))
            return {"run": median_pass(passes), "passes": passes}
        return self.with_system(name, [clients], body)

    def fanout_pass(self, name, system, load, connected, rate, seconds, i) -> dict:
        run = self.measure(system, load, connected, rate, seconds, drain=self.args.drain)
        self.log(f"  {name}: pass {i + 1}: {rate:g} msg/s for {seconds:g}s to {connected} clients: "
                 f"p50 {run['latency_ms']['p50']} ms, p99 {run['latency_ms']['p99']} ms, lost {run['lost']}")
        return run

    def fanout_pair(self, names: list[str], clients: int, rate: float, seconds: float) -> dict:
        """:meth:`fanout` for two systems running side by side, their passes taken in turn (one
        system publishing at a time, the other idle), so that a change in what else the machine
        does weighs on both alike. For a ratio between them: relay-redis/relay-memory."""
        first, second = names
        passes: dict[str, list] = {first: [], second: []}

        def both(system_a, load_a, connected_a):
            def body(system_b, load_b, connected_b):
                turns = [(first, system_a, load_a, connected_a), (second, system_b, load_b, connected_b)]
                for i in range(self.args.passes):
                    for name, system, load, connected in turns:
                        self.settle(system_a)
                        self.settle(system_b)
                        passes[name].append(self.fanout_pass(name, system, load, connected, rate, seconds, i))
                return {}
            return {"partner": self.with_system(second, [clients], body)}

        out = {first: self.with_system(first, [clients], both)}
        out[second] = out[first].pop("partner")
        for name in names:
            if "error" not in out[name]:
                out[name].update(run=median_pass(passes[name]), passes=passes[name])
        return out

    def idle(self, name: str, steps: list[int], rate: float, seconds: float) -> dict:
        def body(system, load, connected):
            if not connected:
                return {"run": None}
            self.log(f"  {name}: {rate:g} msg/s for {seconds:g}s to {connected} clients")
            return {"run": self.measure(system, load, connected, rate, seconds, drain=self.args.drain)}
        batches = [steps[0]] + [b - a for a, b in zip(steps, steps[1:])]
        return self.with_system(name, batches, body)

    def ladder(self, name: str, clients: int, rates: list[float], seconds: float, refine: int) -> dict:
        def ok(run):
            return run["lost"] == 0 and run["latency_ms"]["p99"] is not None and run["latency_ms"]["p99"] <= 1000

        def body(system, load, connected):
            steps, best, failed_rate = [], None, None
            for rate in rates:
                run = self.measure(system, load, connected, rate, seconds, drain=self.args.ladder_drain)
                run["sustained"] = ok(run)
                steps.append(run)
                self.log(f"  {name}: ladder {rate:g} msg/s -> {run['deliveries_per_s']}/s, "
                         f"p99 {run['latency_ms']['p99']} ms, lost {run['lost']} "
                         f"{'ok' if run['sustained'] else 'FAIL'}")
                if not run["sustained"]:
                    failed_rate = rate
                    break
                best = run
                if load.progress()[2] < connected:  # connections lost: stop climbing
                    failed_rate = rate
                    break
            lo = best["rate"] if best else rates[0] / 2
            hi = failed_rate
            for _ in range(refine if hi else 0):
                if hi - lo < max(2.0, lo * 0.08):
                    break
                rate = round((lo + hi) / 2, 1)
                time.sleep(1.0)
                run = self.measure(system, load, connected, rate, seconds, drain=self.args.ladder_drain)
                run["sustained"] = ok(run)
                steps.append(run)
                self.log(f"  {name}: refine {rate:g} msg/s -> {run['deliveries_per_s']}/s, "
                         f"p99 {run['latency_ms']['p99']} ms, lost {run['lost']} "
                         f"{'ok' if run['sustained'] else 'FAIL'}")
                if run["sustained"]:
                    lo, best = rate, (run if not best or run["deliveries_per_s"] > best["deliveries_per_s"] else best)
                else:
                    hi = rate
            return {"steps": steps, "max_sustained_deliveries_per_s": best["deliveries_per_s"] if best else 0,
                    "max_sustained_rate": best["rate"] if best else 0}
        return self.with_system(name, [clients], body)

    def close(self):
        self.redis.stop()


SCENARIOS = ["fanout-100x200", "fanout-1000x50", "idle", "saturation",
             "backbone-1000x50", "backbone-20x200", "backbone-publish"]
# The backbone scenarios compare relay with itself: the same worker, the same load, events
# published over HTTP (the path through the backbone) into the in-memory or the Redis backbone.
BACKBONE_SCENARIOS = [s for s in SCENARIOS if s.startswith("backbone-")]
BACKBONE_SYSTEMS = ["relay-memory", "relay-redis"]
ALIASES = {"backbone": BACKBONE_SCENARIOS}


def systems_for(scenario: str, systems: list[str]) -> list[str]:
    """The systems a scenario runs on: the backbone scenarios always compare both backbones
    (or the one ``--systems`` names), the others run what ``--systems`` asks for."""
    if scenario in BACKBONE_SCENARIOS:
        return [s for s in BACKBONE_SYSTEMS if s in systems] or BACKBONE_SYSTEMS
    return systems


def plan(args) -> dict:
    if args.quick:
        return {
            "fanout-100x200": dict(clients=50, rate=100, seconds=3),
            "fanout-1000x50": dict(clients=200, rate=50, seconds=3),
            "idle": dict(steps=[300, 600], rate=10, seconds=3),
            "saturation": dict(clients=200, rates=[20, 40, 80, 160, 320], seconds=2, refine=1),
            "backbone-1000x50": dict(clients=200, rate=50, seconds=3),
            "backbone-20x200": dict(clients=20, rate=100, seconds=3),
            "backbone-publish": dict(clients=0, rate=100, seconds=3),
        }
    return {
        "fanout-100x200": dict(clients=100, rate=200, seconds=10),
        "fanout-1000x50": dict(clients=1000, rate=50, seconds=10),
        "idle": dict(steps=[5000, 10000], rate=10, seconds=10),
        "saturation": dict(clients=1000, rates=[5, 10, 20, 40, 60, 80, 100, 125, 150, 200, 250, 320, 400, 500, 650,
                                                 800, 1000, 1300],
                           seconds=5, refine=3),
        # Per-delivery costs dominate at 1000 clients, per-event ones (the HTTP request, the
        # backbone's round trip) at 20; with no client the worker's CPU is the publish path alone.
        "backbone-1000x50": dict(clients=1000, rate=50, seconds=10),
        "backbone-20x200": dict(clients=20, rate=200, seconds=10),
        "backbone-publish": dict(clients=0, rate=200, seconds=10),
    }


def median_pass(passes: list[dict]) -> dict:
    """The headline pass: the median by p99 (a missing p99, i.e. nothing arrived, sorts last)."""
    ranked = sorted(passes, key=lambda r: (r["latency_ms"]["p99"] is None, r["latency_ms"]["p99"] or 0))
    return ranked[(len(ranked) - 1) // 2]


def run_scenario(bench: Bench, scenario: str, system: str, p: dict) -> dict:
    if scenario.startswith(("fanout", "backbone")):
        return bench.fanout(system, p["clients"], p["rate"], p["seconds"])
    if scenario == "idle":
        return bench.idle(system, p["steps"], p["rate"], p["seconds"])
    return bench.ladder(system, p["clients"], p["rates"], p["seconds"], p["refine"])


# -- report -------------------------------------------------------------------------------------

def _ratio(a, b):
    if a is None or b in (None, 0) or (isinstance(b, float) and math.isnan(b)):
        return None
    r = a / b
    return float(f"{r:.3g}") if r < 100 else round(r)


def headline(result: dict) -> dict:
    """The figures the table shows, per scenario and system."""
    out = {}
    for scenario, per_system in result["scenarios"].items():
        for system, r in per_system.items():
            if "error" in r:
                out.setdefault(scenario, {})[system] = {"error": r["error"]}
                continue
            run = r.get("run") or {}
            if scenario == "saturation":  # the figures of the best sustained step
                run = next((st for st in r.get("steps", []) if st.get("sustained")
                            and st["deliveries_per_s"] == r.get("max_sustained_deliveries_per_s")), {})
            lat = run.get("latency_ms", {})
            h = {
                "clients": r.get("clients"), "redis_connections": r.get("redis_connections"),
                "load_average_before": r.get("load_average_before"), "host_steal_pct": r.get("host_steal_pct"),
                "loss_pct": run.get("loss_pct"), "out_of_order": run.get("out_of_order"),
                "p50_ms": lat.get("p50"), "p95_ms": lat.get("p95"), "p99_ms": lat.get("p99"), "max_ms": lat.get("max"),
                "deliveries_per_s": run.get("deliveries_per_s"), "server_cpu_s": run.get("server_cpu_s"),
                "server_cpu_us_per_delivery": run.get("server_cpu_us_per_delivery"),
                "worker_cpu_us_per_delivery": run.get("worker_cpu_us_per_delivery"),
                "worker_cpu_us_per_event": run.get("worker_cpu_us_per_event"),
                "redis_cpu_s": run.get("redis_cpu_s"), "redis_cpu_us_per_event": run.get("redis_cpu_us_per_event"),
                "load_client_cpu_s": run.get("load_client_cpu_s"),
                "rss_idle_mb": r.get("rss_idle_mb"),
                "rss_per_connection_kb": (r.get("connect") or [{}])[-1].get("rss_per_connection_kb"),
                "connect_seconds": [c["seconds"] for c in r.get("connect", [])],
                "connected": [c["total_connected"] for c in r.get("connect", [])],
            }
            if r.get("passes"):
                h["p99_ms_passes"] = [p["latency_ms"]["p99"] for p in r["passes"]]
                h["loss_pct_passes"] = [p["loss_pct"] for p in r["passes"]]
                # CPU figures vary less than latency between passes: the backbone comparison
                # takes each pass's and reports their median.
                for key in ("worker_cpu_us_per_delivery", "worker_cpu_us_per_event"):
                    values = sorted(p[key] for p in r["passes"] if p.get(key) is not None)
                    h[key + "_passes"] = [p.get(key) for p in r["passes"]]
                    h[key + "_median"] = values[(len(values) - 1) // 2] if values else None
            if scenario == "idle" and r.get("connect"):
                c = r["connect"]
                first = c[0]
                h["rss_per_connection_kb"] = first["rss_per_connection_kb"]
                h["rss_per_connection_kb_all"] = round(
                    (c[-1]["rss_after_mb"] - first["rss_before_mb"]) * 1024 / max(1, c[-1]["total_connected"]), 1)
            if scenario == "saturation":
                h["max_sustained_deliveries_per_s"] = r.get("max_sustained_deliveries_per_s")
                h["max_sustained_rate"] = r.get("max_sustained_rate")
            out.setdefault(scenario, {})[system] = h
    return out


ROWS = [  # ↓: lower is better
    ("fanout-100x200", "p50_ms", "p50 latency, ms ↓"),
    ("fanout-100x200", "p99_ms", "p99 latency, ms ↓"),
    ("fanout-100x200", "p99_ms_passes", "p99 of each pass, ms ↓"),
    ("fanout-100x200", "loss_pct", "loss, %"),
    ("fanout-100x200", "server_cpu_us_per_delivery", "server CPU µs/delivery ↓"),
    ("fanout-1000x50", "p50_ms", "p50 latency, ms ↓"),
    ("fanout-1000x50", "p95_ms", "p95 latency, ms ↓"),
    ("fanout-1000x50", "p99_ms", "p99 latency, ms ↓"),
    ("fanout-1000x50", "max_ms", "max latency, ms ↓"),
    ("fanout-1000x50", "p99_ms_passes", "p99 of each pass, ms ↓"),
    ("fanout-1000x50", "loss_pct", "loss, %"),
    ("fanout-1000x50", "loss_pct_passes", "loss of each pass, %"),
    ("fanout-1000x50", "out_of_order", "out of order"),
    ("fanout-1000x50", "deliveries_per_s", "deliveries/s"),
    ("fanout-1000x50", "server_cpu_us_per_delivery", "server CPU µs/delivery ↓"),
    ("fanout-1000x50", "load_client_cpu_s", "load client CPU s"),
    ("fanout-1000x50", "redis_connections", "Redis connections held ↓"),
    ("idle", "connected", "clients connected (5k, 10k steps)"),
    ("idle", "connect_seconds", "connect time per step, s ↓"),
    ("idle", "rss_idle_mb", "RSS with no client, MB ↓"),
    ("idle", "rss_per_connection_kb", "RSS per idle connection (first step), KB ↓"),
    ("idle", "rss_per_connection_kb_all", "RSS per idle connection (all), KB ↓"),
    ("idle", "redis_connections", "Redis connections held ↓"),
    ("idle", "p50_ms", "p50 at 10 msg/s, ms ↓"),
    ("idle", "p99_ms", "p99 at 10 msg/s, ms ↓"),
    ("idle", "loss_pct", "loss at 10 msg/s, %"),
    ("idle", "server_cpu_us_per_delivery", "server CPU µs/delivery at 10 msg/s ↓"),
    ("saturation", "max_sustained_deliveries_per_s", "max sustained deliveries/s"),
    ("saturation", "max_sustained_rate", "max sustained msg/s"),
    ("saturation", "p99_ms", "p99 at that rate, ms ↓"),
    ("saturation", "server_cpu_us_per_delivery", "server CPU µs/delivery at that rate ↓"),
    ("saturation", "load_client_cpu_s", "load client CPU s at that rate"),
    ("backbone-1000x50", "worker_cpu_us_per_delivery_median", "worker CPU µs/delivery (median pass) ↓"),
    ("backbone-1000x50", "worker_cpu_us_per_delivery_passes", "worker CPU µs/delivery, each pass ↓"),
    ("backbone-1000x50", "worker_cpu_us_per_event_median", "worker CPU µs/event (median pass) ↓"),
    ("backbone-1000x50", "redis_cpu_us_per_event", "redis-server CPU µs/event ↓"),
    ("backbone-1000x50", "p50_ms", "p50 latency, ms ↓"),
    ("backbone-1000x50", "p99_ms", "p99 latency, ms ↓"),
    ("backbone-1000x50", "loss_pct", "loss, %"),
    ("backbone-20x200", "worker_cpu_us_per_delivery_median", "worker CPU µs/delivery (median pass) ↓"),
    ("backbone-20x200", "worker_cpu_us_per_delivery_passes", "worker CPU µs/delivery, each pass ↓"),
    ("backbone-20x200", "worker_cpu_us_per_event_median", "worker CPU µs/event (median pass) ↓"),
    ("backbone-20x200", "redis_cpu_us_per_event", "redis-server CPU µs/event ↓"),
    ("backbone-20x200", "p50_ms", "p50 latency, ms ↓"),
    ("backbone-20x200", "p99_ms", "p99 latency, ms ↓"),
    ("backbone-20x200", "loss_pct", "loss, %"),
    ("backbone-publish", "worker_cpu_us_per_event_median", "worker CPU µs/event, no client (publish path) ↓"),
    ("backbone-publish", "worker_cpu_us_per_event_passes", "worker CPU µs/event, no client, each pass ↓"),
    ("backbone-publish", "redis_cpu_us_per_event", "redis-server CPU µs/event, no client ↓"),
]


def table(result: dict, markdown: bool = False) -> str:
    h = headline(result)
    systems = result["systems"]
    pairs = [("relay", p) for p in systems if "relay" in systems and not p.startswith("relay")]
    if "relay-allcores" in systems and "centrifugo-allcores" in systems:  # all cores against all cores
        pairs.append(("relay-allcores", "centrifugo-allcores"))
    if "relay-redis" in systems and "relay-memory" in systems:  # the backbones against each other
        pairs.append(("relay-redis", "relay-memory"))
    head = ["scenario", "figure"] + systems + [f"{a}/{b}" for a, b in pairs]
    lines = [head]
    for scenario, key, label in ROWS:
        if scenario not in h:
            continue
        row = [scenario, label]
        values = {}
        for s in systems:
            r = h[scenario].get(s, {})
            v = r.get(key) if "error" not in r else "error"
            values[s] = v
            row.append("-" if v is None else (", ".join(str(x) for x in v) if isinstance(v, list) else str(v)))
        for x, p in pairs:
            a, b = values.get(x), values.get(p)
            row.append(str(_ratio(a, b)) if isinstance(a, (int, float)) and isinstance(b, (int, float)) and _ratio(a, b) is not None else "-")
        lines.append(row)
    lines.append(["load", "1-min load average before (per scenario)"] + [
        " / ".join(f"{h[sc][s]['load_average_before'][0]:.1f}" for sc in h
                   if s in h[sc] and h[sc][s].get("load_average_before"))
        for s in systems] + [""] * len(pairs))
    lines.append(["load", "host steal, % of CPU time (per scenario) ↓"] + [
        " / ".join(f"{h[sc][s]['host_steal_pct']:g}" for sc in h
                   if s in h[sc] and h[sc][s].get("host_steal_pct") is not None)
        for s in systems] + [""] * len(pairs))
    if markdown:
        out = ["| " + " | ".join(str(c) for c in r) + " |" for r in lines]
        out.insert(1, "|" + "|".join("---" for _ in head) + "|")
        return "\n".join(out)
    widths = [max(len(str(r[i])) for r in lines) for i in range(len(head))]
    out = []
    for i, r in enumerate(lines):
        out.append(" | ".join(str(c).ljust(w) for c, w in zip(r, widths)))
        if i == 0:
            out.append("-+-".join("-" * w for w in widths))
    return "\n".join(out)


def targets(result: dict) -> list[tuple[str, bool | None, str]]:
    """The issue's targets for relay, each as (target, met, the figures behind it)."""
    h = headline(result)
    out = []

    def get(scenario, system, key):
        return h.get(scenario, {}).get(system, {}).get(key)

    relay_max = get("saturation", "relay", "max_sustained_deliveries_per_s")
    for peer, factor in (("node", 1.0), ("flask-sse", 10.0), ("centrifugo", 1.0)):
        peer_max = get("saturation", peer, "max_sustained_deliveries_per_s")
        if relay_max is not None and peer_max:
            ratio = relay_max / peer_max
            out.append((f"max sustained fan-out at 1000 clients >= {factor:g} x {peer}'s", ratio >= factor,
                        f"{relay_max:,} vs {peer_max:,} deliveries/s: {ratio:.2f} x"))
    p99, loss = get("fanout-1000x50", "relay", "p99_ms"), get("fanout-1000x50", "relay", "loss_pct")
    if p99 is not None:
        passes = get("fanout-1000x50", "relay", "p99_ms_passes") or []
        out.append(("p99 <= 30 ms at 1000 clients x 50 msg/s, no loss", p99 <= 30 and loss == 0,
                    f"median pass p99 {p99} ms (passes: {', '.join(str(p) for p in passes)} ms), loss {loss} %"))
    kb = get("idle", "relay", "rss_per_connection_kb_all")
    if kb is not None:
        out.append(("<= 20 KB of RSS per idle connection", kb <= 20, f"{kb} KB (5000 then 10,000 idle clients)"))
    peer_kb = get("idle", "centrifugo", "rss_per_connection_kb_all")
    if kb is not None and peer_kb is not None:
        out.append(("RSS per idle connection <= Centrifugo's", kb <= peer_kb, f"{kb} KB vs {peer_kb} KB"))
    connected = get("idle", "relay", "connected")
    if connected:
        out.append(("10,000 concurrent connections on one worker", connected[-1] >= 10000,
                    f"{connected[-1]:,} connected"))
    for scenario in ("backbone-1000x50", "backbone-20x200"):
        redis_us = get(scenario, "relay-redis", "worker_cpu_us_per_delivery_median")
        memory_us = get(scenario, "relay-memory", "worker_cpu_us_per_delivery_median")
        if redis_us is not None and memory_us:
            clients = get(scenario, "relay-redis", "clients")
            ratio = redis_us / memory_us
            # A worker that fell behind writes several events per write: cheaper per delivery,
            # so the two figures would not measure the same work.
            behind = [f"{s} fell behind (p99 {get(scenario, s, 'p99_ms')} ms): not like for like"
                      for s in BACKBONE_SYSTEMS if (get(scenario, s, "p99_ms") or 0) > 1000]
            out.append((f"Redis backbone CPU per delivery <= 1.2 x memory ({scenario})", ratio <= 1.2 and not behind,
                        f"worker {redis_us} vs {memory_us} µs per delivery at {clients} clients: {ratio:.2f} x "
                        f"(median of each system's passes)" + "".join(f"; {b}" for b in behind)))
    held = {sc: get(sc, "relay", "redis_connections") for sc in h if get(sc, "relay", "redis_connections") is not None}
    if held:
        out.append(("one Redis connection per worker whatever the number of clients", set(held.values()) == {1},
                    ", ".join(f"{sc}: {n}" for sc, n in held.items())))
    return out


def targets_text(result: dict, markdown: bool = False) -> str:
    rows = targets(result)
    if result.get("quick"):
        rows = [(t, ok, f + " (a --quick run: too small to judge)") for t, ok, f in rows]
    if markdown:
        lines = ["| target | met | figures |", "|---|---|---|"]
        lines += [f"| {t} | {'yes' if ok else 'no'} | {f} |" for t, ok, f in rows]
        return "\n".join(lines)
    return "\n".join(f"{'MET   ' if ok else 'MISSED'} {t}: {f}" for t, ok, f in rows)


def machine() -> dict:
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    with open("/proc/meminfo") as f:
        mem_kb = int(f.readline().split()[1])
    versions = {"python": platform.python_version()}
    for mod in ("gevent", "gunicorn", "flask", "flask_sse", "redis", "uvloop"):
        try:
            versions[mod] = importlib.metadata.version(mod.replace("_", "-"))
        except Exception:  # noqa: BLE001
            pass
    try:
        versions["node"] = subprocess.run(["node", "--version"], capture_output=True, text=True, timeout=10, check=False).stdout.strip()
        versions["redis-server"] = subprocess.run(["redis-server", "--version"], capture_output=True, text=True,
                                                  timeout=10, check=False).stdout.split()[2]
    except Exception:  # noqa: BLE001
        pass
    exe = servers.centrifugo_binary()
    if exe:
        try:
            versions["centrifugo"] = subprocess.run([exe, "version"], capture_output=True, text=True, timeout=10,
                                                    check=False).stdout.strip()
            versions["centrifugo_binary"] = exe
        except (OSError, subprocess.TimeoutExpired) as exc:
            versions["centrifugo"] = f"unknown: {exc!r}"
    return {"cpus": os.cpu_count(), "cpu_model": cpu, "memory_gb": round(mem_kb / 2**20, 1),
            "kernel": platform.release(), "versions": versions}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes and short runs, for a smoke check")
    parser.add_argument("--systems", default="relay,flask-sse,node,centrifugo",
                        help="comma-separated: " + ", ".join(SYSTEMS) + " (centrifugo: GOMAXPROCS=1 against "
                        "relay's one worker; the -allcores pair: every CPU each)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                        help="comma-separated: " + ", ".join(SCENARIOS) + " (backbone: the three backbone-* "
                        "scenarios, which run on relay-memory and relay-redis whatever --systems says, unless "
                        "it names one of them)")
    parser.add_argument("--processes", type=int, default=3, help="load client processes")
    parser.add_argument("--connect-timeout", type=float, default=15.0, help="seconds one connection may take")
    parser.add_argument("--drain", type=float, default=15.0, help="seconds to wait for late deliveries")
    parser.add_argument("--pin", action="store_true",
                        help="pin the system under test to CPU 0 and the load client, publisher and Redis to the "
                        "other CPUs (off by default: Node's helper threads would share the server's CPU)")
    parser.add_argument("--passes", type=int, default=3, help="measured runs of each fan-out scenario; "
                        "the table shows the median by p99, the JSON every pass")
    parser.add_argument("--ladder-drain", type=float, default=4.0, help="the same, per saturation step")
    parser.add_argument("--clients", type=int, help="override the client count of every scenario (debugging)")
    parser.add_argument("--rate", type=float, help="override the rate of the fan-out scenarios (debugging)")
    parser.add_argument("--seconds", type=float, help="override the publishing time of every scenario (debugging)")
    parser.add_argument("--profile", metavar="DIR", help="record a py-spy profile (collapsed stacks) of each "
                        "Python server's publishing phase into DIR")
    parser.add_argument("--out", help="JSON file for the results (default benchmarks/results/<time>.json)")
    parser.add_argument("--report", metavar="JSON", help="print the table of an earlier run and exit")
    parser.add_argument("--markdown", action="store_true", help="with --report: a Markdown table")
    args = parser.parse_args(argv)
    if args.report:
        earlier = json.loads(Path(args.report).read_text())
        print(table(earlier, markdown=args.markdown))
        print()
        print(targets_text(earlier, markdown=args.markdown))
        return 0
    systems = [s for s in args.systems.split(",") if s]
    scenarios = [x for s in args.scenarios.split(",") if s for x in ALIASES.get(s, [s])]
    for s in systems:
        if s not in SYSTEMS:
            parser.error(f"unknown system {s!r}")
    for s in scenarios:
        if s not in SCENARIOS:
            parser.error(f"unknown scenario {s!r}")
    skipped = {}
    if any(s.startswith("centrifugo") for s in systems) and not servers.centrifugo_binary():
        for s in [s for s in systems if s.startswith("centrifugo")]:
            skipped[s] = servers.centrifugo_missing()
            print(f"skipping {s}: {skipped[s]}", file=sys.stderr, flush=True)
        systems = [s for s in systems if s not in skipped]
        if not systems:
            print("no system left to measure", file=sys.stderr)
            return 1
    plan_systems = {sc: systems_for(sc, systems) for sc in scenarios}
    measured = list(dict.fromkeys(s for sc in scenarios for s in plan_systems[sc]))  # the table's columns
    p = plan(args)
    for sc in p.values():
        if args.clients:
            if sc.get("clients"):  # a publish-only scenario keeps its 0
                sc["clients"] = args.clients
            if "steps" in sc:
                sc["steps"] = [args.clients, args.clients * 2]
        if args.seconds:
            sc["seconds"] = args.seconds
        if args.rate and "rate" in sc and "steps" not in sc:
            sc["rate"] = args.rate

    cpus = sorted(os.sched_getaffinity(0))
    if args.pin and len(cpus) >= 2:
        servers.PIN.update(server={cpus[0]}, load=set(cpus[1:]))
    # A SIGTERM (e.g. from ``timeout``) unwinds like Ctrl-C, so every server is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    result = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "quick": args.quick,
              "systems": measured, "skipped": skipped, "plan": {k: p[k] for k in scenarios}, "machine": machine(),
              "load_client_processes": args.processes,
              "pinning": {k: sorted(v) if v else None for k, v in servers.PIN.items()}, "scenarios": {}}
    with tempfile.TemporaryDirectory(prefix="relay-bench-") as tmp:
        bench = Bench(args, Path(tmp))
        try:
            for scenario in scenarios:
                if scenario in BACKBONE_SCENARIOS and len(plan_systems[scenario]) == 2:
                    bench.log(f"{scenario} / {' and '.join(plan_systems[scenario])} side by side, passes in turn "
                              f"(load average {procstat.load_average()[0]:.2f})")
                    steal = procstat.steal_ticks()
                    try:
                        r = bench.fanout_pair(plan_systems[scenario], **p[scenario])
                    except Exception as exc:  # noqa: BLE001 - report it, go on with the other scenarios
                        bench.log(f"  failed: {exc!r}")
                        r = {s: {"error": repr(exc)[:2000]} for s in plan_systems[scenario]}
                    for system_result in r.values():
                        system_result["host_steal_pct"] = procstat.steal_percent(steal, procstat.steal_ticks())
                    result["scenarios"][scenario] = r
                    time.sleep(1.0)
                    continue
                for system in plan_systems[scenario]:
                    bench.log(f"{scenario} / {system} (load average {procstat.load_average()[0]:.2f})")
                    steal = procstat.steal_ticks()
                    try:
                        r = run_scenario(bench, scenario, system, p[scenario])
                    except Exception as exc:  # noqa: BLE001 - one system failing must not lose the rest
                        bench.log(f"  {system} failed: {exc!r}")
                        r = {"error": repr(exc)[:2000]}
                    r["host_steal_pct"] = procstat.steal_percent(steal, procstat.steal_ticks())
                    bench.log(f"  host steal: {r['host_steal_pct']:g} % of the CPU time")
                    result["scenarios"].setdefault(scenario, {})[system] = r
                    time.sleep(1.0)
        finally:
            bench.close()
    result["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    result["headline"] = headline(result)
    out = Path(args.out) if args.out else HERE / "results" / time.strftime("%Y%m%d-%H%M%S.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=1)
    out.write_text(text)
    if not args.out:
        (out.parent / "latest.json").write_text(text)
    report = table(result) + "\n\nrelay's targets:\n" + targets_text(result)
    out.with_suffix(".txt").write_text(report + "\n")
    out.with_suffix(".md").write_text(table(result, markdown=True) + "\n\n" + targets_text(result, markdown=True) + "\n")
    print()
    print(report)
    print(f"\nresults: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
