//! Body compression (docs/contract.md section 4): plain, or gzip/zstd then base64, as the
//! `content-encoding` message attribute says.

use std::borrow::Cow;
use std::fmt;
use std::io::{Read, Write};
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;

/// The message attribute that names a body's encoding.
pub const CONTENT_ENCODING_ATTRIBUTE: &str = "content-encoding";

/// How a message body is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ContentEncoding {
    /// UTF-8 JSON as is.
    #[default]
    Identity,
    /// gzip, then base64.
    Gzip,
    /// zstd, then base64.
    Zstd,
}

impl ContentEncoding {
    /// The attribute value, or `None` for a plain body (which carries no attribute).
    pub fn attribute(self) -> Option<&'static str> {
        match self {
            ContentEncoding::Identity => None,
            ContentEncoding::Gzip => Some("gzip"),
            ContentEncoding::Zstd => Some("zstd"),
        }
    }
}

impl FromStr for ContentEncoding {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "identity" | "none" | "plain" => Ok(Self::Identity),
            "gzip" => Ok(Self::Gzip),
            "zstd" => Ok(Self::Zstd),
            other => Err(format!(
                "content-encoding '{}' is not one of gzip, zstd or identity",
                crate::text::truncate_chars(other, 32)
            )),
        }
    }
}

impl fmt::Display for ContentEncoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.attribute().unwrap_or("identity"))
    }
}

/// Encodes a JSON body for the queue.
pub fn compress(encoding: ContentEncoding, json: &[u8]) -> String {
    match encoding {
        ContentEncoding::Identity => String::from_utf8_lossy(json).into_owned(),
        ContentEncoding::Gzip => {
            let mut enc = flate2::write::GzEncoder::new(
                Vec::with_capacity(json.len() / 4),
                flate2::Compression::fast(),
            );
            enc.write_all(json).expect("writing to a Vec cannot fail");
            BASE64.encode(enc.finish().expect("writing to a Vec cannot fail"))
        }
        ContentEncoding::Zstd => {
            BASE64.encode(zstd::bulk::compress(json, 3).expect("zstd level 3 is valid"))
        }
    }
}

/// Decodes a body to JSON bytes, refusing output larger than `max_bytes` (a decompression bomb).
pub fn decompress(
    encoding: ContentEncoding,
    body: &str,
    max_bytes: usize,
) -> Result<Cow<'_, [u8]>, String> {
    let packed = match encoding {
        ContentEncoding::Identity => return Ok(Cow::Borrowed(body.as_bytes())),
        _ => BASE64
            .decode(body.trim())
            .map_err(|e| format!("{encoding} body is not valid base64: {e}"))?,
    };
    let mut out = Vec::with_capacity(packed.len() * 4);
    let limit = max_bytes as u64 + 1;
    let read = match encoding {
        ContentEncoding::Gzip => flate2::read::GzDecoder::new(packed.as_slice())
            .take(limit)
            .read_to_end(&mut out),
        ContentEncoding::Zstd => zstd::stream::read::Decoder::new(packed.as_slice())
            .and_then(|d| d.take(limit).read_to_end(&mut out)),
        ContentEncoding::Identity => unreachable!("returned above"),
    };
    read.map_err(|e| format!("{encoding} body does not decompress: {e}"))?;
    if out.len() > max_bytes {
        return Err(format!(
            "{encoding} body decompresses to more than the limit of {max_bytes} bytes"
        ));
    }
    Ok(Cow::Owned(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_codecs_round_trip() {
        let json = br#"{"bundle_id":"b","columns":[],"rows":[]}"#;
        for enc in [
            ContentEncoding::Identity,
            ContentEncoding::Gzip,
            ContentEncoding::Zstd,
        ] {
            let body = compress(enc, json);
            assert_eq!(&*decompress(enc, &body, 1 << 20).unwrap(), json, "{enc}");
        }
    }

    #[test]
    fn a_bomb_is_refused_at_the_limit() {
        let big = vec![b' '; 2 << 20];
        let body = compress(ContentEncoding::Gzip, &big);
        assert!(body.len() < 20_000);
        let err = decompress(ContentEncoding::Gzip, &body, 1 << 20).unwrap_err();
        assert!(err.contains("more than the limit"), "{err}");
    }

    #[test]
    fn a_wrong_codec_is_an_error_not_a_panic() {
        let gz = compress(ContentEncoding::Gzip, b"{}");
        assert!(decompress(ContentEncoding::Zstd, &gz, 1024).is_err());
        assert!(decompress(ContentEncoding::Gzip, "not base64!", 1024).is_err());
        let truncated = &gz[..gz.len() / 2];
        assert!(decompress(ContentEncoding::Gzip, truncated, 1024).is_err());
    }

    #[test]
    fn attribute_values_parse() {
        assert_eq!("GZIP".parse(), Ok(ContentEncoding::Gzip));
        assert_eq!("".parse(), Ok(ContentEncoding::Identity));
        assert!("br".parse::<ContentEncoding>().is_err());
    }
}
