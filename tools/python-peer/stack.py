"""compare.sh's helpers on the local stack (boto3, the AWS SDK's own variables):

    python stack.py queues NAME      # creates NAME-in and NAME-out, prints both URLs
    python stack.py delete URL...    # deletes these queues
    python stack.py bucket NAME      # creates a versioned bucket unless it exists
    python stack.py drop-bucket NAME # deletes every object version, then the bucket
"""

import os
import sys

import boto3
import botocore.config
import botocore.exceptions


def s3():
    path_style = os.environ.get("ML_PIPELINE_S3_FORCE_PATH_STYLE", "").lower() in ("1", "true")
    config = botocore.config.Config(s3={"addressing_style": "path"} if path_style else None)
    return boto3.client("s3", config=config)


def main(command: str, *args: str) -> int:
    if command == "queues":
        (name,) = args
        sqs = boto3.client("sqs")
        for suffix in ("in", "out"):
            url = sqs.create_queue(QueueName=f"{name}-{suffix}",
                                   Attributes={"VisibilityTimeout": "30"})["QueueUrl"]
            print(url)
    elif command == "delete":
        sqs = boto3.client("sqs")
        for url in args:
            try:
                sqs.delete_queue(QueueUrl=url)
            except botocore.exceptions.ClientError as e:
                print(f"{url}: {e}", file=sys.stderr)
    elif command == "bucket":
        (name,) = args
        client = s3()
        try:
            client.head_bucket(Bucket=name)
        except botocore.exceptions.ClientError:
            client.create_bucket(Bucket=name)
            client.put_bucket_versioning(
                Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    elif command == "drop-bucket":
        (name,) = args
        client = s3()
        for page in client.get_paginator("list_object_versions").paginate(Bucket=name):
            doomed = [{"Key": v["Key"], "VersionId": v["VersionId"]}
                      for v in page.get("Versions", []) + page.get("DeleteMarkers", [])]
            if doomed:
                client.delete_objects(Bucket=name, Delete={"Objects": doomed})
        client.delete_bucket(Bucket=name)
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
