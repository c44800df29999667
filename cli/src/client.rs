//! A thin ObjectService client shared by the `potluck` command and the e2e tests.
//!
//! Every agent is a gateway, so the client connects to several, keeps the ones
//! that answered and spreads calls over them round-robin; calls move on to the
//! next gateway when one is unavailable (puts only while none of their input
//! has been read, gets only before any byte was written). Transfers stream in 1 MiB
//! chunks with a bounded number in flight, so memory never grows with the
//! object size.

use std::cell::Cell;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use potluck_proto::v1::object_service_client::ObjectServiceClient;
use potluck_proto::v1::put_object_request::Body;
use potluck_proto::v1::{
    DeleteObjectRequest, GetObjectRequest, GetUploadRequest, GetUploadResponse, ListObjectsRequest,
    ListObjectsResponse, ObjectInfo, PutObjectFinish, PutObjectHeader, PutObjectRequest,
    PutObjectResponse, StatObjectRequest,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinError;
use tonic::codec::{BufferSettings, Codec, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, GrpcMethod, Status};
use tonic_prost::ProstCodec;

/// Size of the data messages of a put; the contract allows up to 4 MiB, and
/// 1 MiB keeps the pipeline full without large buffers.
pub const CHUNK_SIZE: usize = 1 << 20;
/// Largest gRPC message accepted or sent. Above the 4 MiB tonic default
/// because large listings and a future larger chunk size must still fit.
pub const MAX_MESSAGE_SIZE: usize = 16 << 20;
/// Per-stream HTTP/2 window: the 64 KiB default would stall a single large
/// transfer on round trips long before the disks or the network are busy.
const STREAM_WINDOW: u32 = 8 << 20;
/// Connection window, room for a few concurrent full-speed streams.
const CONNECTION_WINDOW: u32 = 32 << 20;
/// Put chunks queued ahead of the network: bounds memory to a few MiB.
const CHUNKS_IN_FLIGHT: usize = 4;

/// A byte range of an object: `length: None` reads to the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub offset: u64,
    pub length: Option<u64>,
}

/// Transfer progress reported after every chunk; `total` is `None` while the
/// size is unknown (a put from a pipe).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub done: u64,
    pub total: Option<u64>,
}

/// The gRPC metadata key credentials travel in (see the proto's ObjectService comment).
pub const AUTHORIZATION: &str = "authorization";
/// Keys of a Bucket's credentials Secret, as files of a mounted Secret or lines of a file.
pub const ACCESS_KEY_ID_KEY: &str = "accessKeyId";
pub const SECRET_ACCESS_KEY_KEY: &str = "secretAccessKey";

/// Why credentials could not be used; nothing was sent.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("the access key id {0:?} cannot be sent: it must be non-empty, without ':' or spaces")]
    BadId(String),
    #[error("the secret key cannot be sent: it must be non-empty printable ASCII without spaces")]
    BadSecret,
    #[error("cannot read credentials from {path}: {error}")]
    Read {
        path: std::path::PathBuf,
        error: std::io::Error,
    },
    #[error(
        "{path} holds no {key}: give a directory holding a mounted credentials Secret (files \
         accessKeyId and secretAccessKey) or a file of accessKeyId=... and secretAccessKey=... lines"
    )]
    Missing {
        path: std::path::PathBuf,
        key: &'static str,
    },
}

/// A Bucket's access key: sent with every call as `authorization: Bearer <id>:<secret>`.
#[derive(Clone)]
pub struct Credentials {
    access_key_id: String,
    header: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
}

impl std::fmt::Debug for Credentials {
    // The secret stays out of logs and panics.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    pub fn new(access_key_id: &str, secret: &str) -> Result<Self, CredentialsError> {
        let sendable = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic());
        if !sendable(access_key_id) || access_key_id.contains(':') {
            return Err(CredentialsError::BadId(access_key_id.to_owned()));
        }
        if !sendable(secret) {
            return Err(CredentialsError::BadSecret);
        }
        let mut header: tonic::metadata::MetadataValue<tonic::metadata::Ascii> =
            format!("Bearer {access_key_id}:{secret}")
                .parse()
                .map_err(|_| CredentialsError::BadSecret)?;
        header.set_sensitive(true);
        Ok(Self {
            access_key_id: access_key_id.to_owned(),
            header,
        })
    }

    /// A share link's token instead of a key: sent as `authorization: Share <token>`, it
    /// reads what the link grants and nothing else.
    pub fn share_link(token: &str) -> Result<Self, CredentialsError> {
        let mut header: tonic::metadata::MetadataValue<tonic::metadata::Ascii> =
            format!("Share {token}")
                .parse()
                .map_err(|_| CredentialsError::BadSecret)?;
        header.set_sensitive(true);
        Ok(Self {
            access_key_id: String::new(),
            header,
        })
    }

    pub fn access_key_id(&self) -> &str {
        &self.access_key_id
    }

    /// Reads a Bucket's credentials Secret as it reaches a client: mounted as a volume (a
    /// directory with one file per key) or written as `key=value` lines (for instance by
    /// `kubectl get secret NAME -o go-template='{{range $k, $v := .data}}{{$k}}={{$v |
    /// base64decode}}{{"\n"}}{{end}}'`). Other keys (bucket, pool) are ignored.
    pub fn from_path(path: &std::path::Path) -> Result<Self, CredentialsError> {
        let read = |p: &std::path::Path| {
            std::fs::read_to_string(p).map_err(|error| CredentialsError::Read {
                path: p.to_owned(),
                error,
            })
        };
        let missing = |key| CredentialsError::Missing {
            path: path.to_owned(),
            key,
        };
        let (id, secret) = if path.is_dir() {
            let field = |key: &'static str| -> Result<String, CredentialsError> {
                let file = path.join(key);
                if !file.exists() {
                    return Err(missing(key));
                }
                Ok(read(&file)?.trim().to_owned())
            };
            (field(ACCESS_KEY_ID_KEY)?, field(SECRET_ACCESS_KEY_KEY)?)
        } else {
            let text = read(path)?;
            let field = |key: &'static str| -> Result<String, CredentialsError> {
                text.lines()
                    .filter_map(|line| line.trim().split_once('='))
                    .find(|(k, _)| k.trim() == key)
                    .map(|(_, v)| v.trim().to_owned())
                    .ok_or_else(|| missing(key))
            };
            (field(ACCESS_KEY_ID_KEY)?, field(SECRET_ACCESS_KEY_KEY)?)
        };
        Self::new(&id, &secret)
    }
}

/// How to connect and which pool to address.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Pool of every call; empty means the server's "default" pool (or, for a bucket bound to
    /// a pool, that pool).
    pub pool: String,
    /// Sent with every call; `None` calls anonymously (a fleet that does not require keys).
    pub credentials: Option<Credentials>,
    /// Per endpoint, covering TCP connect and the HTTP/2 handshake.
    pub connect_timeout: Duration,
    /// Deadline of unary calls (stat, delete, list). Transfers have none:
    /// their duration depends on the object size.
    pub request_timeout: Option<Duration>,
    /// The certificate this client presents and the CA it trusts; `Some`
    /// connects with mutual TLS (every endpoint becomes https), `None` with
    /// plaintext, which a fleet with TLS refuses.
    pub tls: Option<potluck_tls::Material>,
    /// Also connect to every Up member the first gateway's cluster map lists, so that calls
    /// spread over the whole fleet when only one address (a Service) was given. Off by
    /// default: from outside a cluster the members' addresses are usually unreachable, and
    /// each would cost a connect timeout.
    pub discover: bool,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            pool: String::new(),
            credentials: None,
            tls: None,
            discover: false,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Some(Duration::from_secs(60)),
        }
    }
}

/// What went wrong, by gRPC status where the server answered; the server's
/// message is kept because it says which object or shard was the problem.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint { endpoint: String, reason: String },
    #[error("no endpoint answered: {details}")]
    Unreachable { details: String },
    #[error("not found: {0}")]
    NotFound(String),
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("timed out: {0}")]
    DeadlineExceeded(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    #[error("already exists: {0}")]
    AlreadyExists(String),
    #[error("resource exhausted: {0}")]
    ResourceExhausted(String),
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    #[error("not authenticated: {0}")]
    Unauthenticated(String),
    #[error("data loss: {0}")]
    DataLoss(String),
    #[error("server error ({code:?}): {message}")]
    Server { code: Code, message: String },
    #[error("reading input: {0}")]
    Input(std::io::Error),
    #[error("writing output: {0}")]
    Output(std::io::Error),
    #[error("input is longer than the declared {expected} bytes")]
    InputTooLong { expected: u64 },
    #[error("input ended after {actual} of the declared {expected} bytes")]
    InputTooShort { expected: u64, actual: u64 },
    #[error("the download ended after {received} of {expected} bytes")]
    Truncated { expected: u64, received: u64 },
    #[error("content hash mismatch: the object's blake3 is {expected} but the bytes received hash to {actual}")]
    HashMismatch { expected: String, actual: String },
    #[error("unexpected answer from the server: {0}")]
    Protocol(String),
}

impl ClientError {
    /// The gRPC code this error came from, if the server (or transport) gave one.
    pub fn code(&self) -> Option<Code> {
        Some(match self {
            Self::NotFound(_) => Code::NotFound,
            Self::Unavailable(_) | Self::Unreachable { .. } => Code::Unavailable,
            Self::DeadlineExceeded(_) => Code::DeadlineExceeded,
            Self::InvalidArgument(_) => Code::InvalidArgument,
            Self::FailedPrecondition(_) => Code::FailedPrecondition,
            Self::AlreadyExists(_) => Code::AlreadyExists,
            Self::ResourceExhausted(_) => Code::ResourceExhausted,
            Self::PermissionDenied(_) => Code::PermissionDenied,
            Self::Unauthenticated(_) => Code::Unauthenticated,
            Self::DataLoss(_) => Code::DataLoss,
            Self::Server { code, .. } => *code,
            _ => return None,
        })
    }

    /// The connection to the gateway broke under the call: nothing says the
    /// gateway even saw it, so another gateway may be asked.
    pub fn is_transport_failure(&self) -> bool {
        match self {
            Self::Unavailable(_) | Self::Unreachable { .. } => true,
            Self::Server { message, .. } => message.contains("transport error"),
            _ => false,
        }
    }
}

impl From<Status> for ClientError {
    fn from(status: Status) -> Self {
        let message = status_message(&status);
        match status.code() {
            Code::NotFound => Self::NotFound(message),
            Code::Unavailable => Self::Unavailable(message),
            Code::DeadlineExceeded => Self::DeadlineExceeded(message),
            Code::InvalidArgument | Code::OutOfRange => Self::InvalidArgument(message),
            Code::FailedPrecondition => Self::FailedPrecondition(message),
            Code::AlreadyExists => Self::AlreadyExists(message),
            Code::ResourceExhausted => Self::ResourceExhausted(message),
            Code::PermissionDenied => Self::PermissionDenied(message),
            Code::Unauthenticated => Self::Unauthenticated(message),
            Code::DataLoss => Self::DataLoss(message),
            code => Self::Server { code, message },
        }
    }
}

/// The status message plus its source chain: for transport failures tonic
/// puts the useful part ("Connection refused") only in the sources.
fn status_message(status: &Status) -> String {
    let mut message = status.message().to_string();
    if message.is_empty() {
        message = status.code().description().to_string();
    }
    let mut source = std::error::Error::source(status);
    while let Some(err) = source {
        let text = err.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = err.source();
    }
    message
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let more = e.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = e.source();
    }
    text
}

/// Accepts "host:port" as well as "http://host:port": people paste the
/// former from agent logs and the cluster map.
pub fn normalize_endpoint(endpoint: &str) -> Result<String, ClientError> {
    let trimmed = endpoint.trim().trim_end_matches('/');
    let invalid = |reason: &str| ClientError::InvalidEndpoint {
        endpoint: endpoint.to_string(),
        reason: reason.to_string(),
    };
    if trimmed.is_empty() {
        return Err(invalid("empty; expected http://HOST:PORT"));
    }
    let uri = match trimmed.split_once("://") {
        Some(("http", rest)) if !rest.is_empty() => trimmed.to_string(),
        Some(("https", rest)) if !rest.is_empty() => trimmed.to_string(),
        Some(_) => return Err(invalid("expected http://HOST:PORT or https://HOST:PORT")),
        None => format!("http://{trimmed}"),
    };
    uri.parse::<tonic::codegen::http::Uri>()
        .map_err(|e| invalid(&e.to_string()))?;
    Ok(uri)
}

#[derive(Debug)]
struct Gateway {
    uri: String,
    /// For puts, which need a codec of their own (see [`AbortableCodec`]).
    channel: Channel,
    client: ObjectServiceClient<Channel>,
}

#[derive(Debug)]
struct Inner {
    gateways: Vec<Gateway>,
    next: AtomicUsize,
    options: ClientOptions,
}

/// Cheap to clone; clones share connections and the round-robin position.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

/// A put's data message or the explicit end of the upload.
enum Frame {
    Message(PutObjectRequest),
    End,
}

enum PutFailure {
    /// The gateway failed before it took the stream: try another one.
    GatewayUnused(Status),
    Failed(ClientError),
}

enum FeedError {
    /// The RPC went away (the server answered early or the stream was
    /// reset); its status says why.
    Closed,
    Client(ClientError),
}

/// The request stream of a put. It ends only on an explicit `End`. If the
/// sender disappears first (input error, caller dropped the future) it
/// yields a body-less message, which [`AbortableCodec`] refuses to encode, so
/// the upload is reset as failed rather than ended or merely cancelled.
/// `started` fires on the first poll, that is once a connection carries the
/// stream.
fn upload_stream(
    rx: mpsc::Receiver<Frame>,
    started: oneshot::Sender<()>,
) -> impl Stream<Item = PutObjectRequest> + Send + 'static {
    futures::stream::unfold((Some(rx), Some(started)), |(rx, mut started)| async move {
        if let Some(started) = started.take() {
            let _ = started.send(());
        }
        let Some(mut rx) = rx else {
            // The abort marker went out; the stream is being reset.
            std::future::pending::<()>().await;
            return None;
        };
        match rx.recv().await {
            Some(Frame::Message(message)) => Some((message, (Some(rx), started))),
            Some(Frame::End) => None,
            None => Some((PutObjectRequest { body: None }, (None, started))),
        }
    })
    .fuse()
}

/// Prost's codec for PutObject, except that a message without a body fails
/// to encode. That failure makes hyper reset the stream with INTERNAL_ERROR,
/// which the server reads as an error. Dropping the call instead would reset
/// it with CANCEL, which tonic servers read as a clean end of the request
/// stream, and they would commit a truncated object.
#[derive(Default)]
struct AbortableCodec(ProstCodec<PutObjectRequest, PutObjectResponse>);

struct AbortableEncoder(<ProstCodec<PutObjectRequest, PutObjectResponse> as Codec>::Encoder);

impl Encoder for AbortableEncoder {
    type Item = PutObjectRequest;
    type Error = Status;

    fn encode(&mut self, item: PutObjectRequest, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        if item.body.is_none() {
            return Err(Status::aborted("the client abandoned the upload"));
        }
        self.0.encode(item, dst)
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}

impl Codec for AbortableCodec {
    type Encode = PutObjectRequest;
    type Decode = PutObjectResponse;
    type Encoder = AbortableEncoder;
    type Decoder = <ProstCodec<PutObjectRequest, PutObjectResponse> as Codec>::Decoder;

    fn encoder(&mut self) -> Self::Encoder {
        AbortableEncoder(self.0.encoder())
    }

    fn decoder(&mut self) -> Self::Decoder {
        self.0.decoder()
    }
}

/// ObjectService.PutObject as the generated client would call it, but with
/// [`AbortableCodec`].
async fn put_call(
    channel: Channel,
    credentials: Option<Credentials>,
    stream: impl Stream<Item = PutObjectRequest> + Send + 'static,
) -> Result<tonic::Response<PutObjectResponse>, Status> {
    let mut grpc = tonic::client::Grpc::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(format!("the connection is not ready: {e}")))?;
    let path = PathAndQuery::from_static("/potluck.v1.ObjectService/PutObject");
    let mut request = tonic::Request::new(stream);
    if let Some(c) = credentials {
        request.metadata_mut().insert(AUTHORIZATION, c.header);
    }
    request
        .extensions_mut()
        .insert(GrpcMethod::new("potluck.v1.ObjectService", "PutObject"));
    grpc.client_streaming(request, path, AbortableCodec::default())
        .await
}

/// Reads until `buf` holds a whole chunk or the input ends; true at EOF.
async fn fill_chunk<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
) -> std::io::Result<bool> {
    while buf.len() < CHUNK_SIZE {
        if reader.read_buf(buf).await? == 0 {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Bytes a get should deliver, from the object size and the asked range.
pub fn expected_length(size: u64, range: Option<ByteRange>) -> u64 {
    match range {
        None => size,
        Some(r) => {
            let available = size.saturating_sub(r.offset);
            r.length.map_or(available, |l| l.min(available))
        }
    }
}

impl Client {
    /// Connects to every endpoint with default options; see [`Client::connect_with`].
    pub async fn connect<S: AsRef<str>>(endpoints: &[S]) -> Result<Self, ClientError> {
        Self::connect_with(endpoints, ClientOptions::default()).await
    }

    /// Connects to all endpoints at once and keeps those that answered, so one
    /// dead agent in a list does not fail the command. Errors only when none
    /// answered (`Unreachable`, listing each failure) or an endpoint is malformed.
    pub async fn connect_with<S: AsRef<str>>(
        endpoints: &[S],
        options: ClientOptions,
    ) -> Result<Self, ClientError> {
        if endpoints.is_empty() {
            return Err(ClientError::InvalidEndpoint {
                endpoint: String::new(),
                reason: "no endpoint given".to_string(),
            });
        }
        let mut uris = endpoints
            .iter()
            .map(|e| normalize_endpoint(e.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        match &options.tls {
            // With a certificate every connection is TLS, whatever scheme was typed.
            Some(_) => {
                for uri in &mut uris {
                    if let Some(rest) = uri.strip_prefix("http://") {
                        *uri = format!("https://{rest}");
                    }
                }
            }
            None => {
                if let Some(uri) = uris.iter().find(|u| u.starts_with("https://")) {
                    return Err(ClientError::InvalidEndpoint {
                        endpoint: uri.clone(),
                        reason: "https needs this client's certificate: pass --tls-dir (or set POTLUCK_TLS_DIR) to a directory with ca.pem, cert.pem and key.pem".to_string(),
                    });
                }
            }
        }
        let (mut gateways, mut failures) = connect_all(&uris, &options).await;
        if gateways.is_empty() {
            return Err(ClientError::Unreachable {
                details: failures.join("; "),
            });
        }
        if options.discover {
            let more = discover(&gateways[0], &uris, &options).await;
            let (found, failed) = connect_all(&more, &options).await;
            gateways.extend(found);
            failures.extend(failed);
        }
        for failure in &failures {
            tracing::debug!("skipping endpoint {failure}");
        }
        Ok(Self {
            inner: Arc::new(Inner {
                gateways,
                next: AtomicUsize::new(0),
                options,
            }),
        })
    }

    /// Same connections, another pool for every later call.
    pub fn with_pool(&self, pool: impl Into<String>) -> Self {
        let mut options = self.inner.options.clone();
        options.pool = pool.into();
        let gateways = self
            .inner
            .gateways
            .iter()
            .map(|g| Gateway {
                uri: g.uri.clone(),
                channel: g.channel.clone(),
                client: g.client.clone(),
            })
            .collect();
        Self {
            inner: Arc::new(Inner {
                gateways,
                next: AtomicUsize::new(self.inner.next.load(Ordering::Relaxed)),
                options,
            }),
        }
    }

    /// The endpoints that answered at connect time (`http://host:port`).
    pub fn endpoints(&self) -> Vec<String> {
        self.inner.gateways.iter().map(|g| g.uri.clone()).collect()
    }

    /// The pool addressed ("" means the server's default).
    pub fn pool(&self) -> &str {
        &self.inner.options.pool
    }

    fn pick_gateway(&self) -> &Gateway {
        let gateways = &self.inner.gateways;
        let i = self.inner.next.fetch_add(1, Ordering::Relaxed) % gateways.len();
        &gateways[i]
    }

    /// A request carrying this client's credentials, if it has any.
    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(c) = &self.inner.options.credentials {
            request
                .metadata_mut()
                .insert(AUTHORIZATION, c.header.clone());
        }
        request
    }

    /// A ShareService client on the next gateway's connection, for `share` commands.
    pub fn share_service(
        &self,
    ) -> potluck_proto::v1::share_service_client::ShareServiceClient<Channel> {
        potluck_proto::v1::share_service_client::ShareServiceClient::new(
            self.pick_gateway().channel.clone(),
        )
    }

    /// `message` as a request carrying this client's credentials.
    pub fn authorized<T>(&self, message: T) -> tonic::Request<T> {
        self.request(message)
    }

    fn pick(&self) -> ObjectServiceClient<Channel> {
        self.pick_gateway().client.clone()
    }

    /// Runs an idempotent call, trying each gateway once while they answer
    /// UNAVAILABLE (agent down, or too few shards reachable from it).
    async fn idempotent<T, F, Fut>(&self, mut call: F) -> Result<T, ClientError>
    where
        F: FnMut(ObjectServiceClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let mut last = None;
        for _ in 0..self.inner.gateways.len() {
            let attempt = call(self.pick());
            let result = match self.inner.options.request_timeout {
                Some(limit) => match tokio::time::timeout(limit, attempt).await {
                    Ok(result) => result,
                    Err(_) => {
                        return Err(ClientError::DeadlineExceeded(format!(
                            "no answer within {} s",
                            limit.as_secs_f64()
                        )))
                    }
                },
                None => attempt.await,
            };
            match result {
                Ok(response) => return Ok(response.into_inner()),
                Err(status) if status.code() == Code::Unavailable => last = Some(status),
                Err(status) => return Err(status.into()),
            }
        }
        Err(last.map_or_else(
            || ClientError::Unavailable("no gateway to ask".to_string()),
            ClientError::from,
        ))
    }

    /// Stores `reader`'s bytes as `bucket/key`, streaming the header and then
    /// 1 MiB chunks with a few in flight. With `size`, the input must be
    /// exactly that long (checked here and by the server). The object becomes
    /// visible only if the whole input was read; any error on either side
    /// cancels the upload. `progress` is called after every chunk. A gateway
    /// that cannot be reached is skipped for the next one, which is safe
    /// because no input is read before a gateway takes the stream.
    pub async fn put<R>(
        &self,
        bucket: &str,
        key: &str,
        mut reader: R,
        size: Option<u64>,
        mut progress: impl FnMut(Progress),
    ) -> Result<PutObjectResponse, ClientError>
    where
        R: AsyncRead + Unpin,
    {
        let header = PutObjectHeader {
            bucket: bucket.to_string(),
            key: key.to_string(),
            pool: self.inner.options.pool.clone(),
            size,
            upload: None,
        };
        self.put_with(header, &mut reader, 0, &mut progress).await
    }

    /// Like [`Client::put`] with a header of the caller's (a resumable upload's), where the
    /// first `already` bytes of the object are not sent: `reader` starts after them, and
    /// `header.size` counts them.
    pub async fn put_with<R>(
        &self,
        header: PutObjectHeader,
        mut reader: R,
        already: u64,
        mut progress: impl FnMut(Progress),
    ) -> Result<PutObjectResponse, ClientError>
    where
        R: AsyncRead + Unpin,
    {
        let size = header.size;
        let mut last = None;
        for _ in 0..self.inner.gateways.len() {
            match self
                .put_once(&header, &mut reader, size, already, &mut progress)
                .await
            {
                Ok(response) => return Ok(response),
                Err(PutFailure::GatewayUnused(status)) => last = Some(status),
                Err(PutFailure::Failed(err)) => return Err(err),
            }
        }
        Err(last.map_or_else(
            || ClientError::Unavailable("no gateway to ask".to_string()),
            ClientError::from,
        ))
    }

    async fn put_once<R, P>(
        &self,
        header: &PutObjectHeader,
        reader: &mut R,
        size: Option<u64>,
        already: u64,
        progress: &mut P,
    ) -> Result<PutObjectResponse, PutFailure>
    where
        R: AsyncRead + Unpin,
        P: FnMut(Progress),
    {
        let (tx, rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
        let (started_tx, started_rx) = oneshot::channel();
        let header = PutObjectRequest {
            body: Some(Body::Header(header.clone())),
        };
        if tx.send(Frame::Message(header)).await.is_err() {
            return Err(PutFailure::Failed(ClientError::Protocol(
                "upload stream closed early".to_string(),
            )));
        }
        let channel = self.pick_gateway().channel.clone();
        // A task of its own: if this future is dropped, the call still sees
        // the sender go away and aborts the upload instead of just vanishing.
        let mut call = tokio::spawn(put_call(
            channel,
            self.inner.options.credentials.clone(),
            upload_stream(rx, started_tx),
        ));
        let touched = Cell::new(false);
        // An error before the stream was taken left the input untouched.
        let outcome =
            |joined: Result<Result<tonic::Response<PutObjectResponse>, Status>, JoinError>| {
                let result = joined
                    .unwrap_or_else(|e| Err(Status::internal(format!("upload task failed: {e}"))));
                match result {
                    Ok(response) => Ok(response.into_inner()),
                    Err(status) if status.code() == Code::Unavailable && !touched.get() => {
                        Err(PutFailure::GatewayUnused(status))
                    }
                    Err(status) => Err(PutFailure::Failed(status.into())),
                }
            };

        let feed = async {
            // Moved in, so that the sender is gone as soon as feeding stops.
            let tx = tx;
            started_rx.await.map_err(|_| FeedError::Closed)?;
            touched.set(true);
            let mut sent = already;
            loop {
                let mut buf = BytesMut::with_capacity(CHUNK_SIZE);
                let eof = fill_chunk(reader, &mut buf)
                    .await
                    .map_err(|e| FeedError::Client(ClientError::Input(e)))?;
                if !buf.is_empty() {
                    sent += buf.len() as u64;
                    if let Some(expected) = size {
                        if sent > expected {
                            return Err(FeedError::Client(ClientError::InputTooLong { expected }));
                        }
                    }
                    let chunk = PutObjectRequest {
                        body: Some(Body::Chunk(buf.freeze())),
                    };
                    tx.send(Frame::Message(chunk))
                        .await
                        .map_err(|_| FeedError::Closed)?;
                    progress(Progress {
                        done: sent,
                        total: size,
                    });
                }
                if eof {
                    break;
                }
            }
            if let Some(expected) = size {
                if sent != expected {
                    return Err(FeedError::Client(ClientError::InputTooShort {
                        expected,
                        actual: sent,
                    }));
                }
            }
            let finish = PutObjectRequest {
                body: Some(Body::Finish(PutObjectFinish {
                    size: Some(sent),
                    blake3: Bytes::new(),
                })),
            };
            tx.send(Frame::Message(finish))
                .await
                .map_err(|_| FeedError::Closed)?;
            tx.send(Frame::End).await.map_err(|_| FeedError::Closed)
        };
        tokio::pin!(feed);

        let fed = tokio::select! {
            biased;
            // The server answered before the upload ended: in practice an
            // error (it rejected the header, or a stripe failed).
            joined = &mut call => return outcome(joined),
            fed = &mut feed => fed,
        };
        match fed {
            Ok(()) | Err(FeedError::Closed) => outcome(call.await),
            Err(FeedError::Client(err)) => {
                // The sender is gone, so the call is aborting; wait for it
                // so that the server has seen the abort when we return.
                let _ = tokio::time::timeout(Duration::from_secs(5), call).await;
                Err(PutFailure::Failed(err))
            }
        }
    }

    /// Where resumable upload `upload_id` of `bucket/key` stands; `None` when no agent knows
    /// it (never started, finished, or expired).
    pub async fn get_upload(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &[u8],
    ) -> Result<Option<GetUploadResponse>, ClientError> {
        let req = GetUploadRequest {
            bucket: bucket.to_string(),
            key: key.to_string(),
            pool: self.inner.options.pool.clone(),
            upload_id: Bytes::copy_from_slice(upload_id),
        };
        match self
            .idempotent(|mut c| {
                let r = self.request(req.clone());
                async move { c.get_upload(r).await }
            })
            .await
        {
            Ok(r) => Ok(Some(r)),
            Err(ClientError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Convenience for tests: stores `data` in one call.
    pub async fn put_bytes(
        &self,
        bucket: &str,
        key: &str,
        data: impl Into<Bytes>,
    ) -> Result<PutObjectResponse, ClientError> {
        let data: Bytes = data.into();
        let size = data.len() as u64;
        // The bytes are in memory, so unlike a stream they can be sent again:
        // a gateway whose connection died under the call (it reports a
        // transport error rather than UNAVAILABLE) costs one retry elsewhere.
        let mut last = None;
        for _ in 0..self.endpoints().len().max(1) {
            match self.put(bucket, key, &data[..], Some(size), |_| {}).await {
                Err(e) if e.is_transport_failure() => last = Some(e),
                done => return done,
            }
        }
        Err(last.unwrap_or_else(|| ClientError::Unavailable("no gateway to ask".to_string())))
    }

    /// Streams `bucket/key` (or a range of it) into `writer` and returns the
    /// object's info. Checks that exactly the expected number of bytes came,
    /// and for whole-object reads that their BLAKE3 matches the manifest.
    /// Bytes already written stay written when an error is returned.
    pub async fn get<W>(
        &self,
        bucket: &str,
        key: &str,
        range: Option<ByteRange>,
        writer: &mut W,
        mut progress: impl FnMut(Progress),
    ) -> Result<ObjectInfo, ClientError>
    where
        W: AsyncWrite + Unpin + ?Sized,
    {
        let request = GetObjectRequest {
            bucket: bucket.to_string(),
            key: key.to_string(),
            pool: self.inner.options.pool.clone(),
            offset: range.map(|r| r.offset),
            length: range.and_then(|r| r.length),
        };
        // Only opening the stream is retried: nothing has been written yet.
        let mut stream = self
            .idempotent(|mut client| {
                let request = self.request(request.clone());
                async move { client.get_object(request).await }
            })
            .await?;
        let first = stream.message().await?.ok_or_else(|| {
            ClientError::Protocol("the download ended before the object info".into())
        })?;
        let info = first.info.ok_or_else(|| {
            ClientError::Protocol("the first message carries no object info".into())
        })?;
        let expected = expected_length(info.size, range);
        let total = Some(expected);
        let mut hasher = (range.is_none() && !info.blake3.is_empty()).then(blake3::Hasher::new);
        let mut received = 0u64;
        let mut chunk = first.chunk;
        loop {
            if !chunk.is_empty() {
                received += chunk.len() as u64;
                if received > expected {
                    return Err(ClientError::Protocol(format!(
                        "the server sent more than the {expected} bytes asked for"
                    )));
                }
                if let Some(h) = hasher.as_mut() {
                    h.update(&chunk);
                }
                writer
                    .write_all(&chunk)
                    .await
                    .map_err(ClientError::Output)?;
                progress(Progress {
                    done: received,
                    total,
                });
            }
            match stream.message().await? {
                Some(message) => chunk = message.chunk,
                None => break,
            }
        }
        writer.flush().await.map_err(ClientError::Output)?;
        if received != expected {
            return Err(ClientError::Truncated { expected, received });
        }
        if let Some(h) = hasher {
            let actual = h.finalize().to_hex().to_string();
            if !actual.eq_ignore_ascii_case(&info.blake3) {
                return Err(ClientError::HashMismatch {
                    expected: info.blake3.clone(),
                    actual,
                });
            }
        }
        Ok(info)
    }

    /// Convenience for tests: reads the object (or range) into memory.
    pub async fn get_bytes(
        &self,
        bucket: &str,
        key: &str,
        range: Option<ByteRange>,
    ) -> Result<(ObjectInfo, Vec<u8>), ClientError> {
        let mut out = Vec::new();
        let info = self.get(bucket, key, range, &mut out, |_| {}).await?;
        Ok((info, out))
    }

    /// The object's metadata without its data.
    pub async fn stat(&self, bucket: &str, key: &str) -> Result<ObjectInfo, ClientError> {
        let request = StatObjectRequest {
            bucket: bucket.to_string(),
            key: key.to_string(),
            pool: self.inner.options.pool.clone(),
        };
        self.idempotent(|mut client| {
            let request = self.request(request.clone());
            async move { client.stat_object(request).await }
        })
        .await
    }

    /// Hides the object behind a tombstone; returns the tombstone's version.
    pub async fn delete(&self, bucket: &str, key: &str) -> Result<u64, ClientError> {
        let request = DeleteObjectRequest {
            bucket: bucket.to_string(),
            key: key.to_string(),
            pool: self.inner.options.pool.clone(),
        };
        let response = self
            .idempotent(|mut client| {
                let request = self.request(request.clone());
                async move { client.delete_object(request).await }
            })
            .await?;
        Ok(response.version)
    }

    /// One page of keys under `prefix`; pass the previous page's
    /// `next_page_token` ("" for the first). `page_size` 0 is the server default.
    pub async fn list(
        &self,
        bucket: &str,
        prefix: &str,
        page_token: &str,
        page_size: u32,
    ) -> Result<ListObjectsResponse, ClientError> {
        let request = ListObjectsRequest {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
            pool: self.inner.options.pool.clone(),
            page_token: page_token.to_string(),
            page_size,
        };
        self.idempotent(|mut client| {
            let request = self.request(request.clone());
            async move { client.list_objects(request).await }
        })
        .await
    }

    /// Every object under `prefix`, following page tokens to the end.
    pub async fn list_all(
        &self,
        bucket: &str,
        prefix: &str,
    ) -> Result<Vec<ObjectInfo>, ClientError> {
        let mut objects = Vec::new();
        let mut token = String::new();
        loop {
            let page = self.list(bucket, prefix, &token, 0).await?;
            objects.extend(page.objects);
            if page.next_page_token.is_empty() {
                return Ok(objects);
            }
            if page.next_page_token == token {
                return Err(ClientError::Protocol(
                    "the listing returned the same page token twice".to_string(),
                ));
            }
            token = page.next_page_token;
        }
    }
}

/// A channel to one agent. Over TLS the agent must prove it is a member of
/// the cluster (any member: a gateway address says nothing about which).
/// Connects to every uri at once: the gateways that answered, and a line per failure.
async fn connect_all(uris: &[String], options: &ClientOptions) -> (Vec<Gateway>, Vec<String>) {
    let attempts = uris.iter().map(|uri| async move {
        let result = connect_one(uri, options.connect_timeout, options.tls.as_ref()).await;
        (uri.clone(), result)
    });
    let mut gateways = Vec::new();
    let mut failures = Vec::new();
    for (uri, result) in futures::future::join_all(attempts).await {
        match result {
            Ok(channel) => {
                let client = ObjectServiceClient::new(channel.clone())
                    .max_decoding_message_size(MAX_MESSAGE_SIZE)
                    .max_encoding_message_size(MAX_MESSAGE_SIZE);
                gateways.push(Gateway {
                    uri,
                    channel,
                    client,
                });
            }
            Err(reason) => failures.push(format!("{uri}: {reason}")),
        }
    }
    (gateways, failures)
}

/// The endpoints of the other Up members, from `via`'s cluster map, in the scheme the
/// client uses. Best effort: a map that cannot be had leaves the client as it was.
async fn discover(via: &Gateway, known: &[String], options: &ClientOptions) -> Vec<String> {
    use potluck_proto::v1::agent_control_client::AgentControlClient;
    use potluck_proto::v1::{GetClusterMapRequest, MemberState};
    let mut control =
        AgentControlClient::new(via.channel.clone()).max_decoding_message_size(MAX_MESSAGE_SIZE);
    let mut request = tonic::Request::new(GetClusterMapRequest {});
    request.set_timeout(options.connect_timeout);
    let map = match control.get_cluster_map(request).await {
        Ok(map) => map.into_inner(),
        Err(e) => {
            tracing::debug!("no cluster map from {}: {}", via.uri, e.message());
            return Vec::new();
        }
    };
    let scheme = if options.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let mut found: Vec<String> = map
        .members
        .iter()
        .filter(|m| MemberState::try_from(m.state) == Ok(MemberState::Up))
        .filter_map(|m| normalize_endpoint(&m.endpoint).ok())
        .map(|uri| match uri.split_once("://") {
            Some((_, rest)) => format!("{scheme}://{rest}"),
            None => uri,
        })
        .filter(|uri| !known.contains(uri))
        .collect();
    found.sort();
    found.dedup();
    found
}

pub async fn connect_one(
    uri: &str,
    timeout: Duration,
    tls: Option<&potluck_tls::Material>,
) -> Result<Channel, String> {
    let mut endpoint = Endpoint::from_shared(uri.to_string()).map_err(|e| error_chain(&e))?;
    if let Some(m) = tls {
        endpoint = endpoint
            .tls_config(potluck_tls::client_config(m, potluck_tls::AGENT_NAME))
            .map_err(|e| error_chain(&e))?;
    }
    let endpoint = endpoint
        .connect_timeout(timeout)
        .tcp_nodelay(true)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20));
    // connect_timeout covers TCP only; bound the HTTP/2 handshake too.
    match tokio::time::timeout(timeout + Duration::from_secs(1), endpoint.connect()).await {
        Ok(Ok(channel)) => Ok(channel),
        Ok(Err(e)) => Err(error_chain(&e)),
        Err(_) => Err(format!("no answer within {} s", timeout.as_secs_f64())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "Zm9vYmFyYmF6cXV4MDEyMzQ1Njc4OWFiY2RlZmdoaWo";

    #[test]
    fn credentials_become_a_bearer_header_and_stay_out_of_debug_output() {
        let c = Credentials::new("pk-0123", SECRET).unwrap();
        assert_eq!(
            c.header.to_str().unwrap(),
            format!("Bearer pk-0123:{SECRET}")
        );
        assert!(c.header.is_sensitive());
        let shown = format!(
            "{c:?} {:?}",
            ClientOptions {
                credentials: Some(c.clone()),
                ..ClientOptions::default()
            }
        );
        assert!(
            shown.contains("pk-0123") && !shown.contains(SECRET),
            "{shown}"
        );
        assert!(matches!(
            Credentials::new("pk:1", SECRET),
            Err(CredentialsError::BadId(_))
        ));
        assert!(matches!(
            Credentials::new("pk-1", "has space"),
            Err(CredentialsError::BadSecret)
        ));
        assert!(Credentials::new("", SECRET).is_err());
    }

    #[test]
    fn credentials_read_from_a_mounted_secret_or_a_key_value_file() {
        let dir = tempfile::tempdir().unwrap();
        let mounted = dir.path().join("mounted");
        std::fs::create_dir(&mounted).unwrap();
        std::fs::write(mounted.join("accessKeyId"), "pk-dir").unwrap();
        std::fs::write(mounted.join("secretAccessKey"), format!("{SECRET}\n")).unwrap();
        std::fs::write(mounted.join("bucket"), "photos").unwrap();
        let c = Credentials::from_path(&mounted).unwrap();
        assert_eq!(c.access_key_id(), "pk-dir");
        assert_eq!(
            c.header.to_str().unwrap(),
            format!("Bearer pk-dir:{SECRET}")
        );

        let file = dir.path().join("creds.env");
        std::fs::write(
            &file,
            format!("bucket=photos\naccessKeyId=pk-file\nsecretAccessKey={SECRET}\npool=default\n"),
        )
        .unwrap();
        assert_eq!(
            Credentials::from_path(&file).unwrap().access_key_id(),
            "pk-file"
        );

        std::fs::write(&file, "accessKeyId=pk-file\n").unwrap();
        let err = Credentials::from_path(&file).unwrap_err();
        assert!(err.to_string().contains("secretAccessKey"), "{err}");
        let err = Credentials::from_path(&dir.path().join("nope")).unwrap_err();
        assert!(matches!(err, CredentialsError::Read { .. }), "{err}");
    }

    #[test]
    fn endpoints_get_a_scheme() {
        assert_eq!(
            normalize_endpoint("127.0.0.1:7100").unwrap(),
            "http://127.0.0.1:7100"
        );
        assert_eq!(
            normalize_endpoint(" http://127.0.0.1:7100/ ").unwrap(),
            "http://127.0.0.1:7100"
        );
        assert_eq!(
            normalize_endpoint("localhost:1").unwrap(),
            "http://localhost:1"
        );
        assert!(matches!(
            normalize_endpoint(""),
            Err(ClientError::InvalidEndpoint { .. })
        ));
        assert_eq!(normalize_endpoint("https://x:1").unwrap(), "https://x:1");
        assert!(matches!(
            normalize_endpoint("ftp://x:1"),
            Err(ClientError::InvalidEndpoint { .. })
        ));
        assert!(normalize_endpoint("bad host:1").is_err());
    }

    #[test]
    fn statuses_map_to_variants_keeping_the_message() {
        let e = ClientError::from(Status::not_found("no object photos/cat.jpg"));
        assert!(matches!(&e, ClientError::NotFound(m) if m == "no object photos/cat.jpg"));
        assert_eq!(e.code(), Some(Code::NotFound));
        assert!(matches!(
            ClientError::from(Status::unavailable("2 of 4 shards")),
            ClientError::Unavailable(_)
        ));
        assert!(matches!(
            ClientError::from(Status::out_of_range("offset past end")),
            ClientError::InvalidArgument(_)
        ));
        assert!(matches!(
            ClientError::from(Status::failed_precondition("stale epoch")),
            ClientError::FailedPrecondition(_)
        ));
        assert!(matches!(
            ClientError::from(Status::internal("boom")),
            ClientError::Server {
                code: Code::Internal,
                ..
            }
        ));
        let empty = ClientError::from(Status::new(Code::Unavailable, ""));
        assert!(empty.to_string().contains("unavailable"), "{empty}");
    }

    #[test]
    fn expected_length_clamps_to_the_object() {
        assert_eq!(expected_length(100, None), 100);
        let r = |offset, length| Some(ByteRange { offset, length });
        assert_eq!(expected_length(100, r(10, None)), 90);
        assert_eq!(expected_length(100, r(10, Some(20))), 20);
        assert_eq!(expected_length(100, r(90, Some(20))), 10);
        assert_eq!(expected_length(100, r(200, Some(20))), 0);
    }

    #[tokio::test]
    async fn upload_stream_ends_only_on_explicit_end() {
        let (tx, rx) = mpsc::channel(4);
        let (started_tx, mut started_rx) = oneshot::channel();
        let mut stream = Box::pin(upload_stream(rx, started_tx));
        assert!(
            started_rx.try_recv().is_err(),
            "not started before the first poll"
        );
        let chunk = PutObjectRequest {
            body: Some(Body::Chunk(Bytes::from_static(b"x"))),
        };
        tx.send(Frame::Message(chunk)).await.ok();
        tx.send(Frame::End).await.ok();
        assert!(stream.next().await.is_some());
        assert!(started_rx.try_recv().is_ok());
        assert!(stream.next().await.is_none());

        let (tx, rx) = mpsc::channel(4);
        let (started_tx, _started_rx) = oneshot::channel();
        let mut stream = Box::pin(upload_stream(rx, started_tx));
        drop(tx);
        let marker = stream.next().await.expect("an abort marker");
        assert!(marker.body.is_none());
        let waited = tokio::time::timeout(Duration::from_millis(50), stream.next()).await;
        assert!(waited.is_err(), "an abandoned upload must not end cleanly");
    }

    #[tokio::test]
    async fn fill_chunk_gathers_small_reads() {
        let data = vec![7u8; CHUNK_SIZE + 10];
        let mut reader = &data[..];
        let mut buf = BytesMut::with_capacity(CHUNK_SIZE);
        assert!(!fill_chunk(&mut reader, &mut buf).await.unwrap());
        assert_eq!(buf.len(), CHUNK_SIZE);
        let mut buf = BytesMut::with_capacity(CHUNK_SIZE);
        assert!(fill_chunk(&mut reader, &mut buf).await.unwrap());
        assert_eq!(buf.len(), 10);
    }

    #[tokio::test]
    async fn connect_reports_every_unreachable_endpoint() {
        // Bind then drop to get a port nobody listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let options = ClientOptions {
            connect_timeout: Duration::from_secs(2),
            ..ClientOptions::default()
        };
        let err = Client::connect_with(&[format!("127.0.0.1:{port}")], options)
            .await
            .unwrap_err();
        match err {
            ClientError::Unreachable { details } => assert!(details.contains(&port.to_string())),
            other => panic!("unexpected {other:?}"),
        }
    }
}
