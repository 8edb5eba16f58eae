"""The queue and bucket side of the image check (localstack/image.sh check).

Runs with the LocalStack venv's python (boto3), with the local stack's AWS environment. The image
check works on its own queues and bucket, so it never takes or answers another run's messages:

  image_check.py setup PREFIX           create PREFIX-input (+ -input-dlq), PREFIX-output and the
                                        versioned bucket PREFIX; print their env lines
  image_check.py answers QUEUE N OUT [--timeout S]
                                        read (and delete) QUEUE's answers until N distinct bundles
                                        are answered; write them to OUT, `timing_ms` dropped
                                        (it is time, not an answer); print a JSON summary with
                                        the wall time of the first answer
  image_check.py counts QUEUE           visible and in-flight messages, as JSON
  image_check.py compare A B            exit 1 unless two answer files hold the same answers
  image_check.py teardown PREFIX        delete the queues and the bucket (every object version)
"""

import base64
import gzip
import json
import sys
import time

import boto3


def sqs():
    return boto3.client("sqs")


def s3():
    return boto3.client("s3")


def setup(prefix):
    q = sqs()
    dlq = q.create_queue(QueueName=f"{prefix}-input-dlq")["QueueUrl"]
    dlq_arn = q.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    # As infra/messaging-storage.yaml: redrive after 5 receives, 60 s visibility.
    redrive = json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "5"})
    inp = q.create_queue(
        QueueName=f"{prefix}-input",
        Attributes={"RedrivePolicy": redrive, "VisibilityTimeout": "60"},
    )["QueueUrl"]
    out = q.create_queue(QueueName=f"{prefix}-output")["QueueUrl"]
    b = s3()
    b.create_bucket(Bucket=prefix)
    b.put_bucket_versioning(Bucket=prefix, VersioningConfiguration={"Status": "Enabled"})
    print(f"ML_PIPELINE_INPUT_QUEUE={inp}")
    print(f"ML_PIPELINE_INPUT_DLQ={dlq}")
    print(f"ML_PIPELINE_OUTPUT_QUEUE={out}")
    print(f"ML_PIPELINE_MODEL_BUCKET={prefix}")


def body_of(message):
    attrs = message.get("MessageAttributes", {})
    enc = attrs.get("content-encoding", {}).get("StringValue", "")
    body = message["Body"]
    if enc == "gzip":
        return gzip.decompress(base64.b64decode(body))
    if enc:
        raise SystemExit(f"answer {message['MessageId']} has content-encoding {enc!r}: not read here")
    return body.encode()


def answers(queue, wanted, out, timeout):
    q = sqs()
    started = time.time()
    first = None
    got = {}
    while len(got) < wanted and time.time() - started < timeout:
        r = q.receive_message(
            QueueUrl=queue,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=1,
            MessageAttributeNames=["All"],
        )
        messages = r.get("Messages", [])
        for m in messages:
            answer = json.loads(body_of(m))
            answer.pop("timing_ms", None)
            bundle = answer.get("bundle_id") or answer.get("batch_id")
            if first is None:
                first = time.time()
            got[bundle] = answer
        if messages:
            q.delete_message_batch(
                QueueUrl=queue,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                    for i, m in enumerate(messages)
                ],
            )
    with open(out, "w") as f:
        json.dump([got[k] for k in sorted(got)], f, indent=1, sort_keys=True)
    print(json.dumps({"answered": len(got), "wanted": wanted, "first_answer_at": first}))
    return 0 if len(got) >= wanted else 1


def counts(queue):
    a = sqs().get_queue_attributes(
        QueueUrl=queue,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    print(
        json.dumps(
            {
                "visible": int(a["ApproximateNumberOfMessages"]),
                "in_flight": int(a["ApproximateNumberOfMessagesNotVisible"]),
            }
        )
    )


def compare(a, b):
    with open(a) as f:
        left = json.load(f)
    with open(b) as f:
        right = json.load(f)
    if left == right:
        records = sum(len(x.get("rows", [])) + len(x.get("errors", [])) for x in left)
        print(f"same answers: {len(left)} bundles, {records} records")
        return 0
    lk = {x.get("bundle_id") or x.get("batch_id"): x for x in left}
    rk = {x.get("bundle_id") or x.get("batch_id"): x for x in right}
    for k in sorted(set(lk) | set(rk)):
        if lk.get(k) != rk.get(k):
            print(f"bundle {k} differs:\n  {a}: {json.dumps(lk.get(k))[:400]}\n  {b}: {json.dumps(rk.get(k))[:400]}")
    return 1


def teardown(prefix):
    q = sqs()
    for name in (f"{prefix}-input", f"{prefix}-input-dlq", f"{prefix}-output"):
        try:
            q.delete_queue(QueueUrl=q.get_queue_url(QueueName=name)["QueueUrl"])
        except q.exceptions.QueueDoesNotExist:
            pass
    b = s3()
    try:
        for page in b.get_paginator("list_object_versions").paginate(Bucket=prefix):
            objs = [
                {"Key": v["Key"], "VersionId": v["VersionId"]}
                for v in page.get("Versions", []) + page.get("DeleteMarkers", [])
            ]
            if objs:
                b.delete_objects(Bucket=prefix, Delete={"Objects": objs})
        b.delete_bucket(Bucket=prefix)
    except b.exceptions.NoSuchBucket:
        pass


def main(argv):
    cmd, args = argv[1], argv[2:]
    if cmd == "setup":
        setup(args[0])
    elif cmd == "answers":
        timeout = float(args[4]) if len(args) > 4 and args[3] == "--timeout" else 120.0
        return answers(args[0], int(args[1]), args[2], timeout)
    elif cmd == "counts":
        counts(args[0])
    elif cmd == "compare":
        return compare(args[0], args[1])
    elif cmd == "teardown":
        teardown(args[0])
    else:
        raise SystemExit(f"unknown command {cmd!r}; see the module docstring")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
