"""Benchmark the HTTP API under a production server: accepted requests/s, latency, worker drain.

    .venv/bin/python bench/api_bench.py [--seconds 20] [--connections 8] [--web-workers 3]
        [--threads 1] [--server gunicorn[:3] granian[:2x2] ...] [--rounds 1]
        [--queue db|outbox] [--senders 1] [--sender-threads 4] [--sink lean|aiosmtpd]
        [--database-url postgres://...]

One run on one machine, so that the ratios hold however busy it is:
  - a production server serving console.wsgi (DEBUG off, PostgreSQL): granian, as README's
    production notes say, or gunicorn; with several `--server`s, each in turn (and the list
    `--rounds` times) against the same database, senders and sink, then a line for each;
  - workers draining the queue to an SMTP sink on loopback, a process of its own: the lean one
    (bench/lean_sink.py, so that the stand-in for a remote server takes as little of the two
    cores as it can, as wrk does for the load), or aiosmtpd (`--sink aiosmtpd`):
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
    SINKS,
    SinkProcess,
    cpu_by_group,
    cpu_used,
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
    parser.add_argument(
        "--server",
        nargs="+",
        default=["granian:2x2"],  # README's production command
        metavar="NAME[:WORKERS[xTHREADS]]",
        help=f"one or more of {', '.join(SERVERS)}, each run in turn against the same database, "
        "senders and sink (gunicorn: sync workers, gthread with threads > 1; granian: its WSGI "
        "interface, THREADS blocking threads per worker); e.g. gunicorn:3 granian:2x1",
    )
    parser.add_argument("--rounds", type=int, default=1, help="run the server list this often")
    parser.add_argument(
        "--web-workers", type=int, default=3, help="worker processes of a --server without a shape"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="threads per worker (gunicorn: more than 1 means gthread workers; granian: "
        "blocking threads running the application)",
    )
    parser.add_argument(
        "--queue",
        choices=["db", "outbox"],
        default="db",
        help="db: django-tasks-db + db_worker; outbox: send_worker",
    )
    parser.add_argument("--senders", type=int, default=1, help="worker processes that send")
    parser.add_argument(
        "--sender-threads",
        type=int,
        default=None,
        help="send_worker --threads (default: send_worker's own, 4)",
    )
    parser.add_argument("--client", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument(
        "--sink", choices=SINKS, default="lean", help="the SMTP server the workers send to"
    )
    parser.add_argument(
        "--database-url", default="postgres://postgres@127.0.0.1:5432/connector_api_bench"
    )
    args = parser.parse_args()
    try:
        specs = [ServerSpec.parse(text, args.web_workers, args.threads) for text in args.server]
    except (argparse.ArgumentTypeError, ValueError) as exc:
        parser.error(f"--server: {exc}")

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
        # Database connections are kept for the whole run, so that each PostgreSQL backend's
        # CPU can be read before and after the load (one that ends in between is lost).
        "CONN_MAX_AGE": "3600",
    }
    os.environ.update(env)
    import django

    django.setup()
    setup_database(args.database_url)
    workdir = Path(tempfile.mkdtemp(prefix="api-bench-"))
    sink = SinkProcess(workdir, args.sink)
    senders: list[subprocess.Popen[bytes]] = []
    try:
        from connectors.tokens import issue_token

        make_bench_connector(sink.port)
        token = issue_token("bench")[1]
        from django.db import connections

        connections.close_all()

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
            sender = [
                sys.executable,
                "manage.py",
                "send_worker",
                "--batch-size",
                "100",
            ]
            if args.sender_threads is not None:
                sender += ["--threads", str(args.sender_threads)]
        for _ in range(args.senders):
            worker = subprocess.Popen(sender, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)  # noqa: S603
            senders.append(worker)

        use_wrk = bool(args.client == "wrk" or (args.client == "auto" and shutil.which("wrk")))
        script = workdir / "post.lua"
        script.write_text(WRK_SCRIPT)
        wrk_env = {
            **env,
            "BENCH_TOKEN": token,
            "BENCH_PAYLOAD": json.dumps(PAYLOAD, separators=(",", ":")),
        }
        print(
            f"machine: {os.cpu_count()} CPU cores; database: PostgreSQL; queue: {args.queue} "
            f"({args.senders} sender{'s' if args.senders > 1 else ''}); client: "
            f"{'wrk' if use_wrk else 'python'}, {args.connections} connections, {args.seconds} s; "
            f"sink: {args.sink}"
        )
        summaries = []
        offset = [0]  # deliveries made before the sink's log was last emptied
        for round_number in range(args.rounds):
            for spec in specs:
                if args.rounds > 1:
                    print(f"\n-- round {round_number + 1}, {spec.describe()}")
                else:
                    print(f"\n-- {spec.describe()}")
                summaries.append(
                    run_one(spec, args, env, wrk_env, script, token, use_wrk, sink, senders, offset)
                )
        if len(summaries) > 1:
            print("\nsummary (one line per run):")
            for line in summaries:
                print("  " + line)
    finally:
        stop(senders)
        sink.stop()
        drop_database(args.database_url)
        shutil.rmtree(workdir, ignore_errors=True)


def database_commits() -> int:
    """Return the transactions committed so far in this database (pg_stat_database)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        )
        (count,) = cursor.fetchone()
    connection.close()
    return int(count)


def machine_ticks() -> tuple[int, int]:
    """Return the machine's CPU ticks so far, in all and stolen by the hypervisor (/proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(fields[:8]), fields[7]  # user nice system idle iowait irq softirq steal


# The production servers the bench can run; each serves console.wsgi on 127.0.0.1:PORT.
SERVERS = ("gunicorn", "granian")


@dataclass(frozen=True)
class ServerSpec:
    """One server set-up: `NAME[:WORKERS[xTHREADS]]`, e.g. `gunicorn:3`, `granian:2x2`."""

    name: str
    workers: int
    threads: int

    @classmethod
    def parse(cls, text: str, workers: int, threads: int) -> ServerSpec:
        name, _, shape = text.partition(":")
        if name not in SERVERS:
            raise argparse.ArgumentTypeError(f"unknown server {name!r}; one of {SERVERS}")
        if shape:
            count, _, per = shape.partition("x")
            workers, threads = int(count), int(per or 1)
        return cls(name, workers, threads)

    def describe(self) -> str:
        if self.name == "granian":
            return f"granian {self.workers} workers x {self.threads} blocking threads"
        kind = f"gthread x{self.threads}" if self.threads > 1 else "sync"
        return f"gunicorn {self.workers} {kind} workers"

    def command(self, port: int) -> list[str]:
        """Return the command line that serves console.wsgi (the README's production notes)."""
        if self.name == "granian":
            return [
                sys.executable,
                "-m",
                "granian",
                "--interface",
                "wsgi",
                "console.wsgi:application",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                str(self.workers),
                "--blocking-threads",
                str(self.threads),
                "--backlog",
                "2048",
                "--log-level",
                "warning",
                "--no-ws",
            ]
        worker_class = (
            ["--worker-class", "gthread", "--threads", str(self.threads)]
            if self.threads > 1
            else ["--worker-class", "sync"]
        )
        return [
            sys.executable,
            "-m",
            "gunicorn",
            "console.wsgi:application",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            str(self.workers),
            *worker_class,
            "--log-level",
            "warning",
            "--backlog",
            "2048",
        ]


def run_one(
    spec: ServerSpec,
    args: argparse.Namespace,
    env: dict[str, str],
    wrk_env: dict[str, str],
    script: Path,
    token: str,
    use_wrk: bool,
    sink: SinkProcess,
    senders: list[subprocess.Popen[bytes]],
    offset: list[int],
) -> str:
    """Start one server, load it, print what it did; return a one-line summary."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(spec.command(port), cwd=ROOT, env=env)  # noqa: S603 (no shell)
    try:
        wait_for_http(port, "/healthz")

        def load(path: str, seconds: int, post: bool) -> LoadResult:
            if use_wrk:
                return run_wrk(
                    base + path, seconds, args.connections, script if post else None, wrk_env
                )
            return run_python_client(base, path, seconds, args.connections, token if post else None)

        load("/healthz", 3, post=False)  # warm up: imports, connections
        load("/api/v1/messages", 3, post=True)
        while sink.count() < count_accepted() - offset[0]:  # the sink counts from offset
            dead = [p.args for p in senders if p.poll() is not None]
            if dead:
                raise SystemExit(f"a sender exited during the warm-up: {dead[0]}")
            time.sleep(0.1)
        sink.reset()
        already = offset[0] = count_accepted()

        baseline = load("/healthz", args.seconds, post=False)
        database = database_name(args.database_url)
        groups = {
            f"web ({spec.name})": {server.pid},
            "senders": {p.pid for p in senders},
            "sink": {sink.process.pid},
        }
        load_before = os.getloadavg()[0]
        ticks_before = machine_ticks()
        commits_before = database_commits()
        cpu_before = cpu_by_group(groups, database)
        started = time.time()
        result = load("/api/v1/messages", args.seconds, post=True)
        load_ended = time.time()
        cpu_during = cpu_by_group(groups, database)
        ticks_after = machine_ticks()
        commits = database_commits() - commits_before
        load_after = os.getloadavg()[0]
        accepted = count_accepted() - already
        delivered_at_end = sink.count()
        deadline = time.monotonic() + 300
        while sink.count() < accepted and time.monotonic() < deadline:
            time.sleep(0.05)
        arrivals = sorted(sink.arrivals().values())
        drained = time.time() if not arrivals else arrivals[-1]
    finally:
        stop([server])

    total, stolen = (b - a for a, b in zip(ticks_before, ticks_after, strict=True))
    print(
        f"load average before / after the load: {load_before:.1f} / {load_after:.1f}; "
        f"CPU time the hypervisor gave to others during it: {100 * stolen / max(1, total):.0f} % "
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
    cpu = {k: v / max(1, accepted) * 1000 for k, v in cpu_used(cpu_before, cpu_during).items()}
    print(
        "CPU while the load ran, ms per accepted request: "
        + ", ".join(f"{k} {v:.2f}" for k, v in cpu.items())
        + f"; in all {sum(cpu.values()):.2f}; "
        f"PostgreSQL transactions per accepted request: {commits / max(1, accepted):.2f}"
    )
    rate_during = delivered_at_end / (load_ended - started)
    keeping_up = rate_during >= 0.95 * result.rate
    if arrivals:
        print(
            f"       delivered while the load ran: {rate_during:.0f} msg/s "
            f"({'keeping up' if keeping_up else 'falling behind'})"
        )
    lat = result.latencies_ms
    return (
        f"{spec.describe():42} {result.rate:5.0f} req/s  p50 {lat.get('p50', 0):5.1f}  "
        f"p99 {lat.get('p99', 0):6.1f} ms  CPU/req "
        + " ".join(f"{v:.2f}" for v in cpu.values())
        + f" = {sum(cpu.values()):.2f} ms  drain {rate_during:.0f}/s  "
        f"load {load_before:.1f}/{load_after:.1f}"
    )


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
