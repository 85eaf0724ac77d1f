"""Serve acme2certifier's WSGI application on a loopback port for the tests,
recording every request (method, path, decoded JWS payload) as one JSON line."""
import base64, json, os, sys, threading
from wsgiref.simple_server import WSGIServer, WSGIRequestHandler, make_server

cfg, port, log = sys.argv[1], int(sys.argv[2]), sys.argv[3]
os.environ["ACME_SRV_CONFIGFILE"] = cfg
os.environ["ACME2CERTIFIER_I_KNOW_THE_RISK"] = "1"
from acme2certifier.share.acme2certifier_wsgi import application

lock = threading.Lock()

def b64d(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))

def recorder(environ, start_response):
    body = b""
    try:
        n = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        n = 0
    if n:
        body = environ["wsgi.input"].read(n)
    import io
    environ["wsgi.input"] = io.BytesIO(body)
    payload = None
    if body:
        try:
            jws = json.loads(body)
            p = jws.get("payload", "")
            payload = json.loads(b64d(p)) if p else ""
        except Exception:
            payload = None
    with lock, open(log, "a") as f:
        f.write(json.dumps({"method": environ["REQUEST_METHOD"], "path": environ.get("PATH_INFO", ""), "payload": payload}) + "\n")
    return application(environ, start_response)

# One request at a time: acme2certifier keeps its state (nonces included) in
# SQLite, and concurrent requests got "database is locked" 500s and nonces
# it then refused. Clients that send requests in parallel just queue.
class Serial(WSGIServer):
    request_queue_size = 64

class Quiet(WSGIRequestHandler):
    def log_message(self, *a):
        pass

srv = make_server("127.0.0.1", port, recorder, server_class=Serial, handler_class=Quiet)
print("listening", flush=True)
srv.serve_forever()
