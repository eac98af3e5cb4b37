"""The outbox task backend and the batch worker that drains it.

With `TASKS_BACKEND=connectors.outbox.OutboxBackend` the Delivery row *is* the queued task:
enqueueing `deliver` stores nothing more, and `python manage.py send_worker` claims due deliveries
in batches, sends them over connections it keeps open, and records each outcome. That saves the
task row, its polling and its bookkeeping per message, which is most of the cost of a generic
queue when the work itself is one SMTP transaction.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from typing import Any

from django.db import close_old_connections, connection
from django.tasks.backends.base import BaseTaskBackend
from django.tasks.base import Task, TaskResult, TaskResultStatus
from django.tasks.exceptions import InvalidTask
from django.utils import timezone

from .delivery import (
    AttemptOutcome,
    RetryPolicy,
    claim_batch,
    close_idle_transports,
    close_transports,
    record,
    recover,
    release,
    renew_leases,
    run_attempt,
    send_timeout,
    worker_name,
)
from .models import Delivery, DeliveryAttempt
from .transports import TransportError

logger = logging.getLogger(__name__)


class OutboxBackend(BaseTaskBackend):
    """A task backend for `connectors.tasks.deliver` only: the Delivery table is its queue."""

    supports_defer = True

    def enqueue(self, task: Task, args: Any, kwargs: Any) -> TaskResult:
        self.validate_task(task)
        if task.module_path != "connectors.tasks.deliver":
            raise InvalidTask(
                f"The outbox backend runs only connectors.tasks.deliver, not {task.module_path}: "
                "give other tasks a backend of their own in TASKS."
            )
        return TaskResult(
            task=task,
            # The delivery is the task: its id says which one (and costs no random draw, which
            # get_random_string() makes per character, on every message accepted).
            id=str(args[0]) if args else uuid.uuid4().hex,
            status=TaskResultStatus.READY,
            enqueued_at=timezone.now(),
            started_at=None,
            last_attempted_at=None,
            finished_at=None,
            args=args,
            kwargs=kwargs,
            backend=self.alias,
            errors=[],
            worker_ids=[],
        )


class SendWorker:
    """Claim due deliveries in batches and send them, until told to stop.

    With `threads` above one, that many loops run side by side in this process, each with its
    own database connection, claims and SMTP connections: while one waits for a server's reply
    or for the database, another renders and sends, so the process keeps a core busy instead of
    half of one.
    """

    def __init__(
        self,
        *,
        batch_size: int = 50,
        interval: float = 0.05,
        recover_every: float = 30.0,
        flush_every: int = 10,
        flush_after: float = 0.05,
        threads: int = 1,
        gather: float = 0.02,
    ) -> None:
        self.batch_size = batch_size
        self.flush_every = flush_every
        self.flush_after = flush_after
        self.interval = interval
        self.recover_every = recover_every
        self.threads = max(1, threads)
        self.gather = gather
        self.running = True
        self.sent = 0
        self._count = threading.Lock()
        self._failure: BaseException | None = None

    def run(self, *, max_idle: float | None = None) -> None:
        """Work until stop() is called, or until idle for `max_idle` seconds."""
        helpers = [
            threading.Thread(target=self._helper, args=(max_idle,), name=f"send-{n}", daemon=True)
            for n in range(1, self.threads)
        ]
        for helper in helpers:
            helper.start()
        try:
            self._loop(max_idle, recovers=True)
        finally:
            self.running = False  # should this loop fail, the helpers stop too
            for helper in helpers:
                helper.join()
        if self._failure is not None:
            # The whole worker stops, with an error, so that its supervisor starts it afresh
            # rather than a worker going on short of a thread. What the failed thread held
            # is picked up again when its lease lapses, as after any crash.
            raise self._failure

    def _helper(self, max_idle: float | None) -> None:
        try:
            self._loop(max_idle, recovers=False)
        except BaseException as exc:
            logger.exception("a sending thread failed: the worker stops")
            self._failure = exc
            self.running = False
        finally:
            connection.close()

    def _loop(self, max_idle: float | None, *, recovers: bool) -> None:
        policy = RetryPolicy.from_settings()
        lease_seconds = policy.lease.total_seconds()
        name = worker_name()
        last_recovery = 0.0 if recovers else math.inf
        idle_since = time.monotonic()
        try:
            while self.running:
                now = time.monotonic()
                if now - last_recovery >= self.recover_every:
                    # 1. Leases of dead workers lapse; put their deliveries back in the queue.
                    recovered = recover()
                    if recovered:
                        logger.info("requeued %s stranded deliveries", recovered)
                    last_recovery = now
                # 2. Claim a batch; 3. send each over a kept connection and record the outcome.
                batch, token = claim_batch(name, policy, self.batch_size)
                pending: list[AttemptOutcome] = []
                flushed = leased = time.monotonic()
                # Connectors whose server did not answer at all in this batch: the rest of
                # their deliveries go back to the queue untried, so that one stuck server
                # holds up a worker for one send, not for every message of the batch.
                stalled: dict[Any, Delivery] = {}
                untried: list[Delivery] = []
                for index, delivery in enumerate(batch):
                    if delivery.connector_id in stalled:
                        untried.append(delivery)
                        continue
                    # Each send ends within CONNECTORS_SEND_TIMEOUT; renewing while at least
                    # two of those are left on the lease means it never lapses mid-send.
                    if time.monotonic() - leased > lease_seconds - 2 * send_timeout():
                        renew_leases(untried + batch[index:], token, policy)
                        leased = time.monotonic()
                    outcome = run_attempt(delivery, policy)
                    pending.append(outcome)
                    if outcome.outcome == DeliveryAttempt.Outcome.RETRY and no_answer(outcome):
                        stalled[delivery.connector_id] = delivery
                    # 4. Record outcomes every few messages or milliseconds: one transaction
                    #    for several rows, yet only those few can be sent twice after a crash.
                    if (
                        len(pending) >= self.flush_every
                        or time.monotonic() - flushed >= self.flush_after
                    ):
                        self._record(pending, token, name, policy)
                        pending, flushed = [], time.monotonic()
                self._record(pending, token, name, policy)
                for connector_id, failed in stalled.items():
                    # Back to the queue, due when the failed one is retried (record() set it).
                    waiting = [d for d in untried if d.connector_id == connector_id]
                    release(waiting, token, failed.next_attempt_at)
                if batch:
                    idle_since = time.monotonic()
                    if len(batch) < self.batch_size:
                        # The queue is drained: let messages gather for a moment, so that the
                        # next claim and its flush carry several of them rather than one each.
                        time.sleep(self.gather)
                    continue
                if max_idle is not None and time.monotonic() - idle_since >= max_idle:
                    return
                close_idle_transports()
                close_old_connections()
                time.sleep(self.interval)
        finally:
            close_transports()

    def _record(
        self, pending: list[AttemptOutcome], token: str, name: str, policy: RetryPolicy
    ) -> None:
        record(pending, token, name, policy)
        with self._count:
            self.sent += len(pending)

    def stop(self, *args: Any) -> None:
        """Finish the current batch, then return from run()."""
        self.running = False


def no_answer(outcome: AttemptOutcome) -> bool:
    """Tell whether an attempt failed without any answer from the server (down, or stuck)."""
    error = outcome.error
    return isinstance(error, TransportError) and not error.permanent and error.code is None
