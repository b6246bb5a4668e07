"""A second baseline for bench/throughput.py: the least a durable webhook handler does.

DESIGN.md's reference handler: check the token, insert the raw payload as one row of a
one-table store keyed by message id, commit, answer 200. Nothing else: no validation of
the event, no delivery rows, no metrics, no log line, one connection per thread and the
database's own locking. The connector's figure over this one is what its guarantees
cost; this one's figure over bare Flask is what a commit costs on the machine.

    REFERENCE_STORE_URL=sqlite:///path.db | postgresql+psycopg://...  gunicorn reference_app:app
    (the table made first: reference_app.create_table(url))
"""
import json
import os
import threading
import time

from flask import Flask, request

TOKEN = os.environ.get("REFERENCE_TOKEN", "bench-token")
TABLE = "bench_reference"

app = Flask(__name__)
_local = threading.local()


def connect(url: str):
    """(DB-API connection in autocommit, its INSERT statement) for ``url``."""
    if url.startswith("sqlite"):
        import sqlite3
        conn = sqlite3.connect(url.split("///", 1)[1], isolation_level=None, timeout=10)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")  # as the connector's store
        marker = "?"
    else:
        import psycopg
        conn = psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True)
        marker = "%s"
    return conn, (f"INSERT INTO {TABLE} (dedup_key, payload, received_at) VALUES ({marker}, {marker}, {marker})"
                  " ON CONFLICT (dedup_key) DO NOTHING")


def create_table(url: str) -> None:
    """Run once before the server starts (its processes would race to create it)."""
    conn, _ = connect(url)
    serial = "INTEGER" if url.startswith("sqlite") else "BIGSERIAL"
    conn.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} (id {serial} PRIMARY KEY,"
                 " dedup_key TEXT NOT NULL UNIQUE, payload TEXT NOT NULL, received_at FLOAT NOT NULL)")
    conn.close()


def stored(url: str) -> int:
    conn, _ = connect(url)
    try:
        return conn.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0]
    finally:
        conn.close()


@app.post("/webhooks/aircall")
def webhook():
    raw = request.get_data()
    try:
        body = json.loads(raw)
        key = f"aircall:{body['data']['id']}:{body['event']}"
    except (ValueError, KeyError, TypeError):
        return "", 400
    if body.get("token") != TOKEN:
        return "", 401
    if not hasattr(_local, "conn"):
        _local.conn, _local.insert = connect(os.environ["REFERENCE_STORE_URL"])
    _local.conn.execute(_local.insert, (key, raw.decode("utf-8"), time.time()))  # autocommit
    return "", 200
