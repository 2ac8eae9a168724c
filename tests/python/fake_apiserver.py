"""A stand-in for the Kubernetes API server, for the daemon's end-to-end test.

There is no cluster on the test machines, so the daemon's `run --kube` is
pointed (through a kubeconfig) at this HTTP server. It speaks the parts of
the API the daemon uses, the way the real server does:

- LIST and WATCH (chunked, one JSON event per line, resourceVersion
  ordering, `fieldSelector=spec.nodeName=...` on Pods) of QoSClaims,
  Namespaces (cluster-scoped; PUT them under any namespace segment),
  VirtualDatabases and Pods, cluster-wide or per namespace;
- server-side apply of `qosclaims/{name}/status`, merging `status.nodes`
  as the list-map keyed by `node` the CRD declares, and JSON merge patches
  (RFC 7386) of it, echoing the change to watchers as MODIFIED, like the
  real server;
- server-side apply of `qosnodereports/{name}` (create or update), and
  LIST/WATCH of them;
- GET of a Node; GET, POST (409 AlreadyExists) and PUT (409 Conflict on a
  stale resourceVersion) of `coordination.k8s.io` Leases.

The test drives it through `/control/...`:
  PUT    /control/{plural}/{namespace}/{name}   create or replace an object
  DELETE /control/{plural}/{namespace}/{name}   delete it
  GET    /control/requests                      every API request seen
  GET    /control/patches                       every status apply seen
  GET    /control/objects/{plural}              the stored objects
  PUT    /control/fail-reports {"count": N}      fail the next N report applies
                                                with 500, as an overloaded server

Usage: fake_apiserver.py  (prints the port it listens on, then serves)
"""

import copy
import json
import re
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

GROUP = "core.database-mesh.io/v1alpha1"
KINDS = {
    "pods": ("v1", "Pod"),
    "namespaces": ("v1", "Namespace"),
    "qosclaims": (GROUP, "QoSClaim"),
    "virtualdatabases": (GROUP, "VirtualDatabase"),
    "qosnodereports": (GROUP, "QoSNodeReport"),
    "nodes": ("v1", "Node"),
    "leases": ("coordination.k8s.io/v1", "Lease"),
}
CLUSTER_SCOPED = ("namespaces", "nodes")
COLLECTION = re.compile(
    r"^/(?:api/v1|apis/core\.database-mesh\.io/v1alpha1)"
    r"(?:(?:/namespaces/(?P<ns>[^/]+))?/(?P<plural>pods|qosclaims|virtualdatabases|qosnodereports)"
    r"|/(?P<cluster>namespaces))$"
)
STATUS = re.compile(
    r"^/apis/core\.database-mesh\.io/v1alpha1/namespaces/(?P<ns>[^/]+)"
    r"/qosclaims/(?P<name>[^/]+)/status$"
)
REPORT = re.compile(
    r"^/apis/core\.database-mesh\.io/v1alpha1/namespaces/(?P<ns>[^/]+)"
    r"/qosnodereports/(?P<name>[^/]+)$"
)
NODE = re.compile(r"^/api/v1/nodes/(?P<name>[^/]+)$")
LEASES = re.compile(
    r"^/apis/coordination\.k8s\.io/v1/namespaces/(?P<ns>[^/]+)/leases(?:/(?P<name>[^/]+))?$"
)
CONTROL = re.compile(r"^/control/(?P<plural>[a-z]+)/(?P<ns>[^/]+)/(?P<name>[^/]+)$")


class Store:
    def __init__(self):
        self.lock = threading.Condition()
        self.version = 100
        self.objects = {plural: {} for plural in KINDS}
        self.events = []  # (resourceVersion, plural, type, object)
        self.requests = []
        self.patches = []
        self.failing_report_applies = 0

    def put(self, plural, ns, name, obj, kind=None):
        with self.lock:
            self.version += 1
            api_version, type_name = KINDS[plural]
            old = self.objects[plural].get((ns, name))
            obj = copy.deepcopy(obj)
            obj["apiVersion"] = api_version
            obj["kind"] = type_name
            meta = obj.setdefault("metadata", {})
            meta.update(name=name, resourceVersion=str(self.version))
            if plural not in CLUSTER_SCOPED:
                meta["namespace"] = ns
            meta.setdefault("uid", f"uid-{plural}-{ns}-{name}")
            meta.setdefault("creationTimestamp", "2026-11-21T04:00:00Z")
            if plural == "qosclaims":
                generation = (old or {}).get("metadata", {}).get("generation", 0)
                if old is None or old.get("spec") != obj.get("spec"):
                    generation += 1
                meta["generation"] = generation
                if old is not None and "status" in old and "status" not in obj:
                    obj["status"] = old["status"]
            self.objects[plural][(ns, name)] = obj
            event = kind or ("ADDED" if old is None else "MODIFIED")
            self.events.append((self.version, plural, event, copy.deepcopy(obj)))
            self.lock.notify_all()
            return obj

    def delete(self, plural, ns, name):
        with self.lock:
            obj = self.objects[plural].pop((ns, name), None)
            if obj is None:
                return None
            self.version += 1
            obj["metadata"]["resourceVersion"] = str(self.version)
            self.events.append((self.version, plural, "DELETED", copy.deepcopy(obj)))
            self.lock.notify_all()
            return obj


STORE = Store()


def merge_patch(target, patch):
    """RFC 7386: objects merge key by key, null removes, the rest replaces."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def selector_matches(selector, obj):
    """Only `spec.nodeName` is supported, as on the real server for Pods."""
    if not selector:
        return True
    for term in selector.split(","):
        field, _, value = term.replace("==", "=").partition("=")
        if field != "spec.nodeName":
            raise ValueError(f'field label not supported: "{field}"')
        if obj.get("spec", {}).get("nodeName") != value:
            return False
    return True


def in_scope(obj, ns, selector):
    return (ns is None or obj["metadata"]["namespace"] == ns) and selector_matches(
        selector, obj
    )


def status_body(code, reason, message):
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # quiet: the test prints what it needs
        pass

    def reply(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def body(self):
        length = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(length) or b"null")

    def record(self, url):
        with STORE.lock:
            STORE.requests.append(
                {"method": self.command, "path": url.path, "query": url.query}
            )

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        if url.path == "/control/requests":
            with STORE.lock:
                return self.reply(200, STORE.requests)
        if url.path == "/control/patches":
            with STORE.lock:
                return self.reply(200, STORE.patches)
        if url.path.startswith("/control/objects/"):
            plural = url.path.rsplit("/", 1)[1]
            with STORE.lock:
                return self.reply(200, list(STORE.objects[plural].values()))
        self.record(url)
        single = NODE.match(url.path) or LEASES.match(url.path)
        if single and (NODE.match(url.path) or single["name"]):
            plural = "nodes" if NODE.match(url.path) else "leases"
            ns = "" if plural == "nodes" else single["ns"]
            with STORE.lock:
                obj = next(
                    (
                        o
                        for (n, name), o in STORE.objects[plural].items()
                        if name == single["name"] and (plural == "nodes" or n == ns)
                    ),
                    None,
                )
            if obj is None:
                return self.reply(
                    404,
                    status_body(404, "NotFound", f'{plural} "{single["name"]}" not found'),
                )
            return self.reply(200, obj)
        match = COLLECTION.match(url.path)
        if not match:
            return self.reply(404, status_body(404, "NotFound", f"no route {url.path}"))
        query = dict(urllib.parse.parse_qsl(url.query))
        plural, ns = match["plural"] or match["cluster"], match["ns"]
        selector = query.get("fieldSelector")
        try:
            selector_matches(selector, {})
        except ValueError as error:
            return self.reply(400, status_body(400, "BadRequest", str(error)))
        if query.get("watch") in ("true", "1"):
            return self.watch(plural, ns, selector, query)
        with STORE.lock:
            items = [
                o for o in STORE.objects[plural].values() if in_scope(o, ns, selector)
            ]
            version = str(STORE.version)
        api_version, kind = KINDS[plural]
        self.reply(
            200,
            {
                "apiVersion": api_version,
                "kind": f"{kind}List",
                "metadata": {"resourceVersion": version},
                "items": items,
            },
        )

    def watch(self, plural, ns, selector, query):
        since = int(query.get("resourceVersion") or 0)
        deadline = time.monotonic() + min(int(query.get("timeoutSeconds") or 290), 290)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            while time.monotonic() < deadline:
                with STORE.lock:
                    pending = [
                        (v, t, o)
                        for (v, p, t, o) in STORE.events
                        if p == plural and v > since and in_scope(o, ns, selector)
                    ]
                    if not pending:
                        STORE.lock.wait(timeout=1.0)
                        continue
                for version, kind, obj in pending:
                    line = json.dumps({"type": kind, "object": obj}).encode() + b"\n"
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                    since = version
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass

    def do_PATCH(self):
        url = urllib.parse.urlsplit(self.path)
        self.record(url)
        report = REPORT.match(url.path)
        if report:
            return self.apply_report(url, report["ns"], report["name"])
        match = STATUS.match(url.path)
        if not match:
            return self.reply(404, status_body(404, "NotFound", f"no route {url.path}"))
        ns, name = match["ns"], match["name"]
        body = self.body()
        content_type = self.headers.get("Content-Type")
        with STORE.lock:
            STORE.patches.append(
                {
                    "path": url.path,
                    "query": url.query,
                    "contentType": content_type,
                    "body": body,
                    "code": 200,
                }
            )
            obj = STORE.objects["qosclaims"].get((ns, name))
            if obj is None:
                return self.reply(
                    404,
                    status_body(404, "NotFound", f'qosclaims "{name}" not found'),
                )
            obj = copy.deepcopy(obj)
            if content_type == "application/merge-patch+json":
                obj["status"] = merge_patch(obj.get("status", {}), body.get("status", {}))
            else:
                entries = obj.setdefault("status", {}).setdefault("nodes", [])
                for entry in body.get("status", {}).get("nodes", []):
                    entries[:] = [e for e in entries if e.get("node") != entry.get("node")]
                    entries.append(entry)
                entries.sort(key=lambda e: e.get("node", ""))
            stored = STORE.put("qosclaims", ns, name, obj, kind="MODIFIED")
        self.reply(200, stored)

    def apply_report(self, url, ns, name):
        body = self.body()
        content_type = self.headers.get("Content-Type")
        with STORE.lock:
            failing = STORE.failing_report_applies > 0
            STORE.failing_report_applies -= int(failing)
            STORE.patches.append(
                {
                    "path": url.path,
                    "query": url.query,
                    "contentType": content_type,
                    "body": body,
                    "code": 500 if failing else 200,
                }
            )
            if failing:
                return self.reply(
                    500, status_body(500, "InternalError", "injected failure")
                )
            if content_type != "application/apply-patch+yaml":
                return self.reply(
                    415, status_body(415, "UnsupportedMediaType", content_type)
                )
            old = STORE.objects["qosnodereports"].get((ns, name), {})
            obj = copy.deepcopy(old)
            obj.setdefault("metadata", {}).update(body.get("metadata", {}))
            obj["spec"] = body.get("spec", {})
            stored = STORE.put("qosnodereports", ns, name, obj)
        self.reply(200, stored)

    def do_POST(self):
        url = urllib.parse.urlsplit(self.path)
        self.record(url)
        match = LEASES.match(url.path)
        if not match or match["name"]:
            return self.reply(404, status_body(404, "NotFound", f"no route {url.path}"))
        body = self.body()
        name = body["metadata"]["name"]
        with STORE.lock:
            if (match["ns"], name) in STORE.objects["leases"]:
                return self.reply(
                    409,
                    status_body(409, "AlreadyExists", f'leases "{name}" already exists'),
                )
            stored = STORE.put("leases", match["ns"], name, body)
        self.reply(201, stored)

    def do_PUT(self):
        lease = LEASES.match(urllib.parse.urlsplit(self.path).path)
        if lease and lease["name"]:
            return self.replace_lease(lease["ns"], lease["name"])
        if urllib.parse.urlsplit(self.path).path == "/control/fail-reports":
            with STORE.lock:
                STORE.failing_report_applies = int(self.body()["count"])
            return self.reply(200, {})
        match = CONTROL.match(urllib.parse.urlsplit(self.path).path)
        if not match or match["plural"] not in KINDS:
            return self.reply(404, status_body(404, "NotFound", self.path))
        obj = STORE.put(match["plural"], match["ns"], match["name"], self.body())
        self.reply(200, obj)

    def replace_lease(self, ns, name):
        self.record(urllib.parse.urlsplit(self.path))
        body = self.body()
        with STORE.lock:
            old = STORE.objects["leases"].get((ns, name))
            if old is None:
                return self.reply(
                    404, status_body(404, "NotFound", f'leases "{name}" not found')
                )
            sent = body.get("metadata", {}).get("resourceVersion")
            if sent != old["metadata"]["resourceVersion"]:
                return self.reply(
                    409,
                    status_body(
                        409,
                        "Conflict",
                        f'Operation cannot be fulfilled on leases "{name}": '
                        "the object has been modified",
                    ),
                )
            stored = STORE.put("leases", ns, name, body)
        self.reply(200, stored)

    def do_DELETE(self):
        match = CONTROL.match(urllib.parse.urlsplit(self.path).path)
        if not match or match["plural"] not in KINDS:
            return self.reply(404, status_body(404, "NotFound", self.path))
        obj = STORE.delete(match["plural"], match["ns"], match["name"])
        if obj is None:
            return self.reply(404, status_body(404, "NotFound", self.path))
        self.reply(200, obj)


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
