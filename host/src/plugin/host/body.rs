//! `weir:plugin/body`: bodies handed to the filters that asked for them.
//!
//! The proxy reads a body whole only when a filter on the route asked for it
//! in `init` ([`Bodies`]); it is decoded first when it came gzip- or
//! deflate-encoded ([`Buffered::Plain`]), or kept as received when its
//! encoding is one the gateway does not decode ([`Buffered::Encoded`]).
//! A replacement is checked against the plugin's `max_body_bytes`.

use bytes::Bytes;
use wasmtime::component::Resource;

use super::HostState;
use super::http::{RequestState, ResponseState};
pub use crate::plugin::bindings::weir::plugin::body::Bodies;
use crate::plugin::bindings::weir::plugin::body::{BodyError, Host};

/// A body as the gateway holds it for plugins.
#[derive(Debug, Clone, Default)]
pub enum Buffered {
    /// Not read: streamed through (no filter on the route asked for it).
    #[default]
    Streamed,
    /// Read whole (and decoded, if it was gzip or deflate).
    Plain(Bytes),
    /// Read whole but left encoded: plugins are told the encoding, not handed the bytes.
    Encoded {
        /// The `content-encoding`, e.g. `br`.
        encoding: String,
        /// The bytes as received.
        raw: Bytes,
    },
}

impl Buffered {
    /// The bytes to send on, whatever plugins could see; `None` when streamed.
    pub fn bytes(&self) -> Option<&Bytes> {
        match self {
            Buffered::Streamed => None,
            Buffered::Plain(b) | Buffered::Encoded { raw: b, .. } => Some(b),
        }
    }

    fn read(&self) -> Result<Vec<u8>, BodyError> {
        match self {
            Buffered::Streamed => Err(BodyError::NotBuffered),
            Buffered::Plain(b) => Ok(b.to_vec()),
            Buffered::Encoded { encoding, .. } => Err(BodyError::Encoded(encoding.clone())),
        }
    }

    /// Replaces the body. An encoded one may be replaced too (a plugin that
    /// cannot read it may still refuse it with a body of its own): the new
    /// body is plain, so the message's `content-encoding` goes.
    fn replace(
        &mut self,
        body: Vec<u8>,
        max: usize,
        headers: &mut http::HeaderMap,
    ) -> Result<(), BodyError> {
        match self {
            Buffered::Streamed => Err(BodyError::NotBuffered),
            _ if body.len() > max => Err(BodyError::TooLarge(max as u64)),
            Buffered::Plain(b) => {
                *b = Bytes::from(body);
                Ok(())
            }
            Buffered::Encoded { .. } => {
                headers.remove(http::header::CONTENT_ENCODING);
                *self = Buffered::Plain(Bytes::from(body));
                Ok(())
            }
        }
    }
}

impl Host for HostState {
    fn buffer(&mut self, which: Bodies) -> wasmtime::Result<()> {
        self.charge()?;
        if self.in_init {
            self.bodies |= which;
        }
        Ok(())
    }

    fn request_body(
        &mut self,
        r: Resource<RequestState>,
    ) -> wasmtime::Result<Result<Vec<u8>, BodyError>> {
        let wanted = self.bodies.contains(Bodies::REQUEST);
        let req = self.req(&r)?;
        Ok(if wanted {
            req.body.read()
        } else {
            Err(BodyError::NotBuffered)
        })
    }

    fn set_request_body(
        &mut self,
        r: Resource<RequestState>,
        body: Vec<u8>,
    ) -> wasmtime::Result<Result<(), BodyError>> {
        let (wanted, max) = (self.bodies.contains(Bodies::REQUEST), self.max_body);
        let req = self.req(&r)?;
        Ok(if !wanted {
            Err(BodyError::NotBuffered)
        } else if req.read_only {
            Err(BodyError::ReadOnly)
        } else {
            req.body.replace(body, max, &mut req.headers)
        })
    }

    fn response_body(
        &mut self,
        r: Resource<ResponseState>,
    ) -> wasmtime::Result<Result<Vec<u8>, BodyError>> {
        let wanted = self.bodies.contains(Bodies::RESPONSE);
        let resp = self.resp(&r)?;
        Ok(if wanted {
            resp.body.read()
        } else {
            Err(BodyError::NotBuffered)
        })
    }

    fn set_response_body(
        &mut self,
        r: Resource<ResponseState>,
        body: Vec<u8>,
    ) -> wasmtime::Result<Result<(), BodyError>> {
        let (wanted, max) = (self.bodies.contains(Bodies::RESPONSE), self.max_body);
        let resp = self.resp(&r)?;
        Ok(if wanted {
            resp.body.replace(body, max, &mut resp.headers)
        } else {
            Err(BodyError::NotBuffered)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_is_replaced_within_the_cap_and_an_encoded_one_becomes_plain() {
        let mut h = http::HeaderMap::new();
        let mut b = Buffered::Plain(Bytes::from_static(b"{}"));
        assert_eq!(b.read().unwrap(), b"{}");
        assert!(matches!(
            b.replace(vec![0; 5], 4, &mut h),
            Err(BodyError::TooLarge(4))
        ));
        b.replace(b"[1]".to_vec(), 4, &mut h).unwrap();
        assert_eq!(b.bytes().unwrap().as_ref(), b"[1]");
        let mut e = Buffered::Encoded {
            encoding: "br".into(),
            raw: Bytes::from_static(b"\x0b"),
        };
        assert!(matches!(e.read(), Err(BodyError::Encoded(enc)) if enc == "br"));
        assert_eq!(e.bytes().unwrap().as_ref(), b"\x0b");
        h.insert(
            http::header::CONTENT_ENCODING,
            http::HeaderValue::from_static("br"),
        );
        e.replace(b"refused".to_vec(), 16, &mut h).unwrap();
        assert_eq!(e.read().unwrap(), b"refused");
        assert!(h.get(http::header::CONTENT_ENCODING).is_none());
        assert!(matches!(
            Buffered::Streamed.read(),
            Err(BodyError::NotBuffered)
        ));
    }
}
