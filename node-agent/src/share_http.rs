//! Plain HTTP downloads of share links: `GET /s/<token>` (and `HEAD`) on `--http-listen`, so
//! that a browser or `curl` can fetch a shared object, through an Ingress if need be.
//!
//! The token is checked exactly as on gRPC (`auth`); a prefix grant names the object after
//! it: `/s/<token>/<key>`. One `Range: bytes=` range is honoured (206 with `Content-Range`,
//! 416 when it starts beyond the end); several ranges, or one that does not parse, get the
//! whole object, as RFC 9110 allows (`potluck_format::http_range`). `Content-Length` is always set. The body streams from
//! the gateway's read path, whose channel and stripe window bound memory per download.
//!
//! Client-side encrypted objects come out as stored (ciphertext): their key is in the link's
//! fragment, which browsers never send, and this endpoint would not use it if they did.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use futures::StreamExt;
use potluck_proto::v1 as pb;
use tonic::{Code, Status};

use crate::auth::Authenticator;
use crate::gateway::{get as read, resolve_pool};
use crate::node::Node;
use crate::validate;
use potluck_format::http_range::{parse_range, Wanted};

struct Http {
    node: Arc<Node>,
    auth: Authenticator,
}

/// Serves share downloads until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, node: Arc<Node>) -> std::io::Result<()> {
    let state = Arc::new(Http {
        node,
        auth: Authenticator::new(),
    });
    let app = Router::new()
        .route("/s/{token}", get(whole_grant))
        .route("/s/{token}/{*key}", get(under_prefix))
        .with_state(state);
    axum::serve(listener, app).await
}

async fn whole_grant(
    State(http): State<Arc<Http>>,
    method: Method,
    Path(token): Path<String>,
    headers: HeaderMap,
) -> Response {
    respond(&http, &method, &token, None, &headers).await
}

async fn under_prefix(
    State(http): State<Arc<Http>>,
    method: Method,
    Path((token, key)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    respond(&http, &method, &token, Some(key), &headers).await
}

fn http_code(code: Code) -> StatusCode {
    match code {
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::InvalidArgument => StatusCode::BAD_REQUEST,
        Code::OutOfRange => StatusCode::RANGE_NOT_SATISFIABLE,
        Code::Unavailable | Code::ResourceExhausted => StatusCode::SERVICE_UNAVAILABLE,
        Code::FailedPrecondition => StatusCode::CONFLICT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn text(
    status: StatusCode,
    message: String,
    extra: Option<(header::HeaderName, String)>,
) -> Response {
    let body = format!("{message}\n");
    let len = body.len();
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if let Some((name, value)) = extra {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(name, v);
        }
    }
    r
}

fn refused(s: &Status) -> Response {
    text(http_code(s.code()), s.message().to_owned(), None)
}

async fn respond(
    http: &Http,
    method: &Method,
    token: &str,
    key: Option<String>,
    headers: &HeaderMap,
) -> Response {
    let r = serve_one(http, method, token, key, headers).await;
    r.unwrap_or_else(|s| {
        tracing::info!(code = ?s.code(), "share download refused: {}", s.message());
        refused(&s)
    })
}

async fn serve_one(
    http: &Http,
    method: &Method,
    token: &str,
    key: Option<String>,
    headers: &HeaderMap,
) -> Result<Response, Status> {
    let view = http.node.cluster.view();
    let grant = http.auth.grant(&view, token)?;
    let key = match key {
        Some(k) if grant.prefix => k,
        None if !grant.prefix => grant.path.clone(),
        Some(_) => {
            return Err(Status::not_found(
                "this share link names one object; use /s/<token> without a key after it",
            ))
        }
        None => {
            return Err(Status::invalid_argument(format!(
                "this share link opens the keys under {:?}; add the key: /s/<token>/<key>",
                grant.path
            )))
        }
    };
    validate::key(&key)?;
    if !grant.covers_key(&key) {
        return Err(Status::permission_denied(format!(
            "this share link opens only keys under {:?}, not {key:?}",
            grant.path
        )));
    }
    let pool = resolve_pool(&view, &bound_pool(&view, &grant.bucket))?.clone();
    let manifest = read::live_manifest(&http.node, &view, &pool, &grant.bucket, &key).await?;
    let size = manifest.size;
    let wanted = parse_range(
        headers.get(header::RANGE).and_then(|v| v.to_str().ok()),
        size,
    );
    let (status, start, len) = match wanted {
        Wanted::Whole => (StatusCode::OK, 0, size),
        Wanted::Part { start, end } => (StatusCode::PARTIAL_CONTENT, start, end - start + 1),
        Wanted::Unsatisfiable => {
            return Ok(text(
                StatusCode::RANGE_NOT_SATISFIABLE,
                format!(
                    "the range asked for starts beyond the object's end: it is {size} bytes long"
                ),
                Some((header::CONTENT_RANGE, format!("bytes */{size}"))),
            ))
        }
    };
    let file_name = key
        .rsplit('/')
        .next()
        .unwrap_or(&key)
        .replace(['"', '\\'], "_");
    let body = if method == Method::HEAD || len == 0 {
        Body::empty()
    } else {
        let stream = read::get_object(
            http.node.clone(),
            pb::GetObjectRequest {
                bucket: grant.bucket.clone(),
                key: key.clone(),
                pool: pool.name.clone(),
                offset: Some(start),
                length: Some(len),
            },
        )
        .await?;
        let expected_version = manifest.version;
        Body::from_stream(stream.filter_map(move |m| async move {
            match m {
                Ok(pb::GetObjectResponse {
                    info: Some(info), ..
                }) if info.version != expected_version => Some(Err(Status::aborted(
                    "the object was overwritten during the download; download it again",
                ))),
                Ok(m) if m.chunk.is_empty() => None,
                Ok(m) => Some(Ok(m.chunk)),
                Err(s) => {
                    tracing::warn!(code = ?s.code(), "share download cut short: {}", s.message());
                    Some(Err(s))
                }
            }
        }))
    };
    let mut r = Response::new(body);
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", hex::encode(&manifest.blake3))) {
        h.insert(header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{file_name}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    if status == StatusCode::PARTIAL_CONTENT {
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{size}", start + len - 1)) {
            h.insert(header::CONTENT_RANGE, v);
        }
    }
    Ok(r)
}

/// The pool a bucket is bound to in the map ("" for the default pool when it is not bound).
fn bound_pool(view: &crate::cluster::MapView, bucket: &str) -> String {
    view.map
        .buckets
        .iter()
        .find(|b| b.name == bucket)
        .map(|b| b.pool.clone())
        .unwrap_or_default()
}
