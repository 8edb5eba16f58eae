//! Fuzzes `bundle::decode`, the first thing a queue message meets: whatever the body and its
//! `content-encoding` attribute, decoding returns a bundle or a `DecodeError`, never panics, and
//! a bundle it returns encodes back to a body that decodes to the same bundle.
//!
//! Input layout: the first byte chooses how the rest becomes a message (`byte % 6`):
//! - 0: no attribute, the rest is the body (UTF-8, invalid bytes replaced);
//! - 1, 2: attribute `gzip` / `zstd`, the body is the base64 of the rest, so the fuzzer mutates
//!   the compressed stream itself;
//! - 3, 4: attribute `gzip` / `zstd`, the rest is the body as text (not base64, wrong codec...);
//! - 5: the rest up to the first NUL byte is the attribute (garbage), the remainder the body.
//!
//! Run: `cargo fuzz run decode fuzz/seeds/decode` from the repository root (see fuzz/README.md).

#![no_main]

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use libfuzzer_sys::fuzz_target;

use ml_pipeline::bundle::encode::encode;
use ml_pipeline::bundle::{decode, ContentEncoding, InputBundle, Limits};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    let (attribute, body) = match mode % 6 {
        0 => (None, text(rest)),
        1 => (Some("gzip".to_owned()), BASE64.encode(rest)),
        2 => (Some("zstd".to_owned()), BASE64.encode(rest)),
        3 => (Some("gzip".to_owned()), text(rest)),
        4 => (Some("zstd".to_owned()), text(rest)),
        _ => {
            let (name, body) =
                rest.split_at(rest.iter().position(|&b| b == 0).unwrap_or(rest.len()));
            (Some(text(name)), text(body.get(1..).unwrap_or_default()))
        }
    };
    let limits = Limits::default();
    if let Ok(bundle) = decode(&body, attribute.as_deref(), &limits) {
        for encoding in [
            ContentEncoding::Identity,
            ContentEncoding::Gzip,
            ContentEncoding::Zstd,
        ] {
            let again = match &bundle {
                InputBundle::Request(b) => encode(b, encoding),
                InputBundle::Seed(b) => encode(b, encoding),
            };
            let decoded = decode(&again, encoding.attribute(), &limits);
            assert_eq!(
                decoded.as_ref(),
                Ok(&bundle),
                "re-encoded as {encoding}: {again}"
            );
        }
    }
});
