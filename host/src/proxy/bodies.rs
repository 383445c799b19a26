//! Bodies read whole for the filters that asked for them (`weir:plugin/body`).
//!
//! Only a route with such a filter pays: the request body is read before its
//! first request hook, the response body before its first response hook,
//! each up to the smallest `max_body_bytes` of the filters that asked. A
//! `gzip` or `deflate` body is decoded (and sent on decoded); another
//! encoding is kept as received and plugins are told its name.
//!
//! Over the cap the request is refused, 413 for a request body and 502 for a
//! response body, whatever the plugin's `fail` says: a body a validator
//! could not see must not pass as if it had been checked.

use std::io::Read;

use bytes::Bytes;
use http::HeaderMap;
use http::header::{self, HeaderValue};

use crate::body::ReadCapped;

use crate::plugin::ChainPlugin;
use crate::plugin::host::body::Buffered;
use crate::snapshot::Route;

/// The plugin whose cap bounds a body (its place in the chain), and the cap.
#[derive(Debug, Clone, Copy)]
pub(super) struct Cap {
    pub plugin: usize,
    pub bytes: usize,
}

/// The smallest cap among the route's plugins that asked for the request body.
pub(super) fn request_cap(route: &Route) -> Option<Cap> {
    cap(route, ChainPlugin::wants_request_body)
}

/// The smallest cap among the route's plugins that asked for the response body.
pub(super) fn response_cap(route: &Route) -> Option<Cap> {
    cap(route, ChainPlugin::wants_response_body)
}

fn cap(route: &Route, wants: fn(&ChainPlugin) -> bool) -> Option<Cap> {
    // Any version of a rolled-out plugin that asks for the body gets it.
    route
        .every_version()
        .filter(|(_, p)| wants(p))
        .map(|(plugin, p)| Cap {
            plugin,
            bytes: p.policy.limits.max_body_bytes,
        })
        .min_by_key(|c| c.bytes)
}

/// Why a body could not be handed to plugins.
#[derive(Debug)]
pub(super) enum BodyError {
    /// Larger than the cap (after decoding).
    TooLarge,
    /// Declared gzip or deflate but not decodable.
    Corrupt(String),
    /// Reading it failed (the peer's error).
    Read(crate::body::BoxError),
}

/// Reads `body` whole, up to `cap` bytes, and decodes it by `headers`'
/// `content-encoding`. A decoded body loses that header; `content-length`
/// is left for the sender to set.
pub(super) async fn read(
    body: crate::body::Body,
    headers: &mut HeaderMap,
    cap: usize,
) -> Result<Buffered, BodyError> {
    let raw = crate::body::read_capped(body, cap)
        .await
        .map_err(|e| match e {
            ReadCapped::TooLarge => BodyError::TooLarge,
            ReadCapped::Failed(e) => BodyError::Read(e),
        })?;
    decode(headers, raw, cap)
}

/// Undoes a `gzip` or `deflate` content encoding within `cap` decoded bytes.
pub(super) fn decode(
    headers: &mut HeaderMap,
    raw: Bytes,
    cap: usize,
) -> Result<Buffered, BodyError> {
    let Some(encoding) = headers.get(header::CONTENT_ENCODING) else {
        return Ok(Buffered::Plain(raw));
    };
    let encoding = String::from_utf8_lossy(encoding.as_bytes())
        .trim()
        .to_ascii_lowercase();
    let mut out = Vec::new();
    // One byte over the cap tells a body at the cap from a larger one (a zip bomb stops there).
    let limit = cap as u64 + 1;
    let read = match encoding.as_str() {
        "" | "identity" => return Ok(Buffered::Plain(raw)),
        "gzip" | "x-gzip" => flate2::read::MultiGzDecoder::new(&raw[..])
            .take(limit)
            .read_to_end(&mut out),
        "deflate" => flate2::read::ZlibDecoder::new(&raw[..])
            .take(limit)
            .read_to_end(&mut out),
        _ => return Ok(Buffered::Encoded { encoding, raw }),
    };
    read.map_err(|e| BodyError::Corrupt(format!("{encoding} body: {e}")))?;
    if out.len() > cap {
        return Err(BodyError::TooLarge);
    }
    headers.remove(header::CONTENT_ENCODING);
    Ok(Buffered::Plain(Bytes::from(out)))
}

/// Sets `content-length` to a buffered body's length (framing stays the gateway's).
pub(super) fn set_length(headers: &mut HeaderMap, len: usize) {
    headers.remove(header::TRANSFER_ENCODING);
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn gzip(data: &[u8]) -> Bytes {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(data).unwrap();
        Bytes::from(enc.finish().unwrap())
    }

    fn encoded(e: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_str(e).unwrap());
        h
    }

    #[test]
    fn gzip_is_decoded_and_loses_its_header_within_the_cap() {
        let mut h = encoded("gzip");
        let Buffered::Plain(b) = decode(&mut h, gzip(b"{\"a\":1}"), 100).unwrap() else {
            panic!("not decoded")
        };
        assert_eq!(&b[..], b"{\"a\":1}");
        assert!(h.get(header::CONTENT_ENCODING).is_none());
    }

    #[test]
    fn a_zip_bomb_stops_at_the_cap_and_garbage_is_corrupt() {
        let bomb = gzip(&vec![0u8; 1 << 20]);
        assert!(bomb.len() < 4096);
        assert!(matches!(
            decode(&mut encoded("gzip"), bomb, 64 << 10),
            Err(BodyError::TooLarge)
        ));
        assert!(matches!(
            decode(&mut encoded("gzip"), Bytes::from_static(b"not gzip"), 100),
            Err(BodyError::Corrupt(_))
        ));
    }

    #[test]
    fn other_encodings_are_kept_as_received() {
        let mut h = encoded("br");
        let got = decode(&mut h, Bytes::from_static(b"\x1b\x03"), 100).unwrap();
        assert!(matches!(got, Buffered::Encoded { ref encoding, .. } if encoding == "br"));
        assert!(h.get(header::CONTENT_ENCODING).is_some());
        let plain = decode(&mut HeaderMap::new(), Bytes::from_static(b"x"), 100).unwrap();
        assert!(matches!(plain, Buffered::Plain(b) if &b[..] == b"x"));
    }
}
