//! Malformed and impossible requests get a clear error, and the agent that
//! received them keeps serving.

use potluck_e2e::*;
use potluck_proto::v1 as pb;
use tonic::Code;

const B: &str = "bad-input";

fn assert_refused<T: std::fmt::Debug>(r: Result<T, tonic::Status>, code: Code, says: &str) {
    let e = r.expect_err("must be refused");
    assert_eq!(e.code(), code, "{e}");
    assert!(
        e.message().contains(says),
        "message {:?} should mention {says:?}",
        e.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_with_a_reason_and_the_agent_keeps_serving() {
    // A second pool wider than the fleet: k+m = 8 > 6 members.
    let fleet = start_fleet_with_wide_pool().await;
    let ep = fleet.endpoints()[0].clone();
    let mut c = object_client(&ep).await;

    assert_refused(
        put(&mut c, B, "", b"x").await,
        Code::InvalidArgument,
        "key is empty",
    );
    assert_refused(
        put(&mut c, B, &"k".repeat(1025), b"x").await,
        Code::InvalidArgument,
        "1024",
    );
    assert_refused(
        put(&mut c, "Bad_Bucket", "k", b"x").await,
        Code::InvalidArgument,
        "bucket",
    );

    // Data before any header.
    let r = c
        .put_object(tokio_stream::iter(vec![chunk(bytes::Bytes::from_static(
            b"data",
        ))]))
        .await;
    assert_refused(r, Code::InvalidArgument, "header");
    // An empty stream.
    let r = c
        .put_object(tokio_stream::iter(Vec::<pb::PutObjectRequest>::new()))
        .await;
    assert_refused(r, Code::InvalidArgument, "header");
    // A chunk over the 4 MiB limit.
    let r = c
        .put_object(tokio_stream::iter(vec![
            header(B, "big-chunk"),
            chunk(bytes::Bytes::from(vec![0u8; 5 * MIB])),
        ]))
        .await;
    assert_refused(r, Code::InvalidArgument, "limit");
    // A declared size the stream does not meet.
    let mut h = header(B, "short");
    if let Some(pb::put_object_request::Body::Header(hh)) = h.body.as_mut() {
        hh.size = Some(10);
    }
    let r = c
        .put_object(tokio_stream::iter(vec![
            h,
            chunk(bytes::Bytes::from_static(b"abc")),
            finish(),
        ]))
        .await;
    assert_refused(r, Code::InvalidArgument, "declared");
    // A stream that ends without its finish message (what a cancelled client
    // looks like to the server) stores nothing.
    let r = c
        .put_object(tokio_stream::iter(vec![
            header(B, "unfinished"),
            chunk(bytes::Bytes::from_static(b"abc")),
        ]))
        .await;
    assert_refused(r, Code::Cancelled, "finish");
    assert_refused(
        get(&mut c, B, "unfinished").await,
        Code::NotFound,
        "not found",
    );
    // A content hash that does not match what arrived.
    let r = c
        .put_object(tokio_stream::iter(vec![
            header(B, "damaged"),
            chunk(bytes::Bytes::from_static(b"abc")),
            pb::PutObjectRequest {
                body: Some(pb::put_object_request::Body::Finish(pb::PutObjectFinish {
                    size: Some(3),
                    blake3: bytes::Bytes::copy_from_slice(blake3::hash(b"abd").as_bytes()),
                })),
            },
        ]))
        .await;
    assert_refused(r, Code::DataLoss, "BLAKE3");

    // Unknown pool, and a pool the fleet cannot place.
    let mut h = header(B, "k");
    if let Some(pb::put_object_request::Body::Header(hh)) = h.body.as_mut() {
        hh.pool = "nope".into();
    }
    let r = c.put_object(tokio_stream::iter(vec![h.clone()])).await;
    assert_refused(r, Code::InvalidArgument, "unknown pool");
    if let Some(pb::put_object_request::Body::Header(hh)) = h.body.as_mut() {
        hh.pool = "wide".into();
    }
    let r = c.put_object(tokio_stream::iter(vec![h])).await;
    assert_refused(r, Code::FailedPrecondition, "failure domains");

    // Ranges beyond the end, and missing objects.
    put(&mut c, B, "ten", b"0123456789").await.expect("put");
    assert_refused(
        get_range(&mut c, B, "ten", Some(10), Some(1)).await,
        Code::OutOfRange,
        "10 bytes long",
    );
    assert_refused(get(&mut c, B, "missing").await, Code::NotFound, "not found");
    let r = c
        .list_objects(pb::ListObjectsRequest {
            bucket: B.into(),
            page_token: "not-hex".into(),
            ..Default::default()
        })
        .await;
    assert_refused(r, Code::InvalidArgument, "page token");

    // Still serving.
    assert_eq!(
        get(&mut c, B, "ten").await.expect("still serving"),
        b"0123456789"
    );
    assert_eq!(
        get_range(&mut c, B, "ten", Some(3), Some(4))
            .await
            .expect("range"),
        b"3456"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_are_served() {
    let fleet = start_fleet(&[]).await;
    let channel = try_channel(&fleet.endpoints()[2]).await.expect("connect");
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let r = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "potluck.v1.ObjectService".into(),
        })
        .await
        .expect("health check")
        .into_inner();
    assert_eq!(
        r.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    // Reflection lists the contract's services, so grpcurl needs no .proto.
    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        ServerReflectionRequest,
    };
    let mut reflection = ServerReflectionClient::new(channel);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .expect("reflection")
        .into_inner();
    let answer = answers
        .message()
        .await
        .expect("reflection answer")
        .expect("one answer");
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("unexpected reflection answer: {answer:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in [
        "potluck.v1.ObjectService",
        "potluck.v1.ShardService",
        "potluck.v1.AgentControl",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_members_refuse_with_resource_exhausted_and_say_so() {
    // Every member offers 3 MiB; a 16 MiB put needs 4 MiB of shards on each.
    let fleet = start_fleet_with(&[], |cfg| cfg.capacity_bytes = 3 << 20).await;
    let mut c = object_client(&fleet.endpoints()[0]).await;
    put(&mut c, B, "fits", &random_bytes(MIB, 1))
        .await
        .expect("a small put fits");
    let err = put(&mut c, B, "too-big", &random_bytes(16 * MIB, 2))
        .await
        .expect_err("members are full");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    assert!(
        err.message().contains("full") && err.message().contains("add members or free space"),
        "{}",
        err.message()
    );
    assert_refused(get(&mut c, B, "too-big").await, Code::NotFound, "not found");
    assert_eq!(
        get(&mut c, B, "fits").await.expect("still serving").len(),
        MIB
    );
}

/// Bytes in, bytes out: lets a test put any payload inside a well-framed gRPC message.
#[derive(Clone, Copy, Default)]
struct RawCodec;
struct RawEncoder;
struct RawDecoder;

impl tonic::codec::Codec for RawCodec {
    type Encode = bytes::Bytes;
    type Decode = bytes::Bytes;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl tonic::codec::Encoder for RawEncoder {
    type Item = bytes::Bytes;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: bytes::Bytes,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawDecoder {
    type Item = bytes::Bytes;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<bytes::Bytes>, tonic::Status> {
        use bytes::Buf;
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// One unary call of `method` carrying `payload` as its message, whatever it is.
async fn raw_unary(
    channel: &tonic::transport::Channel,
    method: &'static str,
    payload: &'static [u8],
) -> Result<tonic::Response<bytes::Bytes>, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(method);
    grpc.unary(
        tonic::Request::new(bytes::Bytes::from_static(payload)),
        path,
        RawCodec,
    )
    .await
}

fn shard_header(epoch: u64, id: pb::ShardId, length: u64, hash: &[u8]) -> pb::PutShardRequest {
    pb::PutShardRequest {
        epoch,
        header: Some(pb::ShardHeader {
            id: Some(id),
            length,
            blake3: bytes::Bytes::copy_from_slice(hash),
        }),
        data: bytes::Bytes::new(),
    }
}

fn data_frame(data: Vec<u8>) -> pb::PutShardRequest {
    pb::PutShardRequest {
        data: bytes::Bytes::from(data),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversize_requests_of_every_kind_leave_the_agent_serving() {
    let fleet = start_fleet(&[]).await;
    let ep = fleet.endpoints()[0].clone();
    let pid = fleet.pid(0).expect("agent 0 runs");
    let epoch = fleet.map().epoch;
    let channel = try_channel(&ep).await.expect("connect");
    let mut c = object_client(&ep).await;
    put(&mut c, B, "before", b"kept").await.expect("put");

    // Garbage where a protobuf message should be, on unary calls of every service.
    for method in [
        "/potluck.v1.ObjectService/StatObject",
        "/potluck.v1.ObjectService/GetObject",
        "/potluck.v1.ShardService/PutManifest",
        "/potluck.v1.ShardService/GetShard",
        "/potluck.v1.AgentControl/ApplyClusterMap",
    ] {
        let r = raw_unary(
            &channel,
            method,
            b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",
        )
        .await;
        assert_refused(r, Code::Internal, "decode");
    }
    // A method that does not exist.
    let r = raw_unary(&channel, "/potluck.v1.ShardService/Nope", b"").await;
    assert_eq!(r.expect_err("unknown method").code(), Code::Unimplemented);

    // Messages over the 16 MiB limit: a unary one, and a chunk inside an upload.
    let big = potluck_agent::peers::MAX_MESSAGE_BYTES + MIB;
    let mut shards = pb::shard_service_client::ShardServiceClient::new(channel.clone())
        .max_encoding_message_size(64 << 20);
    let r = shards
        .put_manifest(pb::PutManifestRequest {
            epoch,
            pg: 0,
            manifest: Some(pb::Manifest {
                bucket: B.into(),
                key: "huge".into(),
                blake3: bytes::Bytes::from(vec![0u8; big]),
                ..Default::default()
            }),
        })
        .await;
    assert_refused(r, Code::OutOfRange, "too large");
    let mut big_client = pb::object_service_client::ObjectServiceClient::new(channel.clone())
        .max_encoding_message_size(64 << 20);
    let r = big_client
        .put_object(tokio_stream::iter(vec![
            header(B, "oversize"),
            chunk(bytes::Bytes::from(vec![7u8; big])),
            finish(),
        ]))
        .await;
    assert_refused(r, Code::ResourceExhausted, "too large");

    // Wrong shard ids, hashes and lengths.
    let good_id = pb::ShardId {
        pool: "default".into(),
        pg: 0,
        object_id: bytes::Bytes::from(vec![9u8; 16]),
        stripe: 0,
        shard: 0,
    };
    let hash = blake3::hash(b"0123456789");
    let cases: Vec<(pb::ShardId, u64, Vec<u8>, &str)> = vec![
        (
            pb::ShardId {
                object_id: bytes::Bytes::from_static(b"short"),
                ..good_id.clone()
            },
            10,
            hash.as_bytes().to_vec(),
            "object id",
        ),
        (
            pb::ShardId {
                shard: 40,
                ..good_id.clone()
            },
            10,
            hash.as_bytes().to_vec(),
            "shard index",
        ),
        (
            pb::ShardId {
                pool: "p".repeat(64),
                ..good_id.clone()
            },
            10,
            hash.as_bytes().to_vec(),
            "pool name",
        ),
        (good_id.clone(), 10, vec![1, 2, 3], "32 bytes"),
        // A huge declared length.
        (good_id.clone(), 1 << 40, hash.as_bytes().to_vec(), "limit"),
    ];
    for (id, length, h, says) in cases {
        let r = shards
            .put_shard(tokio_stream::iter(vec![
                shard_header(epoch, id, length, &h),
                data_frame(b"0123456789".to_vec()),
            ]))
            .await;
        assert_refused(r, Code::InvalidArgument, says);
    }
    // A stream cut short of its announced length, one that runs past it, and one without a
    // header.
    let r = shards
        .put_shard(tokio_stream::iter(vec![
            shard_header(epoch, good_id.clone(), 100, hash.as_bytes()),
            data_frame(b"0123456789".to_vec()),
        ]))
        .await;
    assert_refused(r, Code::InvalidArgument, "ended after 10 of 100");
    let r = shards
        .put_shard(tokio_stream::iter(vec![
            shard_header(epoch, good_id.clone(), 4, hash.as_bytes()),
            data_frame(b"0123456789".to_vec()),
        ]))
        .await;
    assert_refused(r, Code::InvalidArgument, "exceeds the length");
    let r = shards
        .put_shard(tokio_stream::iter(vec![pb::PutShardRequest {
            epoch,
            ..data_frame(b"x".to_vec())
        }]))
        .await;
    assert_refused(r, Code::InvalidArgument, "header");
    let r = shards
        .get_shard(pb::GetShardRequest { epoch, id: None })
        .await;
    assert_refused(r, Code::InvalidArgument, "shard id missing");
    // Names too long to be keys, and PGs out of range.
    let r = shards
        .get_manifest(pb::GetManifestRequest {
            epoch,
            pool: "default".into(),
            bucket: "b".repeat(300),
            key: "k".into(),
        })
        .await;
    assert_refused(r, Code::InvalidArgument, "bucket");
    let r = shards
        .list_manifests(pb::ListManifestsRequest {
            epoch,
            pool: "default".into(),
            pg: 9,
            pg_count: 4,
            ..Default::default()
        })
        .await;
    assert_refused(r, Code::InvalidArgument, "out of range");
    // A declared object size nothing could meet, and a page token longer than any key.
    let mut h = header(B, "liar");
    if let Some(pb::put_object_request::Body::Header(hh)) = h.body.as_mut() {
        hh.size = Some(u64::MAX);
    }
    let r = c
        .put_object(tokio_stream::iter(vec![
            h,
            chunk(bytes::Bytes::from_static(b"abc")),
            finish(),
        ]))
        .await;
    assert_refused(r, Code::InvalidArgument, "declared");
    let r = c
        .list_objects(pb::ListObjectsRequest {
            bucket: B.into(),
            page_token: "ab".repeat(5000),
            ..Default::default()
        })
        .await;
    assert_refused(r, Code::InvalidArgument, "page token");
    // A map naming one pool twice is refused, and the agent keeps its map.
    let mut control = pb::agent_control_client::AgentControlClient::new(channel.clone());
    let mut map = fleet.map().clone();
    map.epoch += 1;
    map.pools.push(map.pools[0].clone());
    let r = control
        .apply_cluster_map(pb::ApplyClusterMapRequest { map: Some(map) })
        .await;
    assert_refused(r, Code::InvalidArgument, "listed twice");

    // More uploads open at once on one connection than it may run: those over the limit
    // are refused at once, the rest keep waiting for their data.
    let over = potluck_agent::peers::MAX_CALLS_PER_CONNECTION + 64;
    let mut senders = Vec::with_capacity(over);
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..over {
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        tx.send(header(B, &format!("held-{i}")))
            .await
            .expect("send");
        senders.push(tx);
        let mut client = pb::object_service_client::ObjectServiceClient::new(channel.clone());
        calls.spawn(async move {
            client
                .put_object(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
        });
    }
    let mut shed = 0;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while shed < 64 {
        let next = tokio::time::timeout_at(deadline, calls.join_next())
            .await
            .expect("the calls over the limit are refused within 30 s")
            .expect("calls remain")
            .expect("call task");
        let e = next.expect_err("a held upload cannot succeed");
        assert_eq!(e.code(), Code::ResourceExhausted, "{e}");
        assert!(e.message().contains("Too many active requests"), "{e}");
        shed += 1;
    }
    assert_eq!(calls.len(), potluck_agent::peers::MAX_CALLS_PER_CONNECTION);
    // Another connection is not held back by this one.
    let mut other = object_client(&ep).await;
    assert_eq!(get(&mut other, B, "before").await.expect("get"), b"kept");
    // Closing the held uploads without their finish stores nothing.
    drop(senders);
    while let Some(r) = calls.join_next().await {
        let e = r.expect("call task").expect_err("unfinished upload");
        assert_eq!(e.code(), Code::Cancelled, "{e}");
    }

    // Still alive, still serving on the same connection and on new ones.
    assert!(process_alive(pid), "agent 0 must survive all of it");
    put(&mut c, B, "after", b"still serving")
        .await
        .expect("put after");
    assert_eq!(
        get(&mut c, B, "after").await.expect("get"),
        b"still serving"
    );
    let mut fresh = object_client(&ep).await;
    assert_eq!(get(&mut fresh, B, "before").await.expect("get"), b"kept");
}
