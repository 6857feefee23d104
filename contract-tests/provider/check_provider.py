#!/usr/bin/env python3
"""Provider contract check: the real sidecar against the golden fixtures, judged by code that is
not the sidecar's own (Python `jsonschema` for the schemas, PyJWT for the signatures).

    python3 contract-tests/provider/check_provider.py --binary target/release/agent-sidecar

1. Every fixture under contract-tests/fixtures/ is checked with jsonschema: valid ones validate,
   invalid ones fail at the pointer they name.
2. The sidecar is started on a scratch shared_root with a recording receiver. Every trigger
   fixture is POSTed (valid ones with a job folder and manifest, v1 and v2): valid ones get 202,
   invalid ones the status and the error pointer they name; every invalid manifest fixture is
   refused with 422 naming it, with source "manifest".
3. Jobs run to completion and to failure. Every progress and completion callback validates
   against schemas/, carries job_name, and its bearer JWT verifies (iss, aud, exp, body_sha256);
   every output file (summary.json, metrics.json, status.json, events.jsonl) and GET /jobs/{id}
   validates against its schema.
Prints one line per check; exits 1 if any failed.
"""
import argparse
import hashlib
import http.server
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid

import jsonschema
import jwt

REPO = pathlib.Path(__file__).resolve().parents[2]
FIXTURES = REPO / "contract-tests" / "fixtures"
SCHEMAS = REPO / "schemas"
SECRET = "provider-check-secret-0123456789abcdef"
ISSUER, AUDIENCE = "agent-sidecar", "rails"
FIXTURE_JOB_ID = "7d3c8f0e-2b1a-4c5d-9e8f-0a1b2c3d4e5f"

failures = []


def check(ok, what):
    print(("ok    " if ok else "FAIL  ") + what, flush=True)
    if not ok:
        failures.append(what)


def schema(version, name):
    doc = json.loads((SCHEMAS / f"v{version}" / f"{name}.json").read_text())
    return jsonschema.Draft202012Validator(doc)


def pointers(error):
    """The pointers a jsonschema error names: a missing or unexpected property is named itself."""
    base = "".join(f"/{p}" for p in error.absolute_path)
    instance = error.instance if isinstance(error.instance, dict) else {}
    if error.validator == "required":
        return [f"{base}/{p}" for p in error.validator_value if p not in instance]
    if error.validator == "additionalProperties":
        known = set(error.schema.get("properties", {}))
        return [f"{base}/{p}" for p in instance if p not in known]
    return [base]


def check_fixtures():
    for version_dir in sorted(FIXTURES.glob("v*")):
        version = version_dir.name[1:]
        for doc_dir in sorted(version_dir.iterdir()):
            validator = schema(version, doc_dir.name)
            for path in sorted((doc_dir / "valid").glob("*.json")):
                errors = list(validator.iter_errors(json.loads(path.read_text())))
                check(not errors, f"fixture v{version}/{doc_dir.name}/valid/{path.name} validates")
            for path in sorted((doc_dir / "invalid").glob("*.json")):
                case = json.loads(path.read_text())
                found = [p for e in validator.iter_errors(case["document"]) for p in pointers(e)]
                want = case["expect"]["pointer"]
                check(want in found, f"fixture v{version}/{doc_dir.name}/invalid/{path.name} fails at {want} (got {found})")


class Receiver(http.server.ThreadingHTTPServer):
    """Records every callback; answers 200."""

    def __init__(self):
        self.hits = []
        self.changed = threading.Condition()
        super().__init__(("127.0.0.1", 0), Handler)

    def wait_for(self, what, predicate, timeout=120):
        deadline = time.monotonic() + timeout
        with self.changed:
            while not predicate(self.hits):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SystemExit(f"timed out waiting for {what}")
                self.changed.wait(left)


class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        with self.server.changed:
            self.server.hits.append({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body})
            self.server.changed.notify_all()
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def config_text(root, origin):
    agents = REPO / "examples" / "agents"
    return f"""
[server]
listen = "127.0.0.1:0"
[storage]
shared_root = "{root / 'shared_root'}"
[store]
url = "sqlite://{root / 'state.db'}"
[callbacks]
allowed_origins = ["{origin}"]
allow_http = true
progress_min_interval = "0s"
retry_schedule = ["0s", "200ms"]
[callbacks.jwt]
issuer = "{ISSUER}"
audience = "{AUDIENCE}"
secret = "{SECRET}"
[jobs]
allowed_job_names = ["ReportCompileJob"]
[agents.summarizer_v2]
command = ["python3", "{agents / 'summarizer.py'}"]
params_schema = "{agents / 'summarizer.params.schema.json'}"
timeout = "60s"
[agents.failing_agent]
command = ["python3", "{agents / 'failing.py'}"]
timeout = "60s"
"""


class Sidecar:
    def __init__(self, binary, root, origin):
        (root / "shared_root").mkdir()
        config = root / "sidecar.toml"
        config.write_text(config_text(root, origin))
        self.root = root / "shared_root"
        self.process = subprocess.Popen(
            [binary, "serve", "--config", str(config)],
            stdout=subprocess.PIPE, stderr=open(root / "sidecar.log", "w"), text=True,
        )
        line = self.process.stdout.readline()
        if "listening on " not in line:
            self.process.kill()
            raise SystemExit(f"the sidecar did not start: {line!r}; {(root / 'sidecar.log').read_text()}")
        self.base = line.split("listening on ")[1].strip()

    def request(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"content-type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def write_job(self, job_id, manifest, files=()):
        folder = self.root / job_id / "input"
        folder.mkdir(parents=True, exist_ok=True)
        for name, content in files:
            (folder / name).write_bytes(content)
        (folder / "manifest.json").write_text(json.dumps(manifest))

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def fresh(request, origin):
    """A fixture trigger with a new job id and callbacks to the receiver, its defect kept."""
    request = json.loads(json.dumps(request))
    if request.get("job_id") == FIXTURE_JOB_ID:
        request["job_id"] = str(uuid.uuid4())
    for kind, url in (request.get("callback_urls") or {}).items():
        if isinstance(url, str) and "://" in url:
            request["callback_urls"][kind] = origin + "/" + url.split("://", 1)[1].split("/", 1)[1]
    return request


def manifest_v1(request):
    keys = ("job_id", "user_id", "agent_name", "job_name", "params")
    return {"schema_version": 1, **{k: request[k] for k in keys if k in request}}


def problem_names(answer, source, pointer):
    return any(e.get("source") == source and e.get("pointer") == pointer for e in (answer or {}).get("errors", []))


def check_triggers(sidecar, origin):
    started = []
    for path in sorted((FIXTURES / "v1" / "trigger-request" / "valid").glob("*.json")):
        request = fresh(json.loads(path.read_text()), origin)
        sidecar.write_job(request["job_id"], manifest_v1(request))
        status, answer = sidecar.request("POST", "/agents/trigger", request)
        check(status == 202, f"trigger valid/{path.name} is 202 (got {status} {answer})")
        started.append(request)
    for path in sorted((FIXTURES / "v1" / "trigger-request" / "invalid").glob("*.json")):
        case = json.loads(path.read_text())
        request = fresh(case["document"], origin)
        if isinstance(request.get("job_id"), str):
            sidecar.write_job(request["job_id"], manifest_v1(request))
        status, answer = sidecar.request("POST", "/agents/trigger", request)
        want = case["expect"].get("status", 422)
        pointer = case["expect"]["pointer"]
        check(status == want and problem_names(answer, "request", pointer),
              f"trigger invalid/{path.name} is {want} naming request {pointer} (got {status} {answer})")
    for version in (1, 2):
        for path in sorted((FIXTURES / f"v{version}" / "manifest" / "invalid").glob("*.json")):
            case = json.loads(path.read_text())
            request = fresh(json.loads((FIXTURES / "v1" / "trigger-request" / "valid" / "full.json").read_text()), origin)
            manifest = dict(case["document"], job_id=request["job_id"])
            sidecar.write_job(request["job_id"], manifest)
            status, answer = sidecar.request("POST", "/agents/trigger", request)
            pointer = case["expect"]["pointer"]
            check(status == 422 and problem_names(answer, "manifest", pointer),
                  f"manifest v{version} invalid/{path.name} is 422 naming manifest {pointer} (got {status} {answer})")
    return started


def start_jobs(sidecar, origin):
    """A v2 manifest job with real digests, and a failing one."""
    notes = b"Revenue grew. Costs fell. The team shipped twice.\n"
    base = {"user_id": "42", "job_name": "ReportCompileJob",
            "callback_urls": {"progress": f"{origin}/agents/update/42", "completion": f"{origin}/agents/completed/42"}}
    v2 = dict(base, job_id=str(uuid.uuid4()), agent_name="summarizer_v2", params={"step_delay_s": 0})
    manifest = dict(manifest_v1(v2), schema_version=2,
                    inputs=[{"path": "notes.txt", "bytes": len(notes), "sha256": hashlib.sha256(notes).hexdigest()}])
    sidecar.write_job(v2["job_id"], manifest, [("notes.txt", notes)])
    failing = dict(base, job_id=str(uuid.uuid4()), agent_name="failing_agent")
    sidecar.write_job(failing["job_id"], manifest_v1(failing))
    for request in (v2, failing):
        status, answer = sidecar.request("POST", "/agents/trigger", request)
        check(status == 202, f"trigger {request['agent_name']} is 202 (got {status} {answer})")
    return [v2, failing]


def check_token(hit, event):
    token = hit["headers"].get("authorization", "").removeprefix("Bearer ")
    try:
        claims = jwt.decode(token, SECRET, algorithms=["HS256"], audience=AUDIENCE, issuer=ISSUER,
                            options={"require": ["exp", "iat", "sub", "jti"]})
    except jwt.PyJWTError as e:
        return f"JWT refused: {e}"
    if claims.get("event") != event:
        return f"JWT event {claims.get('event')}"
    if claims.get("body_sha256") != hashlib.sha256(hit["body"]).hexdigest():
        return "body_sha256 differs"
    return None


def check_callbacks(receiver, jobs):
    ids = {j["job_id"] for j in jobs}
    receiver.wait_for("every completion", lambda hits: ids <= {
        json.loads(h["body"])["job_id"] for h in hits if h["path"].startswith("/agents/completed/")})
    progress, completion = schema(1, "progress-callback"), schema(1, "completion-callback")
    expected_status = {j["job_id"]: ("failed" if j["agent_name"] == "failing_agent" else "completed") for j in jobs}
    for hit in list(receiver.hits):
        body = json.loads(hit["body"])
        is_completion = hit["path"].startswith("/agents/completed/")
        event = "completion" if is_completion else "progress"
        errors = [e.message for e in (completion if is_completion else progress).iter_errors(body)]
        check(not errors, f"{event} of {body.get('job_id')} validates ({errors})")
        check(body.get("job_name") == "ReportCompileJob", f"{event} of {body.get('job_id')} carries job_name")
        problem = check_token(hit, event)
        check(problem is None, f"{event} of {body.get('job_id')} has a valid bearer JWT ({problem})")
        if is_completion and body["job_id"] in expected_status:
            want = expected_status[body["job_id"]]
            check(body["status"] == want, f"completion of {body['job_id']} is {want} (got {body['status']})")
    for job in jobs:
        check(any(json.loads(h["body"])["job_id"] == job["job_id"] for h in receiver.hits if h["path"].startswith("/agents/update/")),
              f"{job['agent_name']} job sent progress")


def check_outputs(sidecar, jobs):
    for job in jobs:
        out = sidecar.root / job["job_id"] / "output"
        for name in ("summary", "metrics", "status"):
            path = out / f"{name}.json"
            errors = [e.message for e in schema(1, name).iter_errors(json.loads(path.read_text()))] if path.exists() else ["missing"]
            check(not errors, f"output/{name}.json of {job['agent_name']} validates ({errors})")
        # Only whole lines: a delivery line may still be being appended.
        events = [json.loads(line) for line in (out / "events.jsonl").read_text().split("\n")[:-1]]
        event_schema = schema(1, "job-event")
        bad = [e for e in events if e.get("type") in ("state", "progress") and list(event_schema.iter_errors(e))]
        check(events and not bad, f"output/events.jsonl of {job['agent_name']} validates ({bad[:1]})")
        check((out / "log.txt").exists(), f"output/log.txt of {job['agent_name']} exists")
        status, answer = sidecar.request("GET", f"/jobs/{job['job_id']}")
        errors = [e.message for e in schema(1, "status").iter_errors(answer)]
        check(status == 200 and not errors, f"GET /jobs/{{id}} of {job['agent_name']} validates ({errors})")
        check(answer.get("job_name") == "ReportCompileJob", f"GET /jobs/{{id}} of {job['agent_name']} carries job_name")
    failed = next(j for j in jobs if j["agent_name"] == "failing_agent")
    check((sidecar.root / failed["job_id"] / "output" / "error.log").exists(), "a failed job has output/error.log")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--binary", required=True, help="the agent-sidecar binary to check")
    args = parser.parse_args()
    check_fixtures()
    receiver = Receiver()
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    origin = f"http://127.0.0.1:{receiver.server_address[1]}"
    with tempfile.TemporaryDirectory() as tmp:
        sidecar = Sidecar(args.binary, pathlib.Path(tmp), origin)
        try:
            jobs = check_triggers(sidecar, origin) + start_jobs(sidecar, origin)
            check_callbacks(receiver, jobs)
            check_outputs(sidecar, jobs)
        finally:
            sidecar.stop()
    receiver.shutdown()
    print(f"{len(failures)} failed" if failures else "provider contract holds")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
