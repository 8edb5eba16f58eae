#!/usr/bin/env python3
"""Writes the seed corpus of the `decode` fuzz target from fixtures/default (stdlib only).

Each seed is one fuzz input in the target's layout (see fuzz_targets/decode.rs): a mode byte,
then the message. Seeds: a plain v1 bundle, v1 bundles as raw gzip and zstd streams, a
seed-format bundle, and every poison case in its own encoding. The gzip bomb is left out: every mutation of
it would decompress 16 MiB, which slows the fuzzer down a hundredfold; the unit tests cover it.

Usage: python3 fuzz/make_seeds.py [OUT_DIR]   (default fuzz/seeds/decode)
"""

import base64
import gzip
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures" / "default"

# Mode bytes of fuzz_targets/decode.rs.
PLAIN, GZIP_RAW, ZSTD_RAW, GZIP_TEXT, ZSTD_TEXT, NAMED = range(6)


def first_line(name):
    with open(FIXTURES / name, encoding="utf-8") as f:
        return json.loads(f.readline())


def seed(mode, payload):
    return bytes([mode]) + payload


def poison_seed(case):
    body = case["body"].encode("utf-8")
    attribute = case["content_encoding"]
    if attribute is None:
        return seed(PLAIN, body)
    # A well-formed base64 body becomes a raw stream, so mutations reach the decompressor.
    try:
        raw = base64.b64decode(case["body"], validate=True)
    except ValueError:
        raw = None
    if attribute == "gzip":
        return seed(GZIP_RAW, raw) if raw is not None else seed(GZIP_TEXT, body)
    if attribute == "zstd":
        return seed(ZSTD_RAW, raw) if raw is not None else seed(ZSTD_TEXT, body)
    return seed(NAMED, attribute.encode("utf-8") + b"\0" + body)


def seeds():
    bundle = first_line("bundles.jsonl")
    plain = json.dumps(bundle, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    yield "v1-100-plain", seed(PLAIN, plain)
    small = dict(bundle, rows=bundle["rows"][:5])
    small = json.dumps(small, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    yield "v1-5-gzip", seed(GZIP_RAW, gzip.compress(small, mtime=0))
    yield "v1-5-plain-named", seed(NAMED, b"identity\0" + small)
    seed_bundle = first_line("seed_bundles.jsonl")
    yield "seed-format", seed(PLAIN, json.dumps(seed_bundle, separators=(",", ":")).encode())
    with open(FIXTURES / "poison.jsonl", encoding="utf-8") as f:
        for line in f:
            case = json.loads(line)
            if case["name"] != "gzip-bomb":
                yield "poison-" + case["name"], poison_seed(case)
            if case["name"] == "plain-label-zstd-body":
                # The stdlib has no zstd; this case's body is a valid zstd stream of a bundle.
                yield "v1-zstd", seed(ZSTD_RAW, base64.b64decode(case["body"]))


def main():
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "fuzz" / "seeds" / "decode"
    out.mkdir(parents=True, exist_ok=True)
    for name, data in seeds():
        (out / name).write_bytes(data)


if __name__ == "__main__":
    main()
