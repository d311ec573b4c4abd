//! Building answers: bodies, status codes, Consul's headers, and the
//! mapping of cluster errors to status codes.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use mesh_core::wire::{ReadResponse, RpcError};

use crate::clock;

/// An answer.
pub type Reply = Response<Full<Bytes>>;

/// Consul's limit on a KV value, and ours on every request body.
pub const MAX_BODY_BYTES: usize = 512 * 1024;
/// How long a client may take to send a request body once its head has
/// arrived (512 KiB at the limit is 17 KiB/s, far below any real link).
pub const BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// An answer with a body.
pub fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Reply {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_str(content_type).expect("static content type"),
    );
    resp
}

/// 200 with a JSON body.
pub fn json_reply(value: &impl serde::Serialize) -> Reply {
    reply(
        StatusCode::OK,
        "application/json",
        serde_json::to_vec(value).expect("API values serialize"),
    )
}

/// A plain-text answer (a newline is appended, as Consul does).
pub fn text(status: StatusCode, msg: impl Into<String>) -> Reply {
    let mut msg = msg.into();
    msg.push('\n');
    reply(status, "text/plain; charset=utf-8", msg)
}

/// 200 with an empty body.
pub fn ok() -> Reply {
    reply(StatusCode::OK, "text/plain; charset=utf-8", "")
}

/// 400.
pub fn bad_request(msg: impl Into<String>) -> Reply {
    text(StatusCode::BAD_REQUEST, msg)
}

/// 404.
pub fn not_found(msg: impl Into<String>) -> Reply {
    text(StatusCode::NOT_FOUND, msg)
}

/// 405.
pub fn method_not_allowed() -> Reply {
    text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
}

/// Maps an RPC failure to Consul's status codes.
pub fn rpc_error(e: RpcError) -> Reply {
    match e {
        RpcError::Rejected(m) => bad_request(m),
        RpcError::NoLeader | RpcError::NotLeader { .. } => {
            text(StatusCode::INTERNAL_SERVER_ERROR, "No cluster leader")
        }
        RpcError::Internal(m) => text(StatusCode::INTERNAL_SERVER_ERROR, m),
        e @ (RpcError::OutcomeUnknown(_) | RpcError::UnexpectedReply { .. }) => {
            text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
    }
}

/// Adds `X-Consul-Index`, `X-Consul-KnownLeader` and
/// `X-Consul-LastContact` from a read.
pub fn with_read_headers(mut resp: Reply, r: &ReadResponse) -> Reply {
    let h = resp.headers_mut();
    h.insert("X-Consul-Index", HeaderValue::from(r.index));
    h.insert(
        "X-Consul-KnownLeader",
        HeaderValue::from_static(if r.known_leader { "true" } else { "false" }),
    );
    h.insert("X-Consul-LastContact", HeaderValue::from(r.last_contact_ms));
    resp
}

/// Reads a request body of at most [`MAX_BODY_BYTES`] within
/// [`BODY_READ_TIMEOUT`].
pub async fn read_body(req: Request<Incoming>) -> Result<Bytes, Reply> {
    let body = Limited::new(req.into_body(), MAX_BODY_BYTES).collect();
    let Ok(body) = clock::timeout(BODY_READ_TIMEOUT, body).await else {
        return Err(text(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "request body not received within {} s",
                BODY_READ_TIMEOUT.as_secs()
            ),
        ));
    };
    match body {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("Request body too large, max size: {MAX_BODY_BYTES} bytes"),
        )),
        Err(e) => Err(bad_request(format!("reading request body: {e}"))),
    }
}

/// Parses a JSON request body; an empty body is `null`. Errors are 400s
/// in Consul's words.
pub fn json_body(body: &[u8]) -> Result<serde_json::Value, Reply> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(serde_json::Value::Null);
    }
    serde_json::from_slice(body).map_err(|e| bad_request(format!("Request decode failed: {e}")))
}

/// Reads a request body and parses it as JSON ([`read_body`], then
/// [`json_body`]).
pub async fn read_json(req: Request<Incoming>) -> Result<serde_json::Value, Reply> {
    let body = read_body(req).await?;
    json_body(&body)
}
