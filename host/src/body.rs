//! The body type the gateway passes around.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};

/// Any boxed error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A streaming body.
pub type Body = BoxBody<Bytes, BoxError>;

/// A body holding `bytes`.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// An empty body.
pub fn empty() -> Body {
    full(Bytes::new())
}

/// Why [`read_capped`] gave no body.
#[derive(Debug)]
pub enum ReadCapped {
    /// More than the cap arrived.
    TooLarge,
    /// The body failed.
    Failed(BoxError),
}

/// Reads `body` whole, failing as soon as more than `cap` bytes arrive.
/// (A plain loop over frames: `Limited` + `collect` in an async fn trips
/// rustc's "not general enough" on the boxed error.)
pub async fn read_capped(mut body: Body, cap: usize) -> Result<Bytes, ReadCapped> {
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(ReadCapped::Failed)?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > cap {
                return Err(ReadCapped::TooLarge);
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

/// The client paused its request body for longer than allowed.
#[derive(Debug, thiserror::Error)]
#[error("no request body data for {0:?}")]
pub struct ReadTimeout(pub std::time::Duration);

/// The client's body could not be read (bad chunk, early end, size cap):
/// the client's fault, not the upstream's.
#[derive(Debug, thiserror::Error)]
#[error("reading the request body: {0}")]
pub struct ClientBody(#[source] pub BoxError);

pin_project_lite::pin_project! {
    /// A body that fails with [`ReadTimeout`] when no frame arrives for `limit`:
    /// a client cannot hold an upstream exchange open by trickling its body.
    pub struct Timed<B> {
        #[pin]
        inner: B,
        #[pin]
        timer: tokio::time::Sleep,
        limit: std::time::Duration,
    }
}

impl<B> Timed<B> {
    /// Wraps `inner`; the clock starts now and restarts with every frame.
    pub fn new(inner: B, limit: std::time::Duration) -> Self {
        Timed {
            inner,
            timer: tokio::time::sleep(limit),
            limit,
        }
    }
}

impl<B> http_body::Body for Timed<B>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        use std::task::Poll;
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(frame) => {
                let deadline = tokio::time::Instant::now() + *this.limit;
                this.timer.reset(deadline);
                Poll::Ready(
                    frame.map(|f| f.map_err(|e| Box::new(ClientBody(e.into())) as BoxError)),
                )
            }
            Poll::Pending => match this.timer.poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(ReadTimeout(*this.limit))))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

pin_project_lite::pin_project! {
    /// A body that keeps `guard` alive until it is dropped (e.g. a place
    /// under an upstream's concurrency limit), forwarding everything else.
    pub struct Hold<B, G> {
        #[pin]
        inner: B,
        guard: G,
    }
}

impl<B, G> Hold<B, G> {
    /// Wraps `inner`, holding `guard`.
    pub fn new(inner: B, guard: G) -> Self {
        Hold { inner, guard }
    }
}

impl<B: http_body::Body, G> http_body::Body for Hold<B, G> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The request body on its way upstream: the frames that arrived before the
/// exchange began, then the rest of the client's body, streamed.
///
/// Reading a small body whole first (nginx does the same) means a client
/// trickling it holds no place under the upstream's `max_requests`; and
/// [`Upload::client_done`] tells a slow client from a slow upstream when the
/// exchange times out.
pub struct Upload {
    head: std::collections::VecDeque<http_body::Frame<Bytes>>,
    rest: Option<Body>,
    client_done: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Upload {
    /// Reads `client` until it ends or more than `buffer` bytes arrived.
    /// Errors are the client's ([`ClientBody`], [`ReadTimeout`]).
    pub async fn begin(mut client: Body, buffer: usize) -> Result<Upload, BoxError> {
        let mut head = std::collections::VecDeque::new();
        let mut bytes = 0;
        while bytes <= buffer {
            match client.frame().await {
                None => return Ok(Upload::whole(head)),
                Some(frame) => {
                    let frame = frame?;
                    bytes += frame.data_ref().map_or(0, Bytes::len);
                    head.push_back(frame);
                }
            }
        }
        Ok(Upload {
            head,
            rest: Some(client),
            client_done: Default::default(),
        })
    }

    fn whole(head: std::collections::VecDeque<http_body::Frame<Bytes>>) -> Upload {
        Upload {
            head,
            rest: None,
            client_done: std::sync::Arc::new(true.into()),
        }
    }

    /// Set once the client has sent its whole body.
    pub fn client_done(&self) -> std::sync::Arc<std::sync::atomic::AtomicBool> {
        self.client_done.clone()
    }
}

impl http_body::Body for Upload {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        use std::sync::atomic::Ordering;
        use std::task::Poll;
        if let Some(frame) = self.head.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        let Some(rest) = self.rest.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = std::pin::Pin::new(&mut *rest).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || rest.is_end_stream() {
            self.client_done.store(true, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.head.is_empty() && self.rest.as_ref().is_none_or(|r| r.is_end_stream())
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let head: u64 = self
            .head
            .iter()
            .filter_map(|f| f.data_ref())
            .map(|d| d.len() as u64)
            .sum();
        let rest = self
            .rest
            .as_ref()
            .map_or_else(|| http_body::SizeHint::with_exact(0), |r| r.size_hint());
        let mut hint = http_body::SizeHint::new();
        hint.set_lower(rest.lower() + head);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + head);
        }
        hint
    }
}
