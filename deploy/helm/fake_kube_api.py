"""A stand-in for the Kubernetes API server, just enough for Helm to install a release:
discovery documents for the kinds the chart uses, empty lists, 404 for lookups, and
creates that echo their object back. Nothing is scheduled or stored; the point is to run
the real Helm engine's install (schema validation, rendering, ordering) without a cluster
and to collect what it would have created.
"""
import json
import re
import threading
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler

RESOURCES = {
    ("", "v1"): [("configmaps","ConfigMap",True),("secrets","Secret",True),("services","Service",True),("serviceaccounts","ServiceAccount",True),("persistentvolumeclaims","PersistentVolumeClaim",True),("pods","Pod",True),("namespaces","Namespace",False)],
    ("apps","v1"): [("statefulsets","StatefulSet",True),("deployments","Deployment",True)],
    ("policy","v1"): [("poddisruptionbudgets","PodDisruptionBudget",True)],
    ("monitoring.coreos.com","v1"): [("servicemonitors","ServiceMonitor",True),("prometheusrules","PrometheusRule",True)],
}
captured = []
log = []
class H(BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def send(self, code, obj):
        body = json.dumps(obj).encode()
        self.send_response(code); self.send_header("Content-Type","application/json"); self.send_header("Content-Length",str(len(body))); self.end_headers(); self.wfile.write(body)
    def do_GET(self):
        path = self.path.split("?")[0]
        log.append(("GET", self.path))
        if path == "/version":
            return self.send(200, {"major":"1","minor":"30","gitVersion":"v1.30.0","platform":"linux/amd64"})
        if path == "/api":
            return self.send(200, {"kind":"APIVersions","versions":["v1"],"serverAddressByClientCIDRs":[{"clientCIDR":"0.0.0.0/0","serverAddress":"127.0.0.1"}]})
        if path == "/apis":
            groups=[]
            for (g,v) in RESOURCES:
                if g: groups.append({"name":g,"versions":[{"groupVersion":f"{g}/{v}","version":v}],"preferredVersion":{"groupVersion":f"{g}/{v}","version":v}})
            return self.send(200, {"kind":"APIGroupList","apiVersion":"v1","groups":groups})
        m = re.fullmatch(r"/api/v1|/apis/([^/]+)/([^/]+)", path)
        if m:
            key = ("","v1") if path=="/api/v1" else (m.group(1), m.group(2))
            if key in RESOURCES:
                gv = "v1" if not key[0] else f"{key[0]}/{key[1]}"
                return self.send(200, {"kind":"APIResourceList","groupVersion":gv,"resources":[{"name":n,"singularName":"","namespaced":ns,"kind":k,"verbs":["create","delete","get","list","patch","update","watch"]} for n,k,ns in RESOURCES[key]]})
        if path.endswith("/secrets") or path.endswith("/configmaps"):
            return self.send(200, {"kind":"SecretList" if path.endswith("secrets") else "ConfigMapList","apiVersion":"v1","metadata":{"resourceVersion":"1"},"items":[]})
        return self.send(404, {"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404,"message":"not found"})
    def body(self):
        n=int(self.headers.get("Content-Length","0")); raw=self.rfile.read(n) or b"{}"
        if "json" not in (self.headers.get("Content-Type") or ""):
            # client-go sends built-in types as protobuf; a JSON answer is accepted.
            kind = "Secret" if "/secrets" in self.path else "Object"
            return {"kind": kind, "apiVersion": "v1", "metadata": {"name": "protobuf-object", "namespace": "default"}}
        return json.loads(raw)
    def do_POST(self):
        obj=self.body(); log.append(("POST", self.path))
        obj.setdefault("metadata",{})["resourceVersion"]="1"; obj["metadata"].setdefault("uid","u-"+str(len(captured)))
        captured.append((self.path,obj))
        self.send(201,obj)
    def do_PUT(self):
        obj=self.body(); log.append(("PUT", self.path)); self.send(200,obj)
    def do_PATCH(self):
        obj=self.body(); log.append(("PATCH", self.path)); self.send(200,obj)
    def do_DELETE(self):
        log.append(("DELETE", self.path)); self.send(200,{"kind":"Status","status":"Success"})

def start():
    s=ThreadingHTTPServer(("127.0.0.1",0),H)
    threading.Thread(target=s.serve_forever,daemon=True).start()
    return s
