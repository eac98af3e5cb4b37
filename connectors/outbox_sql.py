"""The send path's statements over many deliveries, written as SQL rather than built by the ORM.

A worker records the outcomes of its sends every few messages; building those statements from
query expressions cost more CPU than the sends themselves. The SQL here is what the ORM would
produce (the same CASE, the same casts where PostgreSQL needs them), with values prepared by
each field, so it holds on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.db import connections, router
from django.db.models import Field, Model

from .models import Delivery, DeliverySource, DeliveryStatus


def _connection(model: type[Model]) -> Any:
    return connections[router.db_for_write(model)]


def insert_rows(objects: Sequence[Model]) -> None:
    """INSERT new instances of one model in one statement (their ids are not read back)."""
    if not objects:
        return
    model = type(objects[0])
    conn = _connection(model)
    qn = conn.ops.quote_name
    fields = [f for f in model._meta.local_concrete_fields if not f.primary_key]
    row = f"({', '.join(['%s'] * len(fields))})"
    sql = (
        f"INSERT INTO {qn(model._meta.db_table)} "  # noqa: S608 (our table's names only)
        f"({', '.join(qn(f.column) for f in fields)}) VALUES {', '.join([row] * len(objects))}"
    )
    params = [f.get_db_prep_save(f.pre_save(obj, True), conn) for obj in objects for f in fields]
    with conn.cursor() as cursor:
        cursor.execute(sql, params)


def update_fenced(deliveries: Sequence[Delivery], fields: Sequence[str], token: str) -> int:
    """Store `fields` of the deliveries whose lease `token` holds, in one UPDATE; return how many.

    A value shared by every row is set as it is; the others by a CASE on the key.
    """
    if not deliveries:
        return 0
    conn = _connection(Delivery)
    qn = conn.ops.quote_name
    pk: Field[Any, Any] = Delivery._meta.pk  # type: ignore[assignment]
    ids = [pk.get_db_prep_value(d.pk, conn) for d in deliveries]
    assignments: list[str] = []
    params: list[Any] = []
    for name in fields:
        field = Delivery._meta.get_field(name)
        assert isinstance(field, Field)
        values = [field.get_db_prep_save(getattr(d, field.attname), conn) for d in deliveries]
        if all(value == values[0] for value in values):
            assignments.append(f"{qn(field.column)} = %s")
            params.append(values[0])
            continue
        case = f"CASE {qn(pk.column)} {' '.join(['WHEN %s THEN %s'] * len(values))} END"
        if conn.features.requires_casted_case_in_updates:
            # As bulk_update() does: PostgreSQL cannot always infer the type of a CASE.
            case = f"CAST({case} AS {field.cast_db_type(conn)})"
        assignments.append(f"{qn(field.column)} = {case}")
        for key, value in zip(ids, values, strict=True):
            params += [key, value]
    sql = (
        f"UPDATE {qn(Delivery._meta.db_table)} SET {', '.join(assignments)} "  # noqa: S608
        f"WHERE {qn(pk.column)} IN ({', '.join(['%s'] * len(ids))}) AND {qn('lease_owner')} = %s"
    )
    with conn.cursor() as cursor:
        cursor.execute(sql, [*params, *ids, token])
        return int(cursor.rowcount)


def claim_due(token: str, now: Any, lease_expires_at: Any, limit: int) -> list[Any]:
    """Lease up to `limit` due deliveries to `token`, oldest first; return their ids.

    One statement: on PostgreSQL the due rows are locked with SKIP LOCKED, so that workers
    claim side by side; SQLite has one writer at a time, which serialises claims just as well.
    """
    conn = _connection(Delivery)
    qn = conn.ops.quote_name
    table = qn(Delivery._meta.db_table)
    datetime = Delivery._meta.get_field("next_attempt_at")
    moment = datetime.get_db_prep_value(now, conn)
    due = (
        f"SELECT {qn('id')} FROM {table} WHERE "  # noqa: S608 (our table's names only)
        f"({qn('status')} = %s AND {qn('next_attempt_at')} <= %s) OR "
        f"({qn('status')} = %s AND {qn('lease_expires_at')} < %s AND {qn('source')} <> %s) "
        f"ORDER BY {qn('next_attempt_at')} LIMIT %s"
    )
    if conn.vendor == "postgresql":
        # = ANY(ARRAY(…)) runs the locking subquery once, whatever plan the UPDATE gets.
        which = f"{qn('id')} = ANY(ARRAY({due} FOR UPDATE SKIP LOCKED))"
    else:
        which = f"{qn('id')} IN ({due})"
    sql = (
        f"UPDATE {table} SET {qn('status')} = %s, {qn('lease_owner')} = %s, "  # noqa: S608
        f"{qn('lease_expires_at')} = %s, {qn('attempts')} = {qn('attempts')} + 1 "
        f"WHERE {which} RETURNING {qn('id')}"
    )
    params = [
        DeliveryStatus.SENDING,
        token,
        datetime.get_db_prep_value(lease_expires_at, conn),
        DeliveryStatus.QUEUED,
        moment,
        DeliveryStatus.SENDING,
        moment,
        DeliverySource.TEST,
        limit,
    ]
    with conn.cursor() as cursor:
        cursor.execute(sql, params)
        return [row[0] for row in cursor.fetchall()]
