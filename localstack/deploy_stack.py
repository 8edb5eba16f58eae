"""Deploy a CloudFormation template into LocalStack and write its outputs as shell exports.

Run by localstack/up.sh with the LocalStack venv's python (it has boto3); no awscli needed.
Idempotent: creates the stack, updates it when it exists, and treats "No updates are to be
performed" as success. A stack left in a failed state (ROLLBACK_COMPLETE, ...) is deleted and
created again. Exit status 1 with the stack's failure events when the deploy fails.

  python deploy_stack.py --stack-name NAME --template FILE [--param KEY=VALUE ...]
                         [--env-out FILE] [--copy-env NAME ...]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from datetime import datetime, timezone

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

# Stack output -> environment variable written to the env file.
OUTPUT_ENV = {
    "InputQueueUrl": "ML_PIPELINE_INPUT_QUEUE",
    "OutputQueueUrl": "ML_PIPELINE_OUTPUT_QUEUE",
    "InputDlqUrl": "ML_PIPELINE_INPUT_DLQ",
    "OutputDlqUrl": "ML_PIPELINE_OUTPUT_DLQ",
    "FeedbackQueueUrl": "ML_PIPELINE_FEEDBACK_QUEUE",
    "FeedbackDlqUrl": "ML_PIPELINE_FEEDBACK_DLQ",
    "ModelBucketName": "ML_PIPELINE_MODEL_BUCKET",
    "PayloadBucketName": "ML_PIPELINE_PAYLOAD_BUCKET",
}

# Queue attribute -> stack parameter it must equal (checked after every deploy).
QUEUE_CHECKS = {
    "InputQueueUrl": [("VisibilityTimeout", "VisibilityTimeoutSeconds"),
                      ("MessageRetentionPeriod", "MessageRetentionSeconds"),
                      ("maxReceiveCount", "MaxReceiveCount")],
    "OutputQueueUrl": [("VisibilityTimeout", "VisibilityTimeoutSeconds"),
                       ("MessageRetentionPeriod", "MessageRetentionSeconds"),
                       ("maxReceiveCount", "MaxReceiveCount")],
    "FeedbackQueueUrl": [("VisibilityTimeout", "VisibilityTimeoutSeconds"),
                         ("MessageRetentionPeriod", "MessageRetentionSeconds"),
                         ("maxReceiveCount", "MaxReceiveCount")],
    "InputDlqUrl": [("MessageRetentionPeriod", "DlqMessageRetentionSeconds")],
    "OutputDlqUrl": [("MessageRetentionPeriod", "DlqMessageRetentionSeconds")],
    "FeedbackDlqUrl": [("MessageRetentionPeriod", "DlqMessageRetentionSeconds")],
}

# Queue -> the dead-letter queue its redrive policy must name.
REDRIVE_TARGETS = {
    "InputQueueUrl": "InputDlqUrl",
    "OutputQueueUrl": "OutputDlqUrl",
    "FeedbackQueueUrl": "FeedbackDlqUrl",
}

FAILED_STATES = {"ROLLBACK_COMPLETE", "ROLLBACK_FAILED", "CREATE_FAILED", "DELETE_FAILED"}
DONE_STATES = {"CREATE_COMPLETE", "UPDATE_COMPLETE"}


def log(msg: str) -> None:
    print(f"[stack] {msg}", file=sys.stderr, flush=True)


def stack_status(cfn, name: str) -> str | None:
    try:
        stacks = cfn.describe_stacks(StackName=name)["Stacks"]
    except ClientError as exc:
        if "does not exist" in str(exc):
            return None
        raise
    return stacks[0]["StackStatus"] if stacks else None


def wait_settled(cfn, name: str, timeout: float) -> str | None:
    """Poll until the stack is in no *_IN_PROGRESS state; return that state."""
    deadline = time.monotonic() + timeout
    while True:
        status = stack_status(cfn, name)
        if status is None or not status.endswith("_IN_PROGRESS"):
            return status
        if time.monotonic() > deadline:
            raise TimeoutError(f"stack {name} still {status} after {timeout:.0f}s")
        time.sleep(0.5)


def print_failures(cfn, name: str) -> None:
    try:
        events = cfn.describe_stack_events(StackName=name)["StackEvents"]
    except ClientError:
        return
    for ev in reversed(events):
        if "FAILED" in ev.get("ResourceStatus", "") or ev.get("ResourceStatusReason"):
            log(
                f"  {ev.get('LogicalResourceId')} ({ev.get('ResourceType')}): "
                f"{ev.get('ResourceStatus')} {ev.get('ResourceStatusReason', '')}"
            )


def deploy(cfn, name: str, body: str, params: list[dict], timeout: float) -> str:
    status = wait_settled(cfn, name, timeout)
    if status in FAILED_STATES or status == "DELETE_COMPLETE":
        if status != "DELETE_COMPLETE":
            log(f"stack {name} is {status}: deleting it before creating it again")
            print_failures(cfn, name)
            cfn.delete_stack(StackName=name)
            wait_settled(cfn, name, timeout)
        status = None
    args = dict(StackName=name, TemplateBody=body, Parameters=params)
    if status is None:
        log(f"creating stack {name}")
        cfn.create_stack(**args)
    else:
        log(f"stack {name} exists ({status}): updating")
        try:
            cfn.update_stack(**args)
        except ClientError as exc:
            if "No updates are to be performed" in str(exc):
                log("no changes: nothing to update")
                return status
            raise
    final = wait_settled(cfn, name, timeout)
    if final not in DONE_STATES:
        print_failures(cfn, name)
        raise RuntimeError(f"stack {name} ended in {final}")
    return final


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stack-name", required=True)
    ap.add_argument("--template", required=True)
    ap.add_argument("--param", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--env-out", help="write the outputs as shell exports to this file")
    ap.add_argument("--copy-env", action="append", default=[], metavar="NAME",
                    help="also write this variable from the current environment")
    ap.add_argument("--endpoint", default=os.environ.get("AWS_ENDPOINT_URL", "http://127.0.0.1:4566"))
    ap.add_argument("--region", default=os.environ.get("AWS_REGION", "us-east-1"))
    ap.add_argument("--timeout", type=float, default=300)
    a = ap.parse_args()

    session = boto3.session.Session(
        aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", "test"),
        aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "test"),
        region_name=a.region,
    )
    cfg = Config(retries={"max_attempts": 5, "mode": "standard"}, s3={"addressing_style": "path"})
    cfn = session.client("cloudformation", endpoint_url=a.endpoint, config=cfg)
    params = []
    for p in a.param:
        key, sep, value = p.partition("=")
        if not sep:
            ap.error(f"--param needs KEY=VALUE, got {p!r}")
        params.append({"ParameterKey": key, "ParameterValue": value})
    with open(a.template, encoding="utf-8") as f:
        body = f.read()

    t0 = time.monotonic()
    try:
        status = deploy(cfn, a.stack_name, body, params, a.timeout)
    except (ClientError, RuntimeError, TimeoutError) as exc:
        log(f"deploy failed: {exc}")
        return 1
    stack = cfn.describe_stacks(StackName=a.stack_name)["Stacks"][0]
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
    log(f"stack {a.stack_name}: {status} in {time.monotonic() - t0:.1f}s")
    for key in sorted(outputs):
        log(f"  {key} = {outputs[key]}")
    missing = [k for k in OUTPUT_ENV if k not in outputs]
    if missing:
        log(f"stack outputs missing: {', '.join(missing)}")
        return 1

    # Check the resources answer where the outputs say they are, with the configured settings.
    sqs = session.client("sqs", endpoint_url=a.endpoint, config=cfg)
    s3 = session.client("s3", endpoint_url=a.endpoint, config=cfg)
    stack_params = {p["ParameterKey"]: p["ParameterValue"] for p in stack.get("Parameters", [])}
    drift = []
    for key, checks in QUEUE_CHECKS.items():
        attrs = sqs.get_queue_attributes(QueueUrl=outputs[key], AttributeNames=["All"])["Attributes"]
        for attr, param in checks:
            if param not in stack_params:
                continue
            if attr == "maxReceiveCount":
                have = str(json.loads(attrs.get("RedrivePolicy", "{}")).get("maxReceiveCount"))
            else:
                have = attrs.get(attr)
            if have != stack_params[param]:
                drift.append(f"{key}: {attr} is {have}, parameter {param} is {stack_params[param]}")
    for key, dlq_key in REDRIVE_TARGETS.items():
        dlq_arn = sqs.get_queue_attributes(QueueUrl=outputs[dlq_key],
                                           AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        attrs = sqs.get_queue_attributes(QueueUrl=outputs[key], AttributeNames=["RedrivePolicy"])["Attributes"]
        target = json.loads(attrs.get("RedrivePolicy", "{}")).get("deadLetterTargetArn")
        if target != dlq_arn:
            drift.append(f"{key}: dead-letter target is {target}, expected {dlq_arn}")
    s3.head_bucket(Bucket=outputs["ModelBucketName"])
    s3.head_bucket(Bucket=outputs["PayloadBucketName"])

    if a.env_out:
        when = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        lines = [
            f"# Written by localstack/up.sh at {when} from CloudFormation stack {a.stack_name}",
            f"# ({a.template}, endpoint {a.endpoint}). Load with: set -a; . {a.env_out}; set +a",
            f"export ML_PIPELINE_STACK={shlex.quote(a.stack_name)}",
        ]
        lines += [f"export {env}={shlex.quote(outputs[key])}" for key, env in OUTPUT_ENV.items()]
        for name in a.copy_env:
            if name not in os.environ:
                log(f"--copy-env {name}: not set in the environment")
                return 1
            lines.append(f"export {name}={shlex.quote(os.environ[name])}")
        tmp = f"{a.env_out}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        os.replace(tmp, a.env_out)
        log(f"wrote {a.env_out}")
    if drift:
        # Seen with LocalStack 4.8.1: UpdateStack reports UPDATE_COMPLETE for changed SQS
        # properties without applying them. Its state is in memory (PERSISTENCE=0), so a
        # restart followed by a fresh create fixes it.
        for d in drift:
            log(f"MISMATCH {d}")
        log("the queues do not match the stack parameters (LocalStack did not apply an update):")
        log("restart LocalStack to recreate them: localstack/localstack.sh stop && localstack/up.sh")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
