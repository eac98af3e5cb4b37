"""Benchmark the HTTP API under a production server: accepted requests/s, latency, worker drain.

    .venv/bin/python bench/api_bench.py [--seconds 20] [--connections 8] [--web-workers 3]
        [--threads 1] [--queue db|outbox] [--senders 1] [--database-url postgres://...]

One run on one machine, so that the ratios hold however busy it is:
  - gunicorn serving console.wsgi (DEBUG off, PostgreSQL), as README's production notes say;
  - workers draining the queue to an SMTP sink on loopback (aiosmtpd, a process of its own):
    `manage.py db_worker` with TASKS_BACKEND=django_tasks_db.DatabaseBackend (`--queue db`), or
    `manage.py send_worker` with the outbox backend (`--queue outbox`);
  - baseline: GET /healthz (a one-query view on the same server) at the same concurrency;
  - load: POST /api/v1/messages with Logto's body and a new recipient each time, for --seconds,
    from wrk when it is installed (`apt-get install wrk`), else from a threaded Python client;
  - drain: when each message reached the sink, so the rate the workers sustained and whether
    they kept up (backlog when the load stopped, time to clear it).
The database is a fresh PostgreSQL database (`connector_api_bench`), dropped afterwards.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from send_bench import (  # noqa: E402
    SinkProcess,
    cpu_by_group,
    database_name,
    drop_database,
    free_port,
    make_bench_connector,
    setup_database,
)

PAYLOAD = {
    "code": "123456",
    "locale": "en",
    "uiLocales": "en",
    "user": {"id": "u_1", "name": "Bench User", "primaryEmail": "bench@example.test"},
    "application": {"id": "app_1", "name": "Bench"},
}

# wrk script: a new recipient per request (the per-recipient limit stays out of the way), and the
# latency percentiles and status counts printed as one JSON line at the end.
WRK_SCRIPT = """
local counter = 0
local thread_id = 0
local threads = {}
local token = os.getenv("BENCH_TOKEN")
local payload = os.getenv("BENCH_PAYLOAD")

function setup(thread)
  table.insert(threads, thread)
  thread:set("id", #threads)
end

function init(args)
  thread_id = id
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = "Bearer " .. token
end

function request()
  counter = counter + 1
  local body = string.format(
    '{"to":"t%d-%d@example.test","type":"SignIn","payload":%s,"ip":"203.0.113.7"}',
    thread_id, counter, payload)
  return wrk.format("POST", "/api/v1/messages", nil, body)
end

function done(summary, latency, requests)
  local out = string.format(
    '{"requests":%d,"duration_us":%d,"status_errors":%d,"socket_errors":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d}',
    summary.requests, summary.duration, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max)
  io.write("BENCH " .. out .. "\\n")
end
"""


@dataclass
class LoadResult:
    requests: int
    ok: int
    seconds: float
    latencies_ms: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.ok / self.seconds


def run_wrk(
    url: str, seconds: int, connections: int, script: Path | None, env: dict[str, str]
) -> LoadResult:
    """Drive the server with wrk; return what it measured."""
    threads = min(2, connections)
    command = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds}s",
        "--latency",
        "--timeout",
        "5s",
    ]
    if script is not None:
        command += ["-s", str(script)]
    output = subprocess.run(  # noqa: S603 (our own command line, no shell)
        [*command, url], capture_output=True, text=True, env=env, check=True
    ).stdout
    if script is not None:
        line = next(x for x in output.splitlines() if x.startswith("BENCH "))
        data = json.loads(line[6:])
        return LoadResult(
            requests=data["requests"],
            ok=data["requests"] - data["status_errors"] - data["socket_errors"],
            seconds=data["duration_us"] / 1e6,
            latencies_ms={k: data[f"{k}_us"] / 1000 for k in ("p50", "p90", "p99", "max")},
        )
    return parse_wrk_text(output)


def parse_wrk_text(output: str) -> LoadResult:
    """Read requests and latency percentiles from wrk's plain report."""
    units = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    latencies: dict[str, float] = {}
    requests, seconds, bad = 0, 1.0, 0
    for line in output.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] in ("50%", "90%", "99%"):
            number = parts[1].rstrip("umsµ")
            unit = parts[1][len(number) :]
            latencies[f"p{parts[0][:-1]}"] = float(number) * units.get(unit, 1.0)
        elif "requests in" in line:
            requests = int(parts[0])
            seconds = float(parts[3].rstrip("s,").rstrip("m")) if parts[3].endswith("s,") else 1.0
        elif line.strip().startswith("Non-2xx"):
            bad = int(parts[-1])
    return LoadResult(requests=requests, ok=requests - bad, seconds=seconds, latencies_ms=latencies)


def run_python_client(
    base: str, path: str, seconds: int, connections: int, token: str | None
) -> LoadResult:
    """Drive the server from threads with kept connections (when wrk is not installed)."""
    host, port = base.removeprefix("http://").split(":")
    deadline = time.monotonic() + seconds
    latencies: list[float] = []
    counts = {"requests": 0, "ok": 0}
    lock = threading.Lock()

    def worker(number: int) -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        sent = 0
        mine: list[float] = []
        ok = 0
        while time.monotonic() < deadline:
            sent += 1
            if token:
                body = json.dumps(
                    {
                        "to": f"p{number}-{sent}@example.test",
                        "type": "SignIn",
                        "payload": PAYLOAD,
                        "ip": "203.0.113.7",
                    }
                )
                headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
                method = "POST"
            else:
                body, headers, method = None, {}, "GET"
            started = time.perf_counter()
            try:
                conn.request(method, path, body=body, headers=headers)
                response = conn.getresponse()
                response.read()
                ok += response.status < 300
                if response.getheader("Connection", "").lower() == "close":
                    conn.close()
            except (OSError, http.client.HTTPException):
                conn.close()
            mine.append((time.perf_counter() - started) * 1000)
        with lock:
            latencies.extend(mine)
            counts["requests"] += len(mine)
            counts["ok"] += ok

    started = time.monotonic()
    workers = [threading.Thread(target=worker, args=(n,)) for n in range(connections)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    latencies.sort()
    pick = (
        (lambda q: latencies[min(len(latencies) - 1, int(len(latencies) * q))])
        if latencies
        else (lambda q: 0.0)
    )
    return LoadResult(
        requests=counts["requests"],
        ok=counts["ok"],
        seconds=time.monotonic() - started,
        latencies_ms={
            "p50": pick(0.5),
            "p90": pick(0.9),
            "p99": pick(0.99),
            "max": latencies[-1] if latencies else 0.0,
        },
    )


def wait_for_http(port: int, path: str, timeout: float = 30) -> None:
    """Return once the server answers 200 on path."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", path)
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the server on port {port} did not answer {path} within {timeout} s")


def stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=20, help="length of the POST load")
    parser.add_argument("--connections", type=int, default=8, help="concurrent clients")
    parser.add_argument("--web-workers", type=int, default=3, help="gunicorn worker processes")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="threads per gunicorn worker (more than 1: gthread workers)",
    )
    parser.add_argument(
        "--queue",
        choices=["db", "outbox"],
        default="db",
        help="db: django-tasks-db + db_worker; outbox: send_worker",
    )
    parser.add_argument("--senders", type=int, default=1, help="worker processes that send")
    parser.add_argument("--client", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument(
        "--database-url", default="postgres://postgres@127.0.0.1:5432/connector_api_bench"
    )
    args = parser.parse_args()

    from cryptography.fernet import Fernet

    backend = {
        "db": "django_tasks_db.DatabaseBackend",
        "outbox": "connectors.outbox.OutboxBackend",
    }[args.queue]
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "console.settings",
        "DATABASE_URL": args.database_url,
        "TASKS_BACKEND": backend,
        "CONNECTOR_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
        "SECRET_KEY": Fernet.generate_key().decode(),
        "DEBUG": "false",
        "LOG_LEVEL": "WARNING",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        # One client sends everything here, so its token may send that much; the per-token
        # limit is still counted on every request, as in production.
        "CONNECTORS_API_TOKEN_RATE_LIMIT": "1000000",
        "CONNECTORS_RECOVER_EVERY": "30",
    }
    os.environ.update(env)
    import django

    django.setup()
    setup_database(args.database_url)
    workdir = Path(tempfile.mkdtemp(prefix="api-bench-"))
    sink = SinkProcess(workdir)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        from connectors.tokens import issue_token

        make_bench_connector(sink.port)
        token = issue_token("bench")[1]
        from django.db import connections

        connections.close_all()

        port = free_port()
        base = f"http://127.0.0.1:{port}"
        worker_class = (
            ["--worker-class", "gthread", "--threads", str(args.threads)]
            if args.threads > 1
            else ["--worker-class", "sync"]
        )
        server = [
            sys.executable,
            "-m",
            "gunicorn",
            "console.wsgi:application",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            str(args.web_workers),
            *worker_class,
            "--log-level",
            "warning",
            "--backlog",
            "2048",
        ]
        processes.append(subprocess.Popen(server, cwd=ROOT, env=env))  # noqa: S603 (no shell)
        wait_for_http(port, "/healthz")

        if args.queue == "db":
            sender = [
                sys.executable,
                "manage.py",
                "db_worker",
                "--interval",
                "0.05",
                "--no-startup-delay",
                "--no-reload",
            ]
        else:
            sender = [sys.executable, "manage.py", "send_worker", "--batch-size", "100"]
        for _ in range(args.senders):
            worker = subprocess.Popen(sender, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)  # noqa: S603
            processes.append(worker)

        use_wrk = args.client == "wrk" or (args.client == "auto" and shutil.which("wrk"))
        script = workdir / "post.lua"
        script.write_text(WRK_SCRIPT)
        wrk_env = {
            **env,
            "BENCH_TOKEN": token,
            "BENCH_PAYLOAD": json.dumps(PAYLOAD, separators=(",", ":")),
        }

        def load(path: str, seconds: int, post: bool) -> LoadResult:
            if use_wrk:
                return run_wrk(
                    base + path, seconds, args.connections, script if post else None, wrk_env
                )
            return run_python_client(base, path, seconds, args.connections, token if post else None)

        load("/healthz", 3, post=False)  # warm up: imports, connections
        load("/api/v1/messages", 3, post=True)
        while sink.count() < count_accepted():
            time.sleep(0.1)
        sink.reset()
        already = count_accepted()

        baseline = load("/healthz", args.seconds, post=False)
        database = database_name(args.database_url)
        groups = {
            "web (gunicorn)": {processes[0].pid},
            "senders": {p.pid for p in processes[1:]},
            "sink": {sink.process.pid},
        }
        load_before = os.getloadavg()[0]
        cpu_before = cpu_by_group(groups, database)
        started = time.time()
        result = load("/api/v1/messages", args.seconds, post=True)
        load_ended = time.time()
        cpu_during = cpu_by_group(groups, database)
        load_after = os.getloadavg()[0]
        accepted = count_accepted() - already
        delivered_at_end = sink.count()
        deadline = time.monotonic() + 300
        while sink.count() < accepted and time.monotonic() < deadline:
            time.sleep(0.05)
        arrivals = sorted(sink.arrivals().values())
        drained = time.time() if not arrivals else arrivals[-1]

        print(
            f"machine: {os.cpu_count()} CPU cores; database: PostgreSQL; server: gunicorn "
            f"{args.web_workers} {'gthread x' + str(args.threads) if args.threads > 1 else 'sync'}"
            f" workers; queue: {args.queue} ({args.senders} sender"
            f"{'s' if args.senders > 1 else ''}); client: {'wrk' if use_wrk else 'python'}, "
            f"{args.connections} connections, {args.seconds} s"
        )
        print(
            f"load average before / after the load: {load_before:.1f} / {load_after:.1f} "
            "(other work on the machine shows here)"
        )
        show("baseline GET /healthz         ", baseline)
        show("POST /api/v1/messages (202)   ", result, baseline)
        if result.requests != result.ok:
            print(f"  non-202 answers: {result.requests - result.ok}")
        span = drained - started
        print(f"accepted {accepted}; in the database: {accepted} (every 202 is a committed row)")
        print(
            f"drain: {len(arrivals)} delivered to the sink in {span:.1f} s from the start of the "
            f"load = {len(arrivals) / span:.0f} msg/s; backlog when the load stopped: "
            f"{accepted - delivered_at_end}, cleared {max(0.0, drained - load_ended):.1f} s later"
        )
        cpu = {k: cpu_during[k] - cpu_before[k] for k in cpu_before}
        print(
            "CPU while the load ran, ms per accepted request: "
            + ", ".join(f"{k} {v / max(1, accepted) * 1000:.2f}" for k, v in cpu.items())
        )
        if arrivals:
            rate_during = delivered_at_end / (load_ended - started)
            print(
                f"       delivered while the load ran: {rate_during:.0f} msg/s "
                f"({'keeping up' if rate_during >= 0.95 * result.rate else 'falling behind'})"
            )
    finally:
        stop(processes)
        sink.stop()
        drop_database(args.database_url)
        shutil.rmtree(workdir, ignore_errors=True)


def count_accepted() -> int:
    from django.db import connection

    from connectors.models import Delivery

    count = Delivery.objects.count()
    connection.close()
    return count


def show(label: str, result: LoadResult, baseline: LoadResult | None = None) -> None:
    lat = result.latencies_ms
    ratio = f"  ({result.rate / baseline.rate:.2f}x baseline)" if baseline else ""
    print(
        f"{label}: {result.rate:7.0f} req/s  p50 {lat.get('p50', 0):6.1f} ms  "
        f"p90 {lat.get('p90', 0):6.1f} ms  p99 {lat.get('p99', 0):6.1f} ms{ratio}"
    )


if __name__ == "__main__":
    main()
