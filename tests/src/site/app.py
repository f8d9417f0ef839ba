"""The www.foobar.com application: a guest book behind nginx on each server.

Writes go to the database write VIP (the primary), reads to the read VIP (round robin over
replica and primary), both through foobar-lb. Every answer names the web server that ran it
and the database server that answered, so a user (and `cargo xtask run --check`) sees the
balancing at both tiers. Standard library plus PyMySQL (Debian python3-pymysql).

Usage: app.py NAME LISTEN_PORT WRITE_VIP READ_VIP
"""

import html
import json
import sys
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pymysql

NAME, PORT, WRITE_VIP, READ_VIP = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
DB = dict(user="app", password="app-secret", database="foobar", connect_timeout=5,
          read_timeout=5, write_timeout=5, autocommit=True)


def connect(vip):
    return pymysql.connect(host=vip, port=3306, **DB)


def read_entries(limit=20):
    """The newest entries and the database server (server_id) that answered. A read is
    retried once on a lost connection (a balancer or replica gone mid-query): it is safe to
    repeat, and the next connection is scheduled afresh."""
    try:
        return read_once(limit)
    except pymysql.err.OperationalError:
        return read_once(limit)


def read_once(limit):
    with connect(READ_VIP) as conn, conn.cursor() as cur:
        cur.execute("SELECT @@server_id")
        (server_id,) = cur.fetchone()
        cur.execute("SELECT id, text, web, created FROM entries ORDER BY id DESC LIMIT %s",
                    (limit,))
        rows = [dict(id=i, text=t, web=w, created=str(c)) for i, t, w, c in cur.fetchall()]
    return f"db{server_id}", rows


def write_entry(text):
    """Inserts an entry through the write VIP: its id and the server that took it."""
    with connect(WRITE_VIP) as conn, conn.cursor() as cur:
        cur.execute("SELECT @@server_id")
        (server_id,) = cur.fetchone()
        cur.execute("INSERT INTO entries (text, web) VALUES (%s, %s)", (text[:200], NAME))
        return f"db{server_id}", cur.lastrowid


class Handler(BaseHTTPRequestHandler):
    server_version = "foobar-app/1"

    def send(self, code, body, ctype="application/json", extra=()):
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Served-By", NAME)
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def fail(self, e):
        self.send(503, json.dumps(dict(web=NAME, error=str(e))) + "\n")

    def do_GET(self):
        path = urllib.parse.urlsplit(self.path).path
        if path == "/healthz":
            return self.send(200, "ok\n", "text/plain")
        if path == "/api/whoami":
            return self.send(200, json.dumps(dict(web=NAME)) + "\n")
        try:
            db, rows = read_entries()
        except Exception as e:  # the page says what failed rather than hanging
            return self.fail(e)
        if path == "/api/entries":
            return self.send(200, json.dumps(dict(web=NAME, read_from=db, entries=rows)) + "\n")
        if path != "/":
            return self.send(404, json.dumps(dict(web=NAME, error="not found")) + "\n")
        items = "".join(
            f"<li>{html.escape(r['text'])} <small>(via {r['web']}, {r['created']})</small></li>"
            for r in rows)
        page = (
            "<!doctype html><meta charset=utf-8><title>www.foobar.com</title>"
            "<h1>www.foobar.com</h1>"
            f"<p>Served by <b>{NAME}</b>; entries read from <b>{db}</b>.</p>"
            "<form method=post action=/sign><input name=text maxlength=200 required>"
            "<button>Sign the guest book</button></form>"
            f"<ul>{items}</ul>")
        self.send(200, page, "text/html; charset=utf-8")

    def do_POST(self):
        path = urllib.parse.urlsplit(self.path).path
        length = min(int(self.headers.get("Content-Length") or 0), 4096)
        body = self.rfile.read(length).decode(errors="replace")
        if path == "/sign":
            text = urllib.parse.parse_qs(body).get("text", [""])[0]
        elif path == "/api/entries":
            text = body
        else:
            return self.send(404, json.dumps(dict(web=NAME, error="not found")) + "\n")
        if not text.strip():
            return self.send(400, json.dumps(dict(web=NAME, error="empty entry")) + "\n")
        try:
            db, entry = write_entry(text.strip())
        except Exception as e:
            return self.fail(e)
        if path == "/sign":
            return self.send(303, "", "text/plain", [("Location", "/")])
        self.send(200, json.dumps(dict(web=NAME, written_to=db, id=entry)) + "\n")

    def log_message(self, fmt, *args):  # nginx logs requests; keep the app quiet
        pass


ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
