#!/usr/bin/env python3
"""A wire-compatible fake of the Cloud Firestore REST API v1, for the tests Google's own
emulator cannot serve: injected outages (every request 503 on demand), malformed documents
planted as they are, and request counts. Every other Firestore test runs against the
emulator (tests/firestore.rs).

Implements exactly the subset mediarelay uses, to the formats in shared/google-wire.md, and
rejects what the real API would reject (unknown fields, bad paths, malformed values) with
Google's error bodies. Documents live in memory. Timestamps are RFC 3339 with nanoseconds;
integers travel as strings.

    fake_firestore.py --port N [--project P]

Test-only control endpoints (not part of the API):
    POST /__control/down   every API request answers 503 UNAVAILABLE until /__control/up
    POST /__control/up
    GET  /__control/stats  {"get": n, "list": n, "runQuery": n, "commit": n}
    POST /__control/raw?name=DOC   store the request body as the document's raw "fields"
                                   (lets tests plant malformed documents)
    POST /__control/bulk           body [{"name": DOC, "fields": {...}}, ...]: store them all
"""

import argparse
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse

LOCK = threading.RLock()
DOCS = {}  # full name -> {"fields": {...}, "createTime": str, "updateTime": str}
STATS = {"get": 0, "list": 0, "runQuery": 0, "commit": 0, "batchGet": 0}
DOWN = [False]
LAST_NS = [0]

VALUE_KEYS = {"nullValue", "booleanValue", "integerValue", "doubleValue", "timestampValue",
              "stringValue", "bytesValue", "referenceValue", "geoPointValue", "arrayValue",
              "mapValue"}
TS_RE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?Z$")


class ApiError(Exception):
    def __init__(self, code, status, message):
        super().__init__(message)
        self.code, self.status, self.message = code, status, message


def bad(msg):
    return ApiError(400, "INVALID_ARGUMENT", msg)


def now_ns():
    with LOCK:
        t = max(time.time_ns(), LAST_NS[0] + 1000)
        LAST_NS[0] = t
        return t


def fmt_ts(ns):
    secs, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{frac:09d}Z"


def parse_ts(s):
    m = TS_RE.match(s) if isinstance(s, str) else None
    if not m:
        raise bad(f"invalid timestamp {s!r}")
    y, mo, d, h, mi, se, frac = m.groups()
    import calendar
    secs = calendar.timegm((int(y), int(mo), int(d), int(h), int(mi), int(se), 0, 0, 0))
    return secs * 1_000_000_000 + int((frac or "0").ljust(9, "0"))


def check_value(v, path):
    if not isinstance(v, dict) or len(v) != 1 or next(iter(v)) not in VALUE_KEYS:
        raise bad(f"invalid value at {path}")
    k, x = next(iter(v.items()))
    if k == "integerValue":
        if not isinstance(x, str) or not re.fullmatch(r"-?\d+", x):
            raise bad(f"integerValue must be a decimal string at {path}")
    elif k == "timestampValue":
        parse_ts(x)
    elif k == "booleanValue" and not isinstance(x, bool):
        raise bad(f"booleanValue must be a bool at {path}")
    elif k == "stringValue" and not isinstance(x, str):
        raise bad(f"stringValue must be a string at {path}")
    elif k == "arrayValue":
        if not isinstance(x, dict) or set(x) - {"values"}:
            raise bad(f"invalid arrayValue at {path}")
        for i, e in enumerate(x.get("values", [])):
            check_value(e, f"{path}[{i}]")
    elif k == "mapValue":
        if not isinstance(x, dict) or set(x) - {"fields"}:
            raise bad(f"invalid mapValue at {path}")
        for fk, fv in x.get("fields", {}).items():
            check_value(fv, f"{path}.{fk}")


def only(obj, allowed, where):
    if not isinstance(obj, dict):
        raise bad(f"{where} must be an object")
    extra = set(obj) - set(allowed)
    if extra:
        raise bad(f'Invalid JSON payload received. Unknown name "{sorted(extra)[0]}" at \'{where}\'')


def doc_json(name, d):
    out = {"name": name, "createTime": d["createTime"], "updateTime": d["updateTime"]}
    if d["fields"]:
        out["fields"] = d["fields"]
    return out


def value_key(v):
    """Comparable key of a Value for ordering (timestamps, strings, integers, references)."""
    k, x = next(iter(v.items()))
    if k == "timestampValue":
        return (3, parse_ts(x))
    if k == "integerValue":
        return (2, int(x))
    if k in ("stringValue", "referenceValue"):
        return (4, x)
    if k == "booleanValue":
        return (1, x)
    if k == "nullValue":
        return (0, 0)
    return (9, json.dumps(x, sort_keys=True))


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fake-firestore"

    def log_message(self, fmt, *args):  # one line per request, like a real access log
        print("%s %s" % (self.command, self.path), flush=True)

    def reply(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise bad("Invalid JSON payload received.")

    def handle_any(self):
        try:
            u = urlparse(self.path)
            if u.path.startswith("/__control/"):
                return self.control(u)
            if DOWN[0]:
                raise ApiError(503, "UNAVAILABLE", "The service is currently unavailable.")
            if self.headers.get("Authorization") != "Bearer owner":
                raise ApiError(403, "PERMISSION_DENIED", "Missing or insufficient permissions.")
            self.route(u)
        except ApiError as e:
            self.reply(e.code, {"error": {"code": e.code, "message": e.message, "status": e.status}})

    do_GET = do_POST = do_PATCH = do_DELETE = handle_any

    def control(self, u):
        what = u.path[len("/__control/"):]
        if what == "down":
            DOWN[0] = True
            return self.reply(200, {})
        if what == "up":
            DOWN[0] = False
            return self.reply(200, {})
        if what == "stats":
            with LOCK:
                return self.reply(200, dict(STATS))
        if what == "bulk":
            docs = self.body()
            t = fmt_ts(now_ns())
            with LOCK:
                for d in docs:
                    DOCS[d["name"]] = {"fields": d["fields"], "createTime": t, "updateTime": t}
            return self.reply(200, {})
        if what == "raw":
            name = parse_qs(u.query)["name"][0]
            fields = self.body()
            t = fmt_ts(now_ns())
            with LOCK:
                DOCS[name] = {"fields": fields, "createTime": t, "updateTime": t}
            return self.reply(200, {})
        raise ApiError(404, "NOT_FOUND", "no such control")

    def route(self, u):
        m = re.fullmatch(r"/v1/projects/([^/]+)/databases/([^/]+)/documents(.*)", u.path)
        if not m:
            raise ApiError(404, "NOT_FOUND", f"Unknown path {u.path}")
        project, database, rest = m.groups()
        database = unquote(database)
        root = f"projects/{project}/databases/{database}/documents"
        q = parse_qs(u.query, keep_blank_values=True)
        if rest == ":runQuery" and self.command == "POST":
            return self.run_query(root, self.body())
        if rest == ":runAggregationQuery" and self.command == "POST":
            return self.run_aggregation(root, self.body())
        if rest == ":commit" and self.command == "POST":
            return self.commit(root, self.body())
        parts = [unquote(p) for p in rest.split("/") if p]
        if len(parts) == 1 and self.command == "GET":
            return self.list(root, parts[0], q)
        if len(parts) == 2 and self.command == "GET":
            for k in q:
                if k not in ("mask.fieldPaths", "readTime"):
                    raise bad(f'Invalid JSON payload received. Unknown name "{k}"')
            with LOCK:
                STATS["get"] += 1
                d = DOCS.get(f"{root}/{parts[0]}/{parts[1]}")
            if d is None:
                raise ApiError(404, "NOT_FOUND", f"Document \"{root}/{parts[0]}/{parts[1]}\" not found.")
            return self.reply(200, doc_json(f"{root}/{parts[0]}/{parts[1]}", d))
        if len(parts) == 2 and self.command == "DELETE":
            with LOCK:
                DOCS.pop(f"{root}/{parts[0]}/{parts[1]}", None)
            return self.reply(200, {})
        raise ApiError(404, "NOT_FOUND", f"Unknown path {u.path}")

    def list(self, root, coll, q):
        for k in q:
            if k not in ("pageSize", "pageToken", "orderBy", "mask.fieldPaths", "readTime"):
                raise bad(f'Invalid JSON payload received. Unknown name "{k}"')
        size = int(q.get("pageSize", ["100"])[0])
        if size < 1:
            raise bad("pageSize must be positive")
        token = q.get("pageToken", [""])[0]
        prefix = f"{root}/{coll}/"
        with LOCK:
            STATS["list"] += 1
            names = sorted(n for n in DOCS if n.startswith(prefix) and "/" not in n[len(prefix):])
            if token:
                if token not in DOCS and not any(n > token for n in names):
                    raise bad("invalid page token")
                names = [n for n in names if n > token]
            page = names[:size]
            out = {}
            if page:
                out["documents"] = [doc_json(n, DOCS[n]) for n in page]
            if len(names) > size:
                out["nextPageToken"] = page[-1]
        return self.reply(200, out)

    def run_aggregation(self, root, body):
        only(body, ["structuredAggregationQuery", "readTime"], "")
        saq = body.get("structuredAggregationQuery")
        only(saq, ["structuredQuery", "aggregations"], "structured_aggregation_query")
        aggs = saq.get("aggregations") or []
        if len(aggs) != 1 or "count" not in aggs[0]:
            raise bad("only one count aggregation is supported here")
        alias = aggs[0].get("alias", "field_1")
        items, read_time = self.select(root, saq["structuredQuery"])
        return self.reply(200, [{"result": {"aggregateFields": {
            alias: {"integerValue": str(len(items))}}}, "readTime": read_time}])

    def run_query(self, root, body):
        only(body, ["structuredQuery", "readTime"], "")
        items, read_time = self.select(root, body.get("structuredQuery"))
        out = [{"document": doc_json(n, d), "readTime": read_time} for n, d in items]
        if not out:
            out = [{"readTime": read_time}]
        return self.reply(200, out)

    def select(self, root, sq):
        """The documents a structured query selects, and the read time."""
        only(sq, ["from", "where", "orderBy", "limit", "startAt", "select", "offset", "endAt"], "structured_query")
        frm = sq.get("from")
        if not isinstance(frm, list) or len(frm) != 1:
            raise bad("from must name one collection")
        only(frm[0], ["collectionId", "allDescendants"], "structured_query.from[0]")
        coll = frm[0].get("collectionId")
        filters = []
        where = sq.get("where")
        if where is not None:
            only(where, ["fieldFilter", "compositeFilter"], "structured_query.where")
            if "fieldFilter" in where:
                filters.append(where["fieldFilter"])
            else:
                cf = where["compositeFilter"]
                only(cf, ["op", "filters"], "structured_query.where.composite_filter")
                if cf.get("op") != "AND":
                    raise bad("only AND is supported here")
                for f in cf["filters"]:
                    only(f, ["fieldFilter"], "filter")
                    filters.append(f["fieldFilter"])
        for f in filters:
            only(f, ["field", "op", "value"], "field_filter")
            only(f["field"], ["fieldPath"], "field_filter.field")
            if f["op"] not in ("LESS_THAN", "LESS_THAN_OR_EQUAL", "GREATER_THAN",
                               "GREATER_THAN_OR_EQUAL", "EQUAL", "NOT_EQUAL"):
                raise bad(f"unsupported op {f['op']}")
            check_value(f["value"], "field_filter.value")
        order = sq.get("orderBy", [])
        for o in order:
            only(o, ["field", "direction"], "order_by")
            only(o["field"], ["fieldPath"], "order_by.field")
            if o.get("direction", "ASCENDING") not in ("ASCENDING", "DESCENDING"):
                raise bad("bad direction")
        limit = sq.get("limit")
        if limit is not None and (not isinstance(limit, int) or limit < 0):
            raise bad("limit must be a non-negative integer")
        start = sq.get("startAt")
        if start is not None:
            only(start, ["values", "before"], "start_at")
            if len(start["values"]) > len(order):
                raise bad("too many cursor values")
            for v in start["values"]:
                check_value(v, "start_at.values")
                # As Google's emulator and service answer an empty document reference.
                ref = v.get("referenceValue") if isinstance(v, dict) else None
                if ref is not None and not ref.startswith("projects/"):
                    raise bad(f'Resource name "{ref}" lacks "projects" at index 0.')
        prefix = f"{root}/{coll}/"

        def field(name, doc, path):
            if path == "__name__":
                return {"referenceValue": name}
            return doc["fields"].get(path) if isinstance(doc["fields"], dict) else None

        def matches(name, doc):
            for f in filters:
                v = field(name, doc, f["field"]["fieldPath"])
                if v is None or not isinstance(v, dict) or len(v) != 1:
                    return False
                a, b = value_key(v), value_key(f["value"])
                if a[0] != b[0]:
                    return False
                op = f["op"]
                ok = {"LESS_THAN": a < b, "LESS_THAN_OR_EQUAL": a <= b, "GREATER_THAN": a > b,
                      "GREATER_THAN_OR_EQUAL": a >= b, "EQUAL": a == b, "NOT_EQUAL": a != b}[op]
                if not ok:
                    return False
            return True

        def sort_key(item):
            name, doc = item
            key = []
            for o in order:
                v = field(name, doc, o["field"]["fieldPath"])
                key.append(value_key(v) if isinstance(v, dict) and len(v) == 1 else (-1, 0))
            key.append((4, name))
            return tuple(key)

        with LOCK:
            STATS["runQuery"] += 1
            items = [(n, d) for n, d in DOCS.items()
                     if n.startswith(prefix) and "/" not in n[len(prefix):] and matches(n, d)]
            items.sort(key=sort_key)
            if start is not None:
                cursor = tuple(value_key(v) for v in start["values"])
                before = bool(start.get("before", False))
                def after_cursor(item):
                    k = sort_key(item)[:len(cursor)]
                    return k >= cursor if before else k > cursor
                items = [i for i in items if after_cursor(i)]
            if limit is not None:
                items = items[:limit]
            read_time = fmt_ts(now_ns())
        return items, read_time

    def commit(self, root, body):
        only(body, ["writes", "transaction"], "")
        db = root[: -len("/documents")]
        results = []
        with LOCK:
            STATS["commit"] += 1
        t_ns = now_ns()
        t = fmt_ts(t_ns)
        for i, w in enumerate(body.get("writes", [])):
            only(w, ["update", "delete", "updateMask", "updateTransforms", "currentDocument"], f"writes[{i}]")
            if "delete" in w:
                with LOCK:
                    DOCS.pop(w["delete"], None)
                results.append({"updateTime": t})
                continue
            upd = w.get("update")
            only(upd, ["name", "fields"], f"writes[{i}].update")
            name = upd["name"]
            if not name.startswith(root + "/"):
                raise bad(f"document name {name!r} is not in database {db}")
            fields = upd.get("fields", {})
            for k, v in fields.items():
                check_value(v, f"writes[{i}].update.fields.{k}")
            cur = w.get("currentDocument")
            with LOCK:
                existing = DOCS.get(name)
                if cur is not None:
                    only(cur, ["exists", "updateTime"], "current_document")
                    if cur.get("exists") is True and existing is None:
                        raise ApiError(404, "NOT_FOUND", f"No document to update: {name}")
                    if cur.get("exists") is False and existing is not None:
                        raise ApiError(409, "ALREADY_EXISTS", f"Document already exists: {name}")
                mask = w.get("updateMask")
                if mask is not None:
                    only(mask, ["fieldPaths"], "update_mask")
                    new = dict(existing["fields"]) if existing else {}
                    for p in mask["fieldPaths"]:
                        if p in fields:
                            new[p] = fields[p]
                        else:
                            new.pop(p, None)
                else:
                    new = dict(fields)
                transforms = []
                for tr in w.get("updateTransforms", []):
                    only(tr, ["fieldPath", "setToServerValue"], "field_transform")
                    if tr.get("setToServerValue") != "REQUEST_TIME":
                        raise bad("only REQUEST_TIME is supported here")
                    new[tr["fieldPath"]] = {"timestampValue": t}
                    transforms.append({"timestampValue": t})
                DOCS[name] = {"fields": new, "createTime": existing["createTime"] if existing else t,
                              "updateTime": t}
            results.append({"updateTime": t, "transformResults": transforms})
        return self.reply(200, {"writeResults": results, "commitTime": t})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args()
    srv = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    srv.daemon_threads = True
    print(f"fake firestore on 127.0.0.1:{args.port}", flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
