"""Start LocalStack (host mode, no Docker) bound to loopback only.

Run with the LocalStack venv's python; localstack/localstack.sh sets the environment
(SERVICES, GATEWAY_LISTEN, GATEWAY_SERVER=twisted, ...) and execs this file, so the PID it
records is this process.

Two fixes are applied before LocalStack's own entry point runs
(see /work/shared/reference/LOCAL_SERVICES.md):

1. The twisted gateway ignores the host part of GATEWAY_LISTEN and creates
   TCP4ServerEndpoint(reactor, port), i.e. it binds 0.0.0.0. Wrapping the endpoint class so
   that an empty interface becomes 127.0.0.1 (or $ML_PIPELINE_BIND_HOST) binds loopback only.
2. At S3 start-up LocalStack resolves s3.localhost.localstack.cloud, which is slow offline;
   pre-setting CACHE_S3_HOSTNAME_DNS_STATUS = False skips the lookup.
"""

import os
import sys

BIND_HOST = os.environ.get("ML_PIPELINE_BIND_HOST", "127.0.0.1")


def _patch_twisted_bind() -> None:
    from twisted.internet import endpoints

    original = endpoints.TCP4ServerEndpoint

    def loopback_tcp4_endpoint(reactor, port, backlog=50, interface=""):
        return original(reactor, port, backlog, interface or BIND_HOST)

    endpoints.TCP4ServerEndpoint = loopback_tcp4_endpoint


def _skip_s3_dns_lookup() -> None:
    from localstack.utils.aws import aws_stack

    aws_stack.CACHE_S3_HOSTNAME_DNS_STATUS = False


def main() -> None:
    _patch_twisted_bind()
    _skip_s3_dns_lookup()

    from localstack.runtime.main import main as localstack_main

    print(f"ml-pipeline launcher: pid {os.getpid()}, binding {BIND_HOST}", flush=True)
    localstack_main()


if __name__ == "__main__":
    sys.exit(main())
