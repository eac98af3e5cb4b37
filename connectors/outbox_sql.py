"""The send path's statements over many deliveries, written as SQL rather than built by the ORM.

A worker records the outcomes of its sends every few messages; building those statements from
query expressions cost more CPU than the sends themselves. The SQL here is what the ORM would
produce (the same CASE, the same casts where PostgreSQL needs them), with values prepared by
each field, so it holds on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.db import connections, router, transaction
from django.db.models import Field, Model

from .models import (
    Connector,
    Delivery,
    DeliveryAttempt,
    DeliverySource,
    DeliveryStatus,
    placeholders,
)


def _connection(model: type[Model]) -> Any:
    return connections[router.db_for_write(model)]


def record_outcomes(
    deliveries: Sequence[Delivery],
    fields: Sequence[str],
    token: str,
    attempts: Sequence[DeliveryAttempt],
) -> set[Any]:
    """Store `fields` of the deliveries whose lease `token` holds, and their attempts.

    Fenced: only the holder of a lease records; a lapsed lease means another worker has that
    delivery now, and its record is the one that counts. Return the keys of those recorded.
    """
    if not deliveries:
        return set()
    conn = _connection(Delivery)
    qn = conn.ops.quote_name
    pk = qn(Delivery._meta.pk.column)
    update, update_params = _fenced_update(conn, deliveries, fields, token)
    if conn.vendor == "postgresql":
        # One statement, so one round trip and no transaction to open and commit: the UPDATE,
        # the attempts of the rows it updated, and a commit that does not wait for the disk
        # (see docs/decisions.md: a crash of the database server itself may forget the last
        # outcomes, and those deliveries are sent again; at least once holds).
        values, value_params = _values(conn, attempts, cast=True)
        columns = _columns(conn, DeliveryAttempt)
        delivery_id = qn(DeliveryAttempt._meta.get_field("delivery").column)
        sql = (
            "WITH relaxed AS (SELECT set_config('synchronous_commit', 'off', true) AS off), "  # noqa: S608
            f"updated AS ({update} RETURNING {pk}), "
            f"logged AS (INSERT INTO {qn(DeliveryAttempt._meta.db_table)} ({columns}) "
            f"SELECT {columns} FROM (VALUES {values}) AS v ({columns}) "
            f"WHERE v.{delivery_id} IN (SELECT {pk} FROM updated)) "
            f"SELECT updated.{pk} FROM updated, relaxed"
        )
        with conn.cursor() as cursor:
            cursor.execute(sql, [*update_params, *value_params])
            return {row[0] for row in cursor.fetchall()}
    # SQLite: transactions are IMMEDIATE (console/settings.py), so nobody writes between the
    # look at the leases and the writes.
    with transaction.atomic(using=conn.alias), conn.cursor() as cursor:
        keys = [Delivery._meta.pk.get_db_prep_value(d.pk, conn) for d in deliveries]
        cursor.execute(
            f"SELECT {pk} FROM {qn(Delivery._meta.db_table)} "  # noqa: S608
            f"WHERE {pk} IN ({', '.join(['%s'] * len(keys))}) AND {qn('lease_owner')} = %s",
            [*keys, token],
        )
        owned = {Delivery._meta.pk.to_python(row[0]) for row in cursor.fetchall()}
        if owned:
            cursor.execute(update, update_params)
            insert_rows([a for a in attempts if a.delivery_id in owned])
    return owned


def insert_rows(objects: Sequence[Model]) -> None:
    """INSERT new instances of one model in one statement (their ids are not read back)."""
    if not objects:
        return
    model = type(objects[0])
    conn = _connection(model)
    values, params = _values(conn, objects, cast=False)
    sql = (
        f"INSERT INTO {conn.ops.quote_name(model._meta.db_table)} "  # noqa: S608 (our names)
        f"({_columns(conn, model)}) VALUES {values}"
    )
    with conn.cursor() as cursor:
        cursor.execute(sql, params)


def _fields(model: type[Model]) -> list[Field[Any, Any]]:
    return [f for f in model._meta.local_concrete_fields if not f.primary_key]


def _columns(conn: Any, model: type[Model]) -> str:
    return ", ".join(conn.ops.quote_name(f.column) for f in _fields(model))


def _values(conn: Any, objects: Sequence[Model], *, cast: bool) -> tuple[str, list[Any]]:
    """Return `(…), (…)` rows of placeholders for the objects, and their prepared values.

    With `cast`, each non-text value is cast to its column's type: outside an INSERT's own
    VALUES, PostgreSQL would read the values as text.
    """
    fields = _fields(type(objects[0]))
    row = f"({placeholders(fields, conn, cast=cast)})"
    params = [f.get_db_prep_save(f.pre_save(obj, True), conn) for obj in objects for f in fields]
    return ", ".join([row] * len(objects)), params


def _fenced_update(
    conn: Any, deliveries: Sequence[Delivery], fields: Sequence[str], token: str
) -> tuple[str, list[Any]]:
    """Return an UPDATE of `fields` for the deliveries whose lease `token` holds, and its values.

    A value shared by every row is set as it is; the others by a CASE on the key.
    """
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
    return sql, [*params, *ids, token]


def claim_due(token: str, now: Any, lease_expires_at: Any, limit: int) -> list[Delivery]:
    """Lease up to `limit` due deliveries to `token`, oldest first, and return them.

    One statement: on PostgreSQL the due rows are locked with SKIP LOCKED, so that workers
    claim side by side; SQLite has one writer at a time, which serialises claims just as well.
    It returns the claimed rows themselves, each with its connector's version
    (`connector_version`: updated_at and enabled, or None) for the caller to check its own copy
    of the connector against, so that a claim is one round trip.
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
    connectors = qn(Connector._meta.db_table)
    columns = ", ".join(f"{table}.{qn(f.column)}" for f in Delivery._meta.concrete_fields)
    version = ", ".join(
        f"(SELECT c.{qn(name)} FROM {connectors} c WHERE c.{qn('id')} = "  # noqa: S608
        f"{table}.{qn('connector_id')}) AS {qn('connector_' + name)}"
        for name in ("updated_at", "enabled")
    )
    sql = (
        f"UPDATE {table} SET {qn('status')} = %s, {qn('lease_owner')} = %s, "  # noqa: S608
        f"{qn('lease_expires_at')} = %s, {qn('attempts')} = {qn('attempts')} + 1 "
        f"WHERE {which} RETURNING {columns}, {version}"
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
    # A raw queryset runs the statement and makes Delivery instances of its rows, each value
    # read as its field reads it; the two extra columns become attributes.
    claimed = list(Delivery.objects.using(conn.alias).raw(sql, params))
    column = Connector._meta.get_field("updated_at").cached_col
    converters = conn.ops.get_db_converters(column)  # SQLite's text into an aware datetime
    for delivery in claimed:
        updated_at, enabled = delivery.connector_updated_at, delivery.connector_enabled
        for convert in converters:
            updated_at = convert(updated_at, column, conn)
        delivery.connector_version = None if updated_at is None else (updated_at, bool(enabled))
    claimed.sort(key=lambda d: (d.next_attempt_at is None, d.next_attempt_at, d.created_at))
    return claimed
