"""One round trip through AWS's own Python SQS Extended Client (amazon-sqs-extended-client).

Run by tests/integration/extended_client.rs with the venv of tools/extended-client/venv.sh:
sends a bundle (read from a file) to the worker's input queue with the client's large-payload
support on, so that the client writes it to S3 and sends its pointer; then receives the answer
from the output queue through the same client, which reads an offloaded answer back from S3,
and deletes it. Prints one JSON line on stdout for the test to check:

  {"bundle_id": ..., "rows": N, "errors": N, "answer_offloaded": true, "answer_bytes": N}

The endpoint, region and keys come from the environment (AWS_ENDPOINT_URL...), as for the worker.

  python interop.py --input-queue URL --output-queue URL --bucket NAME --bundle FILE
"""

import argparse
import json
import sys
import time

import boto3
import sqs_extended_client  # noqa: F401  (replaces boto3's Session with the client's)
from botocore.config import Config


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input-queue", required=True)
    parser.add_argument("--output-queue", required=True)
    parser.add_argument("--bucket", required=True, help="where the client offloads the bundle")
    parser.add_argument("--bundle", required=True, help="a file holding the bundle's JSON")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds to wait")
    args = parser.parse_args()

    session = boto3.session.Session()
    # The client's S3 client comes from the session; path-style addressing for the local
    # endpoint, as ML_PIPELINE_S3_FORCE_PATH_STYLE does for the worker.
    session._session.set_default_client_config(Config(s3={"addressing_style": "path"}))
    sqs = session.client("sqs")
    sqs.large_payload_support = args.bucket

    with open(args.bundle, encoding="utf-8") as f:
        body = f.read()
    sent = sqs.send_message(QueueUrl=args.input_queue, MessageBody=body)
    print(f"sent {len(body)} bytes as message {sent['MessageId']}", file=sys.stderr)

    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        got = sqs.receive_message(
            QueueUrl=args.output_queue,
            MaxNumberOfMessages=1,
            WaitTimeSeconds=5,
            MessageAttributeNames=["All"],
        )
        for message in got.get("Messages", []):
            handle = message["ReceiptHandle"]
            answer = json.loads(message["Body"])
            sqs.delete_message(QueueUrl=args.output_queue, ReceiptHandle=handle)
            print(json.dumps({
                "bundle_id": answer.get("bundle_id"),
                "rows": len(answer.get("rows", [])),
                "errors": len(answer.get("errors", [])),
                # The client rewrites the receipt handle of a message it read from S3.
                "answer_offloaded": sqs.is_s3_receipt_handle(handle),
                "answer_bytes": len(message["Body"].encode("utf-8")),
            }))
            return 0
    print(f"no answer on {args.output_queue} within {args.timeout:.0f}s", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
