//! AWS clients from `aws-config`'s default chain. `AWS_ENDPOINT_URL` (the SDK's own variable)
//! points them at LocalStack; nothing here knows about LocalStack.

use std::time::Duration;

use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, SdkConfig};

/// The shared SDK configuration; `operation_timeout` bounds every call, retries included
/// (aws-sdk-rust#1094: a receive can hang without it).
pub async fn sdk_config(operation_timeout: Duration) -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(3))
                .operation_timeout(operation_timeout)
                .build(),
        )
        .load()
        .await
}

/// An S3 client; `force_path_style` is for endpoints without virtual-host buckets.
pub fn s3(config: &SdkConfig, force_path_style: bool) -> aws_sdk_s3::Client {
    let conf = aws_sdk_s3::config::Builder::from(config)
        .force_path_style(force_path_style)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

/// An SQS client.
pub fn sqs(config: &SdkConfig) -> aws_sdk_sqs::Client {
    aws_sdk_sqs::Client::new(config)
}
