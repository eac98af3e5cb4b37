"""Benchmark the send service: throughput and latency from send_message() to an SMTP sink.

    .venv/bin/python bench/send_bench.py [--messages 3000] [--threads 4]
        [--producers threads|processes] [--database-url postgres://...]

Prints, from one run on one machine, so that the ratios hold however busy it is:
  - baseline A: raw smtplib over one persistent connection (the ceiling for Python);
  - baseline B: Django's send_mail with a new SMTP connection per message;
  - ours: send_message() -> Delivery row -> send_worker(s) -> sink, with one and with two
    workers (each with --threads sending threads), every message logged (Delivery +
    DeliveryAttempt rows), each compared with baseline A measured again right before and
    after it;
  - latency: accept (send_message returned) to delivered (the sink has it), at 50 messages/s.
The sink is aiosmtpd in a process of its own. The database is a fresh PostgreSQL database
(`connector_bench`), dropped afterwards.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import smtplib
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_sink(port: int, log_path: str, ready: multiprocessing.synchronize.Event) -> None:
    """Accept every message; append "recipient arrival-time" lines to log_path."""
    from aiosmtpd.controller import Controller

    log = open(log_path, "a", buffering=1)  # noqa: SIM115 (lives as long as the process)

    class Sink:
        async def handle_DATA(self, server, session, envelope):
            now = time.time()
            for rcpt in envelope.rcpt_tos:
                log.write(f"{rcpt} {now}\n")
            return "250 2.0.0 Ok: queued"

    controller = Controller(Sink(), hostname="127.0.0.1", port=port, server_hostname="localhost")
    controller.start()
    ready.set()
    while True:
        time.sleep(3600)


SINKS = ("aiosmtpd", "lean")


class SinkProcess:
    """An SMTP sink in a process of its own: aiosmtpd, or bench/lean_sink.py (`kind="lean"`)."""

    def __init__(self, directory: Path, kind: str = "aiosmtpd") -> None:
        import lean_sink

        self.kind = kind
        self.port = free_port()
        self.log = directory / "sink.log"
        self.log.write_text("")
        ready = multiprocessing.Event()
        self.process = multiprocessing.Process(
            target=lean_sink.run if kind == "lean" else run_sink,
            args=(self.port, str(self.log), ready),
            daemon=True,
        )
        self.process.start()
        ready.wait(10)

    def arrivals(self) -> dict[str, float]:
        """Return recipient -> first arrival time."""
        seen: dict[str, float] = {}
        for line in self.log.read_text().splitlines():
            rcpt, when = line.split()
            seen.setdefault(rcpt, float(when))
        return seen

    def count(self) -> int:
        return self.log.read_text().count("\n")

    def reset(self) -> None:
        self.log.write_text("")

    def stop(self) -> None:
        self.process.terminate()


MESSAGE = (
    b"From: bench@example.test\r\nTo: user@example.test\r\nSubject: Your code\r\n"
    b"\r\nYour verification code is 123456.\r\n"
)


def baseline_persistent_smtplib(port: int, n: int) -> float:
    """Return messages per second over one kept connection."""
    client = smtplib.SMTP("127.0.0.1", port)
    client.ehlo("bench.local")
    start = time.perf_counter()
    for i in range(n):
        client.sendmail("bench@example.test", [f"raw{i}@example.test"], MESSAGE)
    elapsed = time.perf_counter() - start
    client.quit()
    return n / elapsed


def ceiling(sink: SinkProcess, n: int) -> tuple[float, float, float]:
    """Return baseline A's messages/s and its CPU ms per message: smtplib's, the sink's."""
    sink_group = {"sink": {sink.process.pid}}
    sink_before = cpu_by_group(sink_group, "-")
    own_cpu = time.process_time()
    rate = baseline_persistent_smtplib(sink.port, n)
    own_cpu = (time.process_time() - own_cpu) / n * 1000
    sink_cpu = cpu_used(sink_before, cpu_by_group(sink_group, "-"))["sink"] / n * 1000
    return rate, own_cpu, sink_cpu


def baseline_django_send_mail(port: int, n: int) -> float:
    """Return messages per second with Django's SMTP backend, a new connection each time."""
    from django.core.mail import send_mail
    from django.core.mail.backends.smtp import EmailBackend

    start = time.perf_counter()
    for i in range(n):
        backend = EmailBackend(
            alias="bench", host="127.0.0.1", port=port, use_tls=False, fail_silently=False
        )
        send_mail(
            "Your code",
            "Your verification code is 123456.",
            "bench@example.test",
            [f"django{i}@example.test"],
            connection=backend,
        )
    return n / (time.perf_counter() - start)


def database_name(url: str) -> str:
    """Return the database a URL names (options such as `?conn_health_checks=False` apart)."""
    return url.rsplit("/", 1)[1].split("?", 1)[0]


def make_bench_connector(port: int) -> None:
    """Create the connector `bench`: the full example, sending in plain SMTP to the sink."""
    from connectors import schema
    from connectors.models import Connector

    config = schema.example_config("smtp")
    for key in ("auth", "tls", "requireTLS", "servername", "localAddress", "customHeaders"):
        config.pop(key, None)
    config.update(
        host="127.0.0.1", port=port, ignoreTLS=True, fromEmail="Bench <bench@example.test>"
    )
    result = schema.validate_config_data("smtp", config)
    assert result.ok, result.errors
    Connector(slug="bench", name="Bench", kind="smtp").apply_config(result.data)


def setup_database(url: str) -> None:
    import psycopg
    from django.core.management import call_command

    admin_url = url.rsplit("/", 1)[0] + "/postgres"
    name = database_name(url)
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    call_command("migrate", verbosity=0)


def drop_database(url: str) -> None:
    import psycopg
    from django.db import connections

    connections.close_all()
    admin_url = url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{database_name(url)}" WITH (FORCE)')


def cpu_by_group(groups: dict[str, set[int]], database: str) -> dict[str, dict[int, float]]:
    """Return CPU seconds used so far by each process of each group (and their children).

    PostgreSQL is counted as the backends serving the benchmark's database, which name it in
    their process title. Linux only (/proc). Compare two readings with cpu_used().
    """
    ticks = os.sysconf("SC_CLK_TCK")
    table: dict[int, tuple[int, float, str]] = {}  # pid -> (parent, cpu seconds, command)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        table[int(entry.name)] = (int(stat[1]), (int(stat[11]) + int(stat[12])) / ticks, command)
    used: dict[str, dict[int, float]] = {name: {} for name in [*groups, "postgres"]}
    for pid, (parent, seconds, command) in table.items():
        for name, roots in groups.items():
            if pid in roots or parent in roots:
                used[name][pid] = seconds
        if command.startswith("postgres: ") and f" {database} " in command:
            used["postgres"][pid] = seconds
    return used


def cpu_used(
    before: dict[str, dict[int, float]], after: dict[str, dict[int, float]]
) -> dict[str, float]:
    """Return the CPU seconds each group used between two readings of cpu_by_group().

    Per process, so that one that ended in between (a database connection closed when it grew
    old, say) takes nothing away; what it used after the first reading is lost, a process
    started in between counts in full.
    """
    return {
        name: sum(seconds - before[name].get(pid, 0.0) for pid, seconds in pids.items())
        for name, pids in after.items()
    }


def start_workers(count: int, env: dict[str, str]) -> list[subprocess.Popen[bytes]]:
    threads = env["BENCH_THREADS"]
    return [
        subprocess.Popen(  # noqa: S603 (this interpreter, our manage.py)
            [
                sys.executable,
                "manage.py",
                "send_worker",
                "--batch-size",
                "100",
                "--threads",
                threads,
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(count)
    ]


def stop_workers(workers: list[subprocess.Popen[bytes]]) -> None:
    for worker in workers:
        worker.terminate()
    for worker in workers:
        worker.wait(30)


def produce(prefix: str, n: int, rate: float | None, accepted: dict[str, float]) -> None:
    """Call send_message n times, as fast as possible or at `rate` per second."""
    from django.db import connection

    from connectors.service import send_message

    start = time.perf_counter()
    for i in range(n):
        if rate:
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        to = f"{prefix}{i}@example.test"
        send_message(to, "SignIn", {"code": "123456", "user": {"name": "Bench"}})
        accepted[to] = time.time()
    connection.close()


def produce_in_process(prefix: str, n: int, results: Any) -> None:
    """Call send_message n times in a process of its own; put what it accepted on `results`."""
    accepted: dict[str, float] = {}
    produce(prefix, n, None, accepted)
    results.put(accepted)


def run_ours(
    sink: SinkProcess,
    n: int,
    workers: int,
    env: dict[str, str],
    prefix: str,
    producers: int = 2,
    in_processes: bool = False,
) -> tuple[float, float, dict[str, float]]:
    """Return (end-to-end messages/s, accept calls/s, CPU ms per message by part).

    The producers are threads of this process, or (`in_processes`) processes of their own, as
    the web workers of an application are.
    """
    from django.db import connections

    sink.reset()
    procs = start_workers(workers, env)
    time.sleep(2)  # let the workers start
    groups = {"workers": {p.pid for p in procs}, "sink": {sink.process.pid}}
    database = database_name(os.environ["DATABASE_URL"])
    accepted: dict[str, float] = {}
    if in_processes:
        fork = multiprocessing.get_context("fork")
        results = fork.Queue()
        connections.close_all()  # a forked child must open its own
        producing: list[Any] = [
            fork.Process(
                target=produce_in_process, args=(f"{prefix}p{p}-", n // producers, results)
            )
            for p in range(producers)
        ]
    else:
        producing = [
            threading.Thread(
                target=produce, args=(f"{prefix}p{p}-", n // producers, None, accepted)
            )
            for p in range(producers)
        ]
    cpu_before, own_before = cpu_by_group(groups, database), time.process_time()
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.time()
    for producer in producing:
        producer.start()
    if in_processes:
        for _ in producing:
            accepted.update(results.get())
    for producer in producing:
        producer.join()
    accept_rate = len(accepted) / (time.time() - start)
    while sink.count() < len(accepted):
        time.sleep(0.01)
    last = max(sink.arrivals().values())
    if in_processes:  # the producers have ended and been waited for: counted as children
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        used = sum(
            getattr(children, f) - getattr(children_before, f) for f in ("ru_utime", "ru_stime")
        )
        cpu = {"send_message": used}
    else:
        cpu = {"send_message": time.process_time() - own_before}
    cpu.update(cpu_used(cpu_before, cpu_by_group(groups, database)))
    stop_workers(procs)
    per_message = {k: v / len(accepted) * 1000 for k, v in cpu.items()}
    return len(accepted) / (last - start), accept_rate, per_message


def run_drain(sink: SinkProcess, n: int, workers: int, env: dict[str, str], prefix: str) -> float:
    """Return messages/s for `workers` send_workers draining n deliveries queued beforehand."""
    sink.reset()
    accepted: dict[str, float] = {}
    produce(prefix, n, None, accepted)
    procs = start_workers(workers, env)
    while sink.count() == 0:
        time.sleep(0.001)
    first = min(sink.arrivals().values())
    while sink.count() < n:
        time.sleep(0.01)
    last = max(sink.arrivals().values())
    stop_workers(procs)
    return (n - 1) / (last - first)


def run_latency(sink: SinkProcess, rate: float, seconds: float, env: dict[str, str]) -> list[float]:
    """Return accept-to-delivered latencies (ms) at a steady `rate` with one worker."""
    sink.reset()
    procs = start_workers(1, env)
    time.sleep(2)
    accepted: dict[str, float] = {}
    produce("lat", int(rate * seconds), rate, accepted)
    while sink.count() < len(accepted):
        time.sleep(0.01)
    arrivals = sink.arrivals()
    stop_workers(procs)
    return sorted((arrivals[to] - at) * 1000 for to, at in accepted.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--threads", type=int, default=4, help="send_worker --threads")
    parser.add_argument(
        "--producers",
        choices=["threads", "processes"],
        default="threads",
        help="the two callers of send_message end to end: threads of the benchmark, or "
        "processes of their own (as an application's web workers are)",
    )
    parser.add_argument(
        "--database-url", default="postgres://postgres@127.0.0.1:5432/connector_bench"
    )
    args = parser.parse_args()

    from cryptography.fernet import Fernet

    env = {
        **os.environ,
        "DATABASE_URL": args.database_url,
        "TASKS_BACKEND": "connectors.outbox.OutboxBackend",
        "CONNECTOR_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
        "CONNECTORS_RECIPIENT_RATE_LIMIT": "0",
        "DEBUG": "false",
        "LOG_LEVEL": "WARNING",
        "BENCH_THREADS": str(args.threads),
    }
    os.environ.update(env)
    os.environ["DJANGO_SETTINGS_MODULE"] = "console.settings"
    import django

    django.setup()
    setup_database(args.database_url)
    directory = ROOT / "var" / "bench"
    directory.mkdir(parents=True, exist_ok=True)
    sink = SinkProcess(directory)
    try:
        make_bench_connector(sink.port)
        n = args.messages

        print(
            f"messages per run: {n}; CPU cores: {os.cpu_count()}; database: PostgreSQL; "
            f"send_worker threads: {args.threads}; producers: 2 {args.producers}; "
            "load average at start: "
            f"{os.getloadavg()[0]:.1f}"
        )
        raw, own_cpu, sink_cpu = ceiling(sink, n)
        print(f"baseline A  smtplib, one persistent connection : {raw:8.0f} msg/s  (1.00x)")
        print(f"    CPU ms per message: smtplib {own_cpu:.2f}, sink {sink_cpu:.2f}")
        dj = baseline_django_send_mail(sink.port, n // 3)
        print(
            f"baseline B  Django send_mail, new connection   : {dj:8.0f} msg/s  ({dj / raw:.2f}x)"
        )
        print(
            "Each of ours below is compared with baseline A measured again right before and "
            "right after it (their mean), so that a change in the machine's load between runs "
            "does not skew the ratio."
        )
        ratios: list[float] = []

        def report(label: str, rate: float, before: float, extra: str = "") -> None:
            after = ceiling(sink, n // 2)[0]
            mean = (before + after) / 2
            ratios.append(rate / mean)
            print(
                f"ours, {label}: {rate:8.0f} msg/s  ({rate / mean:.2f}x of A = {before:.0f} "
                f"before, {after:.0f} after){extra}"
            )

        for workers in (1, 2):
            before = ceiling(sink, n // 2)[0]
            drain = run_drain(sink, n, workers, env, f"d{workers}-")
            report(
                f"{workers} worker{'s' if workers > 1 else ' '} draining a queued backlog   ",
                drain,
                before,
            )
        for workers in (1, 2):
            before = ceiling(sink, n // 2)[0]
            rate, accept, cpu = run_ours(
                sink, n, workers, env, f"w{workers}-", in_processes=args.producers == "processes"
            )
            report(
                f"{workers} worker{'s' if workers > 1 else ' '} send_message->sink, logged",
                rate,
                before,
                f"   [send_message accepted {accept:.0f}/s]",
            )
            total = sum(cpu.values())
            print(
                "    CPU ms per message: "
                + ", ".join(f"{k} {v:.2f}" for k, v in cpu.items())
                + f"; total {total:.2f} (so at most {os.cpu_count() * 1000 / total:.0f} msg/s "
                f"on {os.cpu_count()} cores)"
            )
        latencies = run_latency(sink, rate=50, seconds=10, env=env)
        median = statistics.median(latencies)
        p95 = latencies[int(len(latencies) * 0.95)]
        print(
            f"latency at 50 msg/s, 1 worker, accept->delivered: median {median:.1f} ms, "
            f"p95 {p95:.1f} ms, max {latencies[-1]:.1f} ms ({len(latencies)} messages)"
        )
        print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    finally:
        sink.stop()
        drop_database(args.database_url)


if __name__ == "__main__":
    main()
