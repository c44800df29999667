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
    let channel = tonic::transport::Endpoint::from_shared(fleet.endpoints()[2].clone())
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
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
