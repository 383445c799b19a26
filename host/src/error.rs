//! The one classified error of the request path, and the one function that
//! turns it into an HTTP answer.

use http::{Response, StatusCode, header};

/// Whose fault a failed request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    /// The client sent something we refuse.
    Downstream,
    /// The upstream failed or was too slow.
    Upstream,
    /// A plugin failed.
    Plugin,
    /// A bug or resource limit in the gateway.
    Internal,
}

/// Why the gateway answered instead of the upstream.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The path could not be normalised: the path normaliser's reason.
    #[error("bad request path: {0}")]
    BadPath(&'static str),
    /// No route matches host and path.
    #[error("no route for this host and path")]
    NoRoute,
    /// A route matches host and path but not the method.
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    /// The host to route by is ambiguous: several `Host` headers, or a
    /// request-target authority (absolute-form, HTTP/2 `:authority`) that
    /// disagrees with `Host` (RFC 9112 §3.2, RFC 9113 §8.3.1).
    #[error("ambiguous host: {0}")]
    AmbiguousHost(&'static str),
    /// The request body is over `max_body_bytes`.
    #[error("request body larger than {0} bytes")]
    BodyTooLarge(u64),
    /// The request target is over `max_uri_bytes`.
    #[error("request target longer than {0} bytes")]
    UriTooLong(usize),
    /// The request's framing is ambiguous or invalid (e.g. Content-Length with Transfer-Encoding).
    #[error("bad request framing: {0}")]
    BadFraming(&'static str),
    /// The client stopped sending its body for longer than `body_read_timeout`.
    #[error("request body not received within {0:?}")]
    BodyTimeout(std::time::Duration),
    /// The upstream is at its `max_requests` (circuit open).
    #[error("upstream `{0}` is at its concurrency limit")]
    UpstreamOverloaded(String),
    /// No connection to the target could be made: nothing was sent, so
    /// another target may be tried.
    #[error("upstream unavailable: {0}")]
    UpstreamConnect(String),
    /// The upstream broke the exchange after the request was (partly) sent.
    #[error("upstream unavailable: {0}")]
    UpstreamUnavailable(String),
    /// The upstream did not answer in time.
    #[error("upstream timed out after {0:?}")]
    UpstreamTimeout(std::time::Duration),
    /// A fail-closed plugin trapped, timed out, hit a limit or returned something invalid.
    #[error("{error}")]
    Plugin {
        /// What failed (the plugin runtime's error, already logged there).
        error: Box<dyn std::error::Error + Send + Sync>,
        /// The route's `fail_status` for this plugin.
        status: StatusCode,
    },
    /// The request could not be built for the upstream.
    #[error("internal error: {0}")]
    Internal(String),
}

impl GatewayError {
    /// Whose fault it is.
    pub fn blame(&self) -> Blame {
        match self {
            GatewayError::BadPath(_)
            | GatewayError::NoRoute
            | GatewayError::MethodNotAllowed
            | GatewayError::BodyTooLarge(_)
            | GatewayError::UriTooLong(_)
            | GatewayError::BadFraming(_)
            | GatewayError::AmbiguousHost(_)
            | GatewayError::BodyTimeout(_) => Blame::Downstream,
            GatewayError::UpstreamConnect(_)
            | GatewayError::UpstreamUnavailable(_)
            | GatewayError::UpstreamTimeout(_)
            | GatewayError::UpstreamOverloaded(_) => Blame::Upstream,
            GatewayError::Plugin { .. } => Blame::Plugin,
            GatewayError::Internal(_) => Blame::Internal,
        }
    }

    /// Whether the client connection must close after this answer (HTTP/1):
    /// its remaining bytes cannot be trusted as the next request.
    pub fn closes_connection(&self) -> bool {
        matches!(
            self,
            GatewayError::BadFraming(_)
                | GatewayError::BodyTooLarge(_)
                | GatewayError::BodyTimeout(_)
        )
    }

    /// Whether sending the same request to another target could succeed
    /// without risk: only when nothing reached the first one.
    pub fn retryable(&self) -> bool {
        matches!(self, GatewayError::UpstreamConnect(_))
    }

    /// The status the client gets.
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::BadPath(_) => StatusCode::BAD_REQUEST,
            GatewayError::NoRoute => StatusCode::NOT_FOUND,
            GatewayError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            GatewayError::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::UriTooLong(_) => StatusCode::URI_TOO_LONG,
            GatewayError::BadFraming(_) | GatewayError::AmbiguousHost(_) => StatusCode::BAD_REQUEST,
            GatewayError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            GatewayError::UpstreamOverloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::UpstreamConnect(_) | GatewayError::UpstreamUnavailable(_) => {
                StatusCode::BAD_GATEWAY
            }
            GatewayError::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            GatewayError::Plugin { status, .. } => *status,
            GatewayError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The answer: status and a short text body (the caller boxes it into
    /// its body type). Details of upstream and plugin failures stay in the
    /// log, not in front of the client.
    pub fn to_response(&self) -> Response<String> {
        let status = self.status();
        let text = match self.blame() {
            Blame::Downstream => format!("{self}\n"),
            _ => format!(
                "{}\n",
                status.canonical_reason().unwrap_or("error").to_lowercase()
            ),
        };
        let mut resp = Response::new(text);
        *resp.status_mut() = status;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        resp
    }
}

/// An error with its causes, `outer: inner: root`, for logs (hyper-util's
/// own messages, like "client error (Connect)", say little without them).
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}
