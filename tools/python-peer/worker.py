"""The Python peer of ml-pipeline's worker: the same job, written the way a competent Python
team would write it, as a yardstick for the Rust worker (issue 18). Dev-only; not shipped.

One sequential loop: receive up to 10 messages (long poll) -> decode every bundle -> one batch:
standardize, enrich with ONE PostgreSQL statement (`= ANY`) and ONE MongoDB `$in` query (the two
run at the same time), normalize, score the whole matrix with numpy -> one answer per bundle ->
send_message_batch -> delete_message_batch. Connections are opened once and reused.

It reads the Rust worker's environment (docs/contract.md, src/settings.rs): the queues, the AWS
SDK's own variables (AWS_ENDPOINT_URL...), DATABASE_URL, MONGODB_URI, MONGODB_DATABASE and the
model registry (ML_PIPELINE_MODEL_BUCKET, _MODEL_NAME, _MODEL_ALIAS or _MODEL_VERSION). It serves
the model artifact the registry holds, with the spec, scaler and SVM stored in it, and checks at
start that it reproduces the artifact's reference decision values.

What it leaves out is in README.md beside it (zstd, Extended Client pointers, FIFO ids, model
reloads, outage holds, retries beyond a few attempts). Its `/metrics` carries only what the
load generator compares: SQS requests by kind and as billed, batches and stage times, under the
Rust worker's metric names (`bench --external --metrics-url` reads both workers alike).

    python worker.py        # SIGTERM or SIGINT: stops between polls
    PEER_METRICS_ADDR=127.0.0.1:9899 python worker.py   # default 127.0.0.1:0, any free port
"""

from __future__ import annotations

import base64
import gzip
import json
import logging
import math
import os
import signal
import sys
import threading
import time
import unicodedata
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3
import botocore.config
import numpy as np
import psycopg
import pymongo

log = logging.getLogger("python-peer")

MAX_KEY_CHARS = 256
# linfa counts a support vector when its |alpha| is above this (src/model/compiled.rs).
SUPPORT_THRESHOLD = 100.0 * sys.float_info.epsilon
# SQS limits a SendMessageBatch's total payload to the message size limit.
MAX_BATCH_BYTES = int(os.environ.get("ML_PIPELINE_MAX_MESSAGE_BYTES", 1 << 20))
# SQS bills one request per started 64 KiB of payload (src/queue/sqs.rs, billed_requests).
BILLING_CHUNK_BYTES = 64 * 1024


# ---------------------------------------------------------------------------------------------
# The model: the artifact from the S3 registry, compiled once for numpy.


@dataclass
class Model:
    """The served version: its spec and the decision function of its scaler and SVM."""

    name: str
    version: str
    spec: dict
    mul: np.ndarray
    add: np.ndarray
    kernel: str
    width: float
    support: np.ndarray  # scaled-space support vectors (Gaussian) or weights (linear)
    alphas: np.ndarray
    rho: float

    def decision_values(self, canonical: np.ndarray) -> np.ndarray:
        scaled = canonical * self.mul + self.add
        if self.kernel == "linear":
            return scaled @ self.support - self.rho
        # Differences, not the |x|^2 + |sv|^2 - 2 x.sv expansion: the same terms as the Rust
        # worker sums, so scores agree with its to about 1e-13 (only the order of the sums
        # differs), not merely to 1e-9.
        diff = scaled[:, None, :] - self.support[None, :, :]
        d2 = np.einsum("ijk,ijk->ij", diff, diff)
        return np.exp(-d2 / self.width) @ self.alphas - self.rho


def ndarray_data(value: dict) -> np.ndarray:
    """An ndarray in its serde form ({"v": 1, "dim": [...], "data": [...]})."""
    return np.asarray(value["data"], dtype=np.float64).reshape(value["dim"])


def load_model(s3, bucket: str, name: str, alias: str, version: str | None) -> Model:
    """Reads the version an alias names (or a fixed version) and compiles it."""
    if not version:
        record = json.loads(
            s3.get_object(Bucket=bucket, Key=f"models/{name}/aliases/{alias}")["Body"].read()
        )
        version = str(record["version"])
    key = f"models/{name}/versions/{version}/model.json"
    artifact = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    scaler, svm = artifact["scaler"], artifact["svm"]
    offsets, scales = ndarray_data(scaler["offsets"]), ndarray_data(scaler["scales"])
    # linfa's LinearScaler: (x - offset) * scale, i.e. x * mul + add.
    mul, add = scales, -offsets * scales
    kernel_method = svm["kernel_method"]
    plane = svm["sep_hyperplane"]
    if kernel_method == "Linear":
        kernel, width = "linear", 1.0
        support, alphas = ndarray_data(plane["Linear"]), np.empty(0)
    elif isinstance(kernel_method, dict) and "Gaussian" in kernel_method:
        kernel, width = "gaussian", float(kernel_method["Gaussian"])
        support = ndarray_data(plane["WeightedCombination"])
        alphas = np.asarray([a for a in svm["alpha"] if abs(a) > SUPPORT_THRESHOLD])
        alphas = alphas[: support.shape[0]]
        support = np.ascontiguousarray(support[: len(alphas)])
    else:
        raise SystemExit(f"{key}: kernel {kernel_method!r} is not one the peer computes")
    model = Model(name, version, artifact["spec"], mul, add, kernel, width, support, alphas,
                  float(svm["rho"]))
    reference = artifact.get("reference")
    if reference:
        want = np.asarray(reference["decision_values"])
        got = model.decision_values(np.asarray(reference["rows"], dtype=np.float64))
        worst = float(np.max(np.abs(got - want))) if len(want) else 0.0
        if worst > 1e-9:
            raise SystemExit(f"{key}: the peer's decision values differ from the reference "
                             f"set's by {worst:g}; it would not predict as the worker does")
    log.info("serving model %s version %s (%s kernel, %d support vectors)",
             name, version, kernel, len(alphas))
    return model


# ---------------------------------------------------------------------------------------------
# Bundles: decoding, and what a batch holds.


class Refused(Exception):
    """A bundle refused whole (docs/contract.md section 10): (stage, reason)."""

    def __init__(self, stage: str, reason: str):
        super().__init__(f"{stage}: {reason}")
        self.stage, self.reason = stage, reason


def _no_constants(name: str):
    raise ValueError(f"{name} is not JSON")


def decode_body(message: dict) -> dict:
    """The JSON object of a message body, decompressed as its content-encoding says."""
    attrs = message.get("MessageAttributes") or {}
    encoding = (attrs.get("content-encoding") or {}).get("StringValue") or "identity"
    body = message["Body"]
    if encoding == "gzip":
        try:
            raw = gzip.decompress(base64.b64decode(body, validate=True))
        except Exception as e:  # noqa: BLE001 - any failure is the producer's
            raise Refused("decode", f"gzip body does not decompress: {e}") from e
    elif encoding == "identity":
        raw = body
    else:
        raise Refused("decode", f"content-encoding '{encoding}' is not supported by the peer")
    try:
        bundle = json.loads(raw, parse_constant=_no_constants)
    except ValueError as e:
        raise Refused("decode", f"body is not valid JSON: {e}") from e
    if not isinstance(bundle, dict):
        raise Refused("decode", "body is not a JSON object")
    return bundle


def check_id(bundle: dict, field_name: str) -> str:
    value = bundle.get(field_name)
    if not isinstance(value, str):
        raise Refused("decode", f"'{field_name}' must be a string")
    if not 1 <= len(value) <= 128:
        raise Refused("decode", f"'{field_name}' has {len(value)} characters; it must have 1 to 128")
    if any(unicodedata.category(c) == "Cc" for c in value):
        raise Refused("decode", f"'{field_name}' contains control characters")
    return value


@dataclass
class Plan:
    """One bundle of a batch: its kind, id, and per record either a matrix row or an error."""

    kind: str  # "v1" or "seed"
    bundle_id: str
    ids: list = field(default_factory=list)
    slots: list = field(default_factory=list)  # int (matrix row) or str (error)
    seed: dict | None = None


# ---------------------------------------------------------------------------------------------
# Standardize: keys folded by the spec's rules, numbers checked.


def fold(text: str, rules: list[str]) -> str:
    for rule in rules:
        if rule == "nfkc":
            text = unicodedata.normalize("NFKC", text)
        elif rule == "lowercase":
            text = text.lower()
        elif rule == "trim":
            text = text.strip()
        elif rule == "collapse_whitespace":
            text = " ".join(text.split())
        elif rule == "strip_punctuation":
            text = text.replace(".", "").replace(",", "").replace("'", "")
    return text


def describe(value) -> str:
    """A cell as error messages show it (src/text.rs)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {'true' if value else 'false'}"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the text {json.dumps(value[:64], ensure_ascii=False)}"
    return "an array" if isinstance(value, list) else "an object"


INVISIBLE = {0x00AD, 0x034F, 0x061C, 0x3164, 0xFEFF, 0xFFA0}
INVISIBLE_RANGES = [(0x115F, 0x1160), (0x17B4, 0x17B5), (0x180B, 0x180E), (0x200B, 0x200F),
                    (0x202A, 0x202E), (0x2060, 0x206F), (0xFE00, 0xFE0F), (0xFFF0, 0xFFFB)]


def visible(text: str) -> str:
    """Control and invisible characters written as \\u{200B} (src/text.rs)."""
    def hidden(c: str) -> bool:
        o = ord(c)
        return (unicodedata.category(c) == "Cc" or o in INVISIBLE
                or any(lo <= o <= hi for lo, hi in INVISIBLE_RANGES))
    if text.isascii() and text.isprintable():
        return text
    return "".join(f"\\u{{{ord(c):04X}}}" if hidden(c) else c for c in text)


def standard_key(column: str, rules: list[str] | None, raw) -> str:
    """A cell's standardized key; raises RecordError's text (a str) when it cannot be one."""
    if not isinstance(raw, str):
        raise KeyError(f"standardize: {column} must be a text value, got {describe(raw)}")
    key = fold(raw, rules) if rules else raw
    if not key:
        raise KeyError(f"standardize: {column} is empty")
    if key.isprintable() and "\ufffd" not in key and len(key) <= MAX_KEY_CHARS:
        return key  # the usual case: no character to look at one by one
    for at, c in enumerate(key, 1):
        if unicodedata.category(c) == "Cc":
            raise KeyError(f"standardize: {column} contains the control character U+{ord(c):04X}"
                           f" at character {at}; a key must be printable text")
    if "\ufffd" in key:
        raise KeyError(f"standardize: {column} is not valid Unicode text at character "
                       f"{key.index(chr(0xFFFD)) + 1} (a lone UTF-16 surrogate such as \\ud800, "
                       "or U+FFFD); send the key as valid UTF-8")
    if len(key) > MAX_KEY_CHARS:
        raise KeyError(f"standardize: {column} is longer than {MAX_KEY_CHARS} characters")
    return key


def number(column: str, value) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    raise KeyError(f"standardize: {column} must be a finite number, got {describe(value)}")


# ---------------------------------------------------------------------------------------------
# What the load generator reads: SQS requests, batches and stage times, as Prometheus text.


def billed_requests(payload_bytes: int) -> int:
    """Billable requests of one call carrying `payload_bytes`: one per started 64 KiB, and an
    empty receive is still one."""
    return max(1, -(-payload_bytes // BILLING_CHUNK_BYTES))


def message_size(body: str, attributes: dict | None) -> int:
    """A message's billed size: body plus each attribute's name, type and value, in bytes (what
    the Rust worker counts)."""
    size = len(body.encode())
    for name, value in (attributes or {}).items():
        size += len(name.encode()) + len(value["DataType"].encode())
        size += len(value.get("StringValue", "").encode()) + len(value.get("BinaryValue", b""))
    return size


class Meter:
    """Counters under the Rust worker's metric names (src/instruments.rs), updated by the loop
    and read by the /metrics thread (whole-int updates under the GIL)."""

    def __init__(self):
        self.requests: Counter = Counter()
        self.billed: Counter = Counter()
        self.stage_s: Counter = Counter()
        self.batches = self.records = 0

    def sqs(self, kind: str, payload_bytes: int = 0) -> None:
        self.requests[kind] += 1
        self.billed[kind] += billed_requests(payload_bytes)

    def exposition(self) -> str:
        lines = ["# TYPE ml_pipeline_sqs_requests_total counter"]
        lines += [f'ml_pipeline_sqs_requests_total{{kind="{k}"}} {n}'
                  for k, n in sorted(self.requests.items())]
        lines.append("# TYPE ml_pipeline_sqs_billable_requests_total counter")
        lines += [f'ml_pipeline_sqs_billable_requests_total{{kind="{k}"}} {n}'
                  for k, n in sorted(self.billed.items())]
        for stage, seconds in sorted(self.stage_s.items()):
            lines.append(f'ml_pipeline_stage_seconds_sum{{stage="{stage}"}} {seconds}')
            lines.append(f'ml_pipeline_stage_seconds_count{{stage="{stage}"}} {self.batches}')
        lines.append(f"ml_pipeline_batch_records_sum {self.records}")
        lines.append(f"ml_pipeline_batch_records_count {self.batches}")
        return "\n".join(lines) + "\n"

    def serve(self, address: str) -> str:
        """Serves GET /metrics on `address` (host:port, port 0 for any) in a daemon thread;
        the URL it listens on."""
        meter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path != "/metrics":
                    self.send_error(404)
                    return
                body = meter.exposition().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args):
                pass

        host, _, port = address.rpartition(":")
        server = ThreadingHTTPServer((host or "127.0.0.1", int(port)), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return f"http://{server.server_address[0]}:{server.server_address[1]}/metrics"


# ---------------------------------------------------------------------------------------------
# The worker.


class Peer:
    """Sources and queues, opened once; `step` is one poll's worth of work."""

    def __init__(self, env: dict[str, str]):
        path_style = env.get("ML_PIPELINE_S3_FORCE_PATH_STYLE", "").lower() in ("1", "true")
        config = botocore.config.Config(
            retries={"max_attempts": 5, "mode": "standard"},
            s3={"addressing_style": "path"} if path_style else None,
            max_pool_connections=4,
        )
        self.sqs = boto3.client("sqs", config=config)
        s3 = boto3.client("s3", config=config)
        self.input = self.queue_url(env["ML_PIPELINE_INPUT_QUEUE"])
        self.output = self.queue_url(env["ML_PIPELINE_OUTPUT_QUEUE"])
        dlq = env.get("ML_PIPELINE_INPUT_DLQ")
        self.dlq = self.queue_url(dlq) if dlq else None
        self.wait_secs = int(env.get("ML_PIPELINE_WAIT_SECS", "20"))
        self.receive_max = max(1, min(10, int(env.get("ML_PIPELINE_RECEIVE_MAX", "10"))))
        self.model = load_model(
            s3,
            env["ML_PIPELINE_MODEL_BUCKET"],
            env.get("ML_PIPELINE_MODEL_NAME", "banknote"),
            env.get("ML_PIPELINE_MODEL_ALIAS", "production"),
            env.get("ML_PIPELINE_MODEL_VERSION"),
        )
        self.pg = psycopg.connect(
            env.get("DATABASE_URL", "postgres://ml_pipeline:ml_pipeline@127.0.0.1:5432/ml_pipeline"),
            autocommit=True,
        )
        mongo = pymongo.MongoClient(env.get("MONGODB_URI", "mongodb://127.0.0.1:27017"))
        self.mongo = mongo[env.get("MONGODB_DATABASE", "ml_pipeline")]
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mongo")
        # Milliseconds per stage summed over batches, batches and records: logged at exit.
        self.stage_ms: Counter = Counter()
        self.batches = self.records = 0
        self.meter = Meter()
        self.compile_spec(self.model.spec)

    def queue_url(self, name_or_url: str) -> str:
        if name_or_url.startswith(("http://", "https://")):
            return name_or_url
        return self.sqs.get_queue_url(QueueName=name_or_url)["QueueUrl"]

    def compile_spec(self, spec: dict) -> None:
        """What the spec asks of every batch, worked out once."""
        self.rules = {r["column"]: r["rules"] for r in spec.get("standardize", [])}
        self.lookups = spec.get("lookups", [])
        self.documents = spec.get("documents")
        self.features = spec["features"]
        self.units = spec["units"]
        self.lookup_sql = " UNION ALL ".join(
            f'SELECT {i}::int4, "{l["key_column"]}"::text, "{l["value_column"]}"::text '
            f'FROM "{l["table"]}" WHERE "{l["key_column"]}" = ANY(%s::text[])'
            for i, l in enumerate(self.lookups)
        )
        self.paths = sorted({p["path"] for f in self.features
                             for p in f["road"].get("document", {}).get("providers", {}).values()})
        needed = [spec["id_column"]] + [l["key_from"] for l in self.lookups]
        if self.documents:
            needed.append(self.documents["key_from"])
        needed += [f["road"]["request"]["column"] for f in self.features if "request" in f["road"]]
        self.needed = list(dict.fromkeys(needed))
        self.columns = ["id", "label", "score"] + [
            l["output_column"] for l in self.lookups if l.get("output_column")]
        self.reported = [i for i, l in enumerate(self.lookups) if l.get("output_column")]
        # Per feature: (name, the lookup naming its unit, its fixed unit, its request column);
        # the column is None for a document feature.
        lookup_at = {l["name"]: i for i, l in enumerate(self.lookups)}
        self.request_roads = []
        for f in self.features:
            road = f["road"]
            if "request" in road:
                unit = road["request"]["unit"]
                self.request_roads.append((f["name"], lookup_at.get(unit.get("from_lookup")),
                                           unit.get("fixed"), road["request"]["column"]))
            elif "document" in road:
                self.request_roads.append((f["name"], None, None, None))
            else:
                raise SystemExit(f"feature {f['name']}: the peer computes request and document "
                                 "roads only")

    # -- one poll -------------------------------------------------------------------------

    def receive(self) -> list[dict]:
        messages = self.sqs.receive_message(
            QueueUrl=self.input,
            MaxNumberOfMessages=self.receive_max,
            WaitTimeSeconds=self.wait_secs,
            MessageAttributeNames=["All"],
        ).get("Messages", [])
        self.meter.sqs("ReceiveMessage",
                       sum(message_size(m["Body"], m.get("MessageAttributes")) for m in messages))
        return messages

    def step(self, messages: list[dict]) -> tuple[int, int]:
        """Answers one poll's messages as one batch: (bundles answered, messages received)."""
        t0 = time.perf_counter()
        bundles, refused = [], []
        for m in messages:
            try:
                bundles.append((m, decode_body(m)))
            except Refused as e:
                refused.append((m, e))
        t1 = time.perf_counter()
        answers, failed = self.answer(bundles)
        t2 = time.perf_counter()
        refused += failed
        sent = self.send(answers)
        t3 = time.perf_counter()
        done = [m for m, _, _ in answers if m["MessageId"] in sent]
        done += self.dead_letter(refused)
        self.delete(done)
        t4 = time.perf_counter()
        self.stage_ms.update({"decode": (t1 - t0) * 1e3, "answer": (t2 - t1) * 1e3,
                              "send": (t3 - t2) * 1e3, "delete": (t4 - t3) * 1e3})
        self.batches += 1
        self.records += sum(len(b.get("rows") or b.get("features") or []) for _, b in bundles)
        self.meter.stage_s = Counter({k: ms / 1e3 for k, ms in self.stage_ms.items()})
        self.meter.batches, self.meter.records = self.batches, self.records
        return len(sent), len(messages)

    def log_stages(self) -> None:
        """Mean milliseconds per batch of each stage, like the Rust worker's /metrics means."""
        if self.batches:
            means = ", ".join(f"{k} {v / self.batches:.2f}" for k, v in sorted(self.stage_ms.items()))
            log.info("%d batches, %.0f records per batch; mean ms per batch: %s",
                     self.batches, self.records / self.batches, means)

    def answer(self, bundles: list[tuple[dict, dict]]):
        """(message, bundle id, answer body) per bundle not refused, and the refused ones."""
        started = time.perf_counter()
        plans, refused = [], []
        lookup_keys = [dict() for _ in self.lookups]  # raw -> key, per lookup
        doc_keys: dict = {}
        records = []  # (plan, index in plan, lookup keys, doc key, request values)
        for m, bundle in bundles:
            try:
                plans.append((m, self.plan(bundle, lookup_keys, doc_keys, records)))
            except Refused as e:
                refused.append((m, e))
        t_standardize = time.perf_counter()
        found, docs, t_pg, t_mongo = self.enrich(lookup_keys, doc_keys)
        t_enrich = time.perf_counter()
        matrix, reported = [], []
        normalize = self.normalizer(found, docs)
        for plan, at, keys, doc_key, values in records:
            row = normalize(keys, doc_key, values)
            if isinstance(row, str):
                plan.slots[at] = row
            else:
                plan.slots[at] = len(matrix)
                matrix.append(row)
                reported.append([found[i][keys[i]] for i in self.reported])
        seed_rows = []
        for _, plan in plans:
            if plan.kind == "seed":
                plan.slots = list(range(len(matrix) + len(seed_rows),
                                        len(matrix) + len(seed_rows) + len(plan.seed["features"])))
                seed_rows += plan.seed["features"]
        matrix += seed_rows
        t_normalize = time.perf_counter()
        n = len(self.features)
        x = np.asarray(matrix, dtype=np.float64).reshape(len(matrix), n)
        with np.errstate(over="ignore", invalid="ignore"):
            scores = self.model.decision_values(x) if len(matrix) else np.empty(0)
        t_predict = time.perf_counter()
        ms = lambda a, b: round((b - a) * 1e3, 3)  # noqa: E731
        timing = {
            "standardize": ms(started, t_standardize),
            "enrich": ms(t_standardize, t_enrich),
            "enrich.postgres": t_pg,
            "enrich.mongo": t_mongo,
            "normalize": ms(t_enrich, t_normalize),
            "predict": ms(t_normalize, t_predict),
            "total": ms(started, t_predict),
        }
        self.stage_ms.update(timing)
        scores = scores.tolist()
        out = [(m, plan.bundle_id, self.render(plan, scores, reported, timing))
               for m, plan in plans]
        return out, refused

    def plan(self, bundle: dict, lookup_keys, doc_keys, records) -> Plan:
        """Checks a bundle and standardizes its records into the batch."""
        if "bundle_id" not in bundle and "batch_id" in bundle:
            return self.plan_seed(bundle)
        if "bundle_id" not in bundle:
            raise Refused("decode", "body has neither 'bundle_id' (v1 format) nor 'batch_id' "
                          "(seed format)")
        bundle_id = check_id(bundle, "bundle_id")
        model = bundle.get("model")
        if model is not None and model != self.model.name:
            raise Refused("prepare", f"model '{model}' is not served by this worker "
                          f"(it serves {self.model.name})")
        columns, rows = bundle.get("columns"), bundle.get("rows")
        if not isinstance(columns, list) or not columns or not all(isinstance(c, str) for c in columns):
            raise Refused("decode", "'columns' must be a non-empty array of strings")
        if not isinstance(rows, list):
            raise Refused("decode", "'rows' must be an array of rows")
        at = {c: i for i, c in enumerate(columns)}
        for c in self.needed:
            if c not in at:
                raise Refused("prepare", f"column '{c}' is missing; model {self.model.name} "
                              f"needs columns {self.needed}")
        plan = Plan("v1", bundle_id)
        id_at = at[self.model.spec["id_column"]]
        key_at = [at[l["key_from"]] for l in self.lookups]
        doc_at = at[self.documents["key_from"]] if self.documents else None
        value_at = [(f["road"]["request"]["column"], at[f["road"]["request"]["column"]])
                    if "request" in f["road"] else None for f in self.features]
        width = len(columns)
        mine = []  # joined to the batch only once the whole bundle is accepted
        for i, row in enumerate(rows):
            if not isinstance(row, list) or len(row) != width:
                raise Refused("decode", f"row {i} has the wrong shape for {width} columns")
            rid = row[id_at]
            if isinstance(rid, bool) or not (isinstance(rid, int) or (isinstance(rid, str) and rid)):
                raise Refused("prepare", f"row {i} has no usable id ({describe(rid)}); "
                              "every row needs a text or integer id")
            plan.ids.append(str(rid))
            try:
                keys = [self.intern(lookup_keys[j], l["key_from"], row[c])
                        for j, (l, c) in enumerate(zip(self.lookups, key_at))]
                doc_key = (self.intern(doc_keys, self.documents["key_from"], row[doc_at])
                           if self.documents else None)
                values = [number(v[0], row[v[1]]) if v else math.nan for v in value_at]
            except KeyError as e:
                plan.slots.append(e.args[0])
                continue
            plan.slots.append(None)
            mine.append((plan, len(plan.slots) - 1, keys, doc_key, values))
        records += mine
        return plan

    def plan_seed(self, bundle: dict) -> Plan:
        plan = Plan("seed", check_id(bundle, "batch_id"))
        features, subjects = bundle.get("features"), bundle.get("subjects")
        n = len(self.features)
        if not isinstance(features, list) or not isinstance(subjects, list):
            raise Refused("decode", "'features' and 'subjects' must be arrays")
        if len(subjects) != len(features):
            raise Refused("decode", f"{len(subjects)} subjects for {len(features)} feature vectors")
        for i, v in enumerate(features):
            if not isinstance(v, list) or len(v) != n or not all(
                    isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
                    for x in v):
                raise Refused("prepare", f"feature vector {i} is not {n} finite numbers")
        plan.seed = bundle
        return plan

    def intern(self, table: dict, column: str, raw):
        """The standardized key of a raw cell, folded once per distinct text per batch."""
        if isinstance(raw, str):
            known = table.get(raw)
            if known is None:
                try:
                    known = standard_key(column, self.rules.get(column), raw)
                except KeyError as e:
                    known = KeyError(e.args[0])
                table[raw] = known
            if isinstance(known, KeyError):
                raise known
            return known
        return standard_key(column, self.rules.get(column), raw)

    # -- enrich: one statement per source per batch ----------------------------------------

    def enrich(self, lookup_keys, doc_keys):
        """(lookup maps, documents by key, ms PostgreSQL, ms MongoDB), both asked at once."""
        def keys_of(table):
            return sorted({k for k in table.values() if isinstance(k, str)})
        mongo = self.pool.submit(self.fetch_documents, keys_of(doc_keys)) if self.documents else None
        started = time.perf_counter()
        found = [dict() for _ in self.lookups]
        asked = [keys_of(t) for t in lookup_keys]
        if self.lookups and any(asked):
            for lookup, key, value in self.pg.execute(self.lookup_sql, asked).fetchall():
                if value is not None:
                    found[lookup][key] = value
        t_pg = round((time.perf_counter() - started) * 1e3, 3)
        docs, t_mongo = mongo.result() if mongo else ({}, 0.0)
        return found, docs, t_pg, t_mongo

    def fetch_documents(self, keys: list[str]):
        started = time.perf_counter()
        docs: dict[str, dict[str, dict]] = {}
        if keys:
            spec = self.documents
            projection = {"_id": 0, spec["key_field"]: 1, spec["provider_field"]: 1}
            projection.update({p: 1 for p in self.paths})
            cursor = self.mongo[spec["collection"]].find(
                {spec["key_field"]: {"$in": keys}, spec["provider_field"]: {"$in": spec["providers"]}},
                projection, batch_size=max(1, min(len(keys), 10_000)))
            for d in cursor:
                key, provider = d.get(spec["key_field"]), d.get(spec["provider_field"])
                if isinstance(key, str) and isinstance(provider, str):
                    docs.setdefault(key, {}).setdefault(provider, d)
        return docs, round((time.perf_counter() - started) * 1e3, 3)

    # -- normalize -------------------------------------------------------------------------

    def normalizer(self, found, docs):
        """The batch's normalize function: each distinct key (a scanner's unit factor, a
        note's document features) is worked out once, then a record is a few dict reads."""
        factors = [dict() for _ in self.features]  # per request feature: lookup key -> factor
        note_values: dict = {}  # note key -> per feature: value, error text or None

        def lookup_error(keys):
            for lookup, key, values_of in zip(self.lookups, keys, found):
                if key not in values_of:
                    return (f"enrich.postgres: unknown {lookup['name']} '{visible(key)}': no row "
                            f"in {lookup['table']} has {lookup['key_column']} = '{visible(key)}'")
            return None

        def normalize(keys, doc_key, values):
            error = lookup_error(keys)
            if error:
                return error
            by_note = None
            if self.documents:
                by_note = note_values.get(doc_key)
                if by_note is None:
                    by_note = note_values[doc_key] = self.document_features(doc_key, docs)
                if isinstance(by_note, str):
                    return by_note
            row = []
            for i, (name, lookup, fixed, column) in enumerate(self.request_roads):
                if column is not None:
                    key = keys[lookup] if lookup is not None else None
                    factor = factors[i].get(key)
                    if factor is None:
                        factor = factors[i][key] = self.request_factor(
                            name, lookup, fixed, column, key, found)
                    if isinstance(factor, str):
                        return factor
                    value = values[i] * factor
                else:
                    value = by_note[i]
                    if isinstance(value, str):
                        return value
                if not math.isfinite(value):
                    return (f"normalize: {name} overflows in canonical units (it becomes "
                            f"{'inf' if value > 0 else '-inf'}); the value is out of any real "
                            "range")
                row.append(value)
            return row

        return normalize

    def request_factor(self, name, lookup, fixed, column, key, found):
        """The unit factor of a request feature for one lookup key, or the error text."""
        if lookup is None:
            unit, words = fixed, f"{column} is in"
        else:
            owner = self.lookups[lookup]["name"]
            unit, words = found[lookup][key], f"{owner} '{key}' reports {column} in"
        factor = self.units.get(unit)
        return self.unknown_unit(words, unit) if factor is None else factor

    def document_features(self, doc_key, docs):
        """A note's document features (None for the request features) from its preferred
        provider, each a canonical value or an error text; or the note's own error text."""
        by_provider = docs.get(doc_key, {})
        provider = next((p for p in self.documents["providers"] if p in by_provider), None)
        if provider is None:
            return (f"enrich.mongo: unknown note '{visible(doc_key)}': no provider has a scan "
                    "document for it")
        doc = by_provider[provider]
        out = []
        for feature in self.features:
            road = feature["road"].get("document")
            if road is None:
                out.append(None)
                continue
            pfield = road["providers"].get(provider)
            if pfield is None:
                out.append(f"enrich.mongo: provider {provider} has no field for "
                           f"{feature['name']} (note '{doc_key}')")
                continue
            raw = doc
            for part in pfield["path"].split("."):
                raw = raw.get(part, KeyError) if isinstance(raw, dict) else KeyError
            if raw is KeyError:
                out.append(f"enrich.mongo: provider {provider} document for note '{doc_key}' "
                           f"has no field {pfield['path']}")
            elif isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw):
                what = ("null" if raw is None else f"the text {json.dumps(raw[:32])}"
                        if isinstance(raw, str) else f"a {type(raw).__name__} value")
                out.append(f"enrich.mongo: provider {provider} field {pfield['path']} of note "
                           f"'{doc_key}' holds {what}, not a finite number")
            elif pfield["unit"] not in self.units:
                out.append(self.unknown_unit(
                    f"provider {provider} field {pfield['path']} is in", pfield["unit"]))
            else:
                out.append(raw * self.units[pfield["unit"]])
        return out

    def unknown_unit(self, words: str, unit: str) -> str:
        return (f"normalize: {words} unit '{unit}', which pipeline spec {self.model.spec['name']} "
                f"does not know (it knows {', '.join(sorted(self.units))}); add the unit to the "
                "spec or fix the reference data")

    # -- answers ---------------------------------------------------------------------------

    def render(self, plan: Plan, scores: list[float], reported: list, timing: dict) -> str:
        if plan.kind == "seed":
            s = plan.seed
            return json.dumps({
                "batch_id": plan.bundle_id, "subjects": s["subjects"], "input": s["features"],
                "output": ["real" if scores[r] >= 0 else "fake" for r in plan.slots],
            }, ensure_ascii=False, separators=(",", ":"))
        rows, errors = [], []
        for rid, slot in zip(plan.ids, plan.slots):
            if isinstance(slot, str):
                errors.append([rid, slot])
                continue
            score = scores[slot]
            if not math.isfinite(score):
                errors.append([rid, "normalize: a feature overflows once scaled for the model "
                               f"(the score is {score}); a value is out of any real range"])
                continue
            rows.append([rid, "real" if score >= 0 else "fake", score] + reported[slot])
        return json.dumps({
            "bundle_id": plan.bundle_id, "model": self.model.name,
            "model_version": self.model.version, "columns": self.columns, "rows": rows,
            "errors": errors, "timing_ms": timing,
        }, ensure_ascii=False, separators=(",", ":"))

    def send(self, answers: list[tuple[dict, str, str]]) -> set[str]:
        """Sends the answers in batches of 10 within the size limit; the input message ids
        whose answer SQS accepted."""
        accepted: set[str] = set()
        chunk, size = [], 0
        chunks = []
        for answer in answers:
            n = len(answer[2].encode())
            if chunk and (len(chunk) == 10 or size + n > MAX_BATCH_BYTES):
                chunks.append(chunk)
                chunk, size = [], 0
            chunk.append(answer)
            size += n
        if chunk:
            chunks.append(chunk)
        for chunk in chunks:
            pending = {str(i): answer for i, answer in enumerate(chunk)}
            for attempt in range(5):
                entries = [{
                    "Id": i, "MessageBody": body,
                    "MessageAttributes": {
                        "bundle_id": {"DataType": "String", "StringValue": bundle_id}},
                } for i, (_, bundle_id, body) in pending.items()]
                result = self.sqs.send_message_batch(QueueUrl=self.output, Entries=entries)
                self.meter.sqs("SendMessageBatch", sum(
                    message_size(e["MessageBody"], e["MessageAttributes"]) for e in entries))
                for ok in result.get("Successful", []):
                    accepted.add(pending.pop(ok["Id"])[0]["MessageId"])
                if not pending:
                    break
                time.sleep(0.1 * 2 ** attempt)
        return accepted

    def dead_letter(self, refused: list[tuple[dict, Refused]]) -> list[dict]:
        """Refused bundles to the dead-letter queue with their reason; the ones moved."""
        moved = []
        for m, e in refused:
            log.warning("bundle refused: %s", e)
            if not self.dlq:
                continue
            attributes = {
                "error-stage": {"DataType": "String", "StringValue": e.stage},
                "error-reason": {"DataType": "String", "StringValue": e.reason[:1000]},
                "source-message-id": {"DataType": "String", "StringValue": m["MessageId"]},
            }
            self.sqs.send_message(QueueUrl=self.dlq, MessageBody=m["Body"],
                                  MessageAttributes=attributes)
            self.meter.sqs("SendMessage", message_size(m["Body"], attributes))
            moved.append(m)
        return moved

    def delete(self, messages: list[dict]) -> None:
        for i in range(0, len(messages), 10):
            entries = [{"Id": str(j), "ReceiptHandle": m["ReceiptHandle"]}
                       for j, m in enumerate(messages[i:i + 10])]
            self.sqs.delete_message_batch(QueueUrl=self.input, Entries=entries)
            self.meter.sqs("DeleteMessageBatch")


class Shutdown:
    """SIGTERM and SIGINT: stop between polls; a batch in hand is finished and acknowledged."""

    def __init__(self):
        self.requested, self.busy = False, False
        signal.signal(signal.SIGTERM, self.handle)
        signal.signal(signal.SIGINT, self.handle)

    def handle(self, signum, _frame):
        self.requested = True
        if not self.busy:  # waiting in a long poll: nothing in hand to lose
            raise SystemExit(0)


def main() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    shutdown = Shutdown()
    peer = Peer(dict(os.environ))
    metrics = peer.meter.serve(os.environ.get("PEER_METRICS_ADDR", "127.0.0.1:0"))
    log.info("metrics at %s", metrics)
    log.info("polling %s, answering to %s", peer.input, peer.output)
    try:
        while not shutdown.requested:
            messages = peer.receive()
            if not messages:
                continue
            shutdown.busy = True
            try:
                peer.step(messages)
            except (psycopg.OperationalError, pymongo.errors.PyMongoError) as e:
                # A source is down: leave the messages to come back after their visibility
                # timeout.
                log.error("batch not answered, a source failed: %s", e)
            finally:
                shutdown.busy = False
    finally:
        peer.log_stages()
        log.info("stopped")


if __name__ == "__main__":
    main()
