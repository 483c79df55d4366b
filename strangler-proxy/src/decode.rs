//! Content codings: a captured body decoded for comparison, so two answers that say the same
//! thing compare equal however each side chose to compress it (RFC 9110 §8.4).
//!
//! Output is bounded: a decoder is read at most `limit + 1` bytes far, so a decompression bomb
//! costs at most the limit in memory and the time to inflate that much, and is reported as
//! [`DecodeError::TooLarge`]. Pure (no I/O), tested with tables.

use std::io::Read;

use bytes::Bytes;

/// Why a body could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The decoded body is larger than the limit.
    TooLarge,
    /// A coding this proxy does not know (`compress`, a private token, …).
    Unknown(String),
    /// A known coding whose data is corrupt.
    Corrupt {
        /// The coding, lower-cased.
        coding: String,
        /// What the decoder said.
        why: String,
    },
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::TooLarge => f.write_str("larger than the capture limit once decoded"),
            DecodeError::Unknown(coding) => write!(f, "unknown content coding {coding:?}"),
            DecodeError::Corrupt { coding, why } => write!(f, "{coding} does not decode: {why}"),
        }
    }
}

/// The codings named by a `content-encoding` value, in the order they were applied,
/// lower-cased; `identity` left out.
pub fn codings(content_encoding: &str) -> Vec<String> {
    content_encoding
        .split(',')
        .map(|c| c.trim().to_ascii_lowercase())
        .filter(|c| !c.is_empty() && c != "identity")
        .collect()
}

/// `body` with every coding of `content_encoding` undone (last applied first), at most `limit`
/// bytes long. A body with no coding is returned as it is.
pub fn decode(
    body: &Bytes,
    content_encoding: Option<&str>,
    limit: usize,
) -> Result<Bytes, DecodeError> {
    let codings = content_encoding.map(codings).unwrap_or_default();
    if codings.is_empty() || body.is_empty() {
        // An empty body has nothing to undo (a HEAD or 204 answer keeps its header).
        return if body.len() > limit {
            Err(DecodeError::TooLarge)
        } else {
            Ok(body.clone())
        };
    }
    let mut data = body.clone();
    for coding in codings.iter().rev() {
        data = decode_one(coding, &data, limit)?;
    }
    Ok(data)
}

fn decode_one(coding: &str, data: &[u8], limit: usize) -> Result<Bytes, DecodeError> {
    let corrupt = |why: std::io::Error| DecodeError::Corrupt {
        coding: coding.to_string(),
        why: why.to_string(),
    };
    match coding {
        "gzip" | "x-gzip" => {
            bounded(flate2::read::MultiGzDecoder::new(data), limit).map_err(|e| e.or(corrupt))
        }
        // RFC 9110 §8.4.1.2: "deflate" is the zlib format; some servers send raw deflate
        // instead, which browsers accept, so that is tried second.
        "deflate" => bounded(flate2::read::ZlibDecoder::new(data), limit)
            .or_else(|e| match e {
                Failure::TooLarge => Err(Failure::TooLarge),
                Failure::Io(_) => bounded(flate2::read::DeflateDecoder::new(data), limit),
            })
            .map_err(|e| e.or(corrupt)),
        "br" => bounded(brotli::Decompressor::new(data, 8192), limit).map_err(|e| e.or(corrupt)),
        "zstd" => {
            let mut decoder = zstd::stream::read::Decoder::new(data).map_err(corrupt)?;
            // RFC 8878 §3.1.1.1.2: HTTP decoders need not take windows over 8 MiB; a larger
            // one would make the decoder's own buffer the bomb.
            decoder.window_log_max(23).map_err(corrupt)?;
            bounded(decoder, limit).map_err(|e| e.or(corrupt))
        }
        other => Err(DecodeError::Unknown(other.to_string())),
    }
}

enum Failure {
    TooLarge,
    Io(std::io::Error),
}

impl Failure {
    fn or(self, corrupt: impl FnOnce(std::io::Error) -> DecodeError) -> DecodeError {
        match self {
            Failure::TooLarge => DecodeError::TooLarge,
            Failure::Io(e) => corrupt(e),
        }
    }
}

/// Reads `reader` to its end, refusing past `limit` bytes without reading much further.
fn bounded(reader: impl Read, limit: usize) -> Result<Bytes, Failure> {
    let mut out = Vec::new();
    reader
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(Failure::Io)?;
    if out.len() > limit {
        return Err(Failure::TooLarge);
    }
    Ok(Bytes::from(out))
}

/// Whether a client sending `accept_encoding` takes an answer coded with `coding` (`identity`
/// for none): named with a non-zero q, or matched by `*`; identity unless refused outright.
pub fn accepts(accept_encoding: Option<&str>, coding: &str) -> bool {
    let coding = coding.trim().to_ascii_lowercase();
    let Some(accept) = accept_encoding else {
        return coding == "identity";
    };
    let mut star = None;
    for item in accept.split(',') {
        let mut parts = item.split(';');
        let name = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = parts
            .filter_map(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .or_else(|| p.trim().strip_prefix("Q="))
            })
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        if name == coding || (coding == "gzip" && name == "x-gzip") {
            return q > 0.0;
        }
        if name == "*" {
            star = Some(q > 0.0);
        }
    }
    star.unwrap_or(coding == "identity")
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    const LIMIT: usize = 1024 * 1024;

    fn gzip(data: &[u8]) -> Bytes {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        Bytes::from(e.finish().unwrap())
    }

    fn zlib(data: &[u8]) -> Bytes {
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        Bytes::from(e.finish().unwrap())
    }

    fn raw_deflate(data: &[u8]) -> Bytes {
        let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        Bytes::from(e.finish().unwrap())
    }

    fn br(data: &[u8]) -> Bytes {
        let mut out = Vec::new();
        {
            let mut w = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
            w.write_all(data).unwrap();
        }
        Bytes::from(out)
    }

    fn zstd(data: &[u8]) -> Bytes {
        Bytes::from(zstd::stream::encode_all(data, 3).unwrap())
    }

    #[test]
    fn every_coding_a_client_may_ask_for_decodes() {
        let json = br#"{"id":1,"name":"Marceline"}"#;
        let cases: &[(&str, Bytes)] = &[
            ("gzip", gzip(json)),
            ("x-gzip", gzip(json)),
            ("GZIP", gzip(json)),
            ("deflate", zlib(json)),
            ("deflate", raw_deflate(json)),
            ("br", br(json)),
            ("zstd", zstd(json)),
            ("identity", Bytes::from_static(json)),
            ("gzip, br", br(&gzip(json))),
        ];
        for (coding, body) in cases {
            assert_eq!(
                decode(body, Some(coding), LIMIT).as_deref(),
                Ok(&json[..]),
                "{coding}"
            );
        }
        assert_eq!(decode(&Bytes::new(), Some("gzip"), LIMIT), Ok(Bytes::new()));
    }

    #[test]
    fn unknown_and_corrupt_codings_are_told_apart() {
        let body = Bytes::from_static(b"not compressed");
        assert_eq!(
            decode(&body, Some("compress"), LIMIT),
            Err(DecodeError::Unknown("compress".into()))
        );
        for coding in ["gzip", "deflate", "br", "zstd"] {
            assert!(
                matches!(
                    decode(&body, Some(coding), LIMIT),
                    Err(DecodeError::Corrupt { .. })
                ),
                "{coding}"
            );
        }
    }

    #[test]
    fn a_decompression_bomb_stops_at_the_limit() {
        // 64 MiB of zeros compress to about 64 KiB; decoding stops one byte past the limit.
        let zeros = vec![0u8; 64 * 1024 * 1024];
        for (coding, body) in [
            ("gzip", gzip(&zeros)),
            ("br", br(&zeros)),
            ("zstd", zstd(&zeros)),
        ] {
            assert!(body.len() < LIMIT / 4, "{coding}: {}", body.len());
            assert_eq!(
                decode(&body, Some(coding), LIMIT),
                Err(DecodeError::TooLarge),
                "{coding}"
            );
        }
        // Exactly at the limit is fine.
        let full = vec![7u8; LIMIT];
        assert_eq!(
            decode(&gzip(&full), Some("gzip"), LIMIT).map(|b| b.len()),
            Ok(LIMIT)
        );
    }

    /// One line per case: Accept-Encoding, coding, accepted.
    #[test]
    fn accept_encoding_table() {
        let cases: &[(Option<&str>, &str, bool)] = &[
            (None, "identity", true),
            (None, "gzip", false),
            (Some("gzip, deflate, br"), "gzip", true),
            (Some("gzip, deflate, br"), "br", true),
            (Some("gzip, deflate, br"), "zstd", false),
            (Some("gzip, deflate, br"), "identity", true),
            (Some("gzip;q=0"), "gzip", false),
            (Some("GZIP;q=0.5"), "gzip", true),
            (Some("*"), "zstd", true),
            (Some("*;q=0"), "identity", false),
            (Some("x-gzip"), "gzip", true),
        ];
        for (accept, coding, expected) in cases {
            assert_eq!(accepts(*accept, coding), *expected, "{accept:?} {coding}");
        }
    }
}
