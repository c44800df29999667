"""A plain grpcio client against a real local fleet, using only the proto.

This checks that the potluck.v1 contract is usable from another language:
streaming puts and gets, listing with prefixes and paging, ranged reads,
deletes, and the status codes clients are told to expect.
"""

from __future__ import annotations

import os
import re
import secrets

import grpc
import pytest

from potluck.v1 import potluck_pb2 as pb

MiB = 1 << 20
RPC_TIMEOUT_S = 30
PUT_CHUNK = MiB
MAX_GET_CHUNK = MiB  # the contract: GetObject streams chunks of at most 1 MiB
HEX64 = re.compile(r"^[0-9a-f]{64}$")

# key -> size; all under PREFIX so a prefix listing finds exactly these.
PREFIX = "py/objects/"
OBJECTS = {
    f"{PREFIX}empty": 0,
    f"{PREFIX}one-byte": 1,
    f"{PREFIX}three-mib-plus-7": 3 * MiB + 7,
    f"{PREFIX}nine-mib": 9 * MiB,
}
OTHER_KEY = "py/other/outside-the-prefix"

try:  # optional: verify the content hash when the blake3 package happens to be installed
    import blake3 as _blake3
except ImportError:  # pragma: no cover - hashlib has no BLAKE3
    _blake3 = None


def put_requests(bucket: str, key: str, data: bytes):
    yield pb.PutObjectRequest(header=pb.PutObjectHeader(bucket=bucket, key=key))
    for off in range(0, len(data), PUT_CHUNK):
        yield pb.PutObjectRequest(chunk=data[off : off + PUT_CHUNK])
    yield pb.PutObjectRequest(finish=pb.PutObjectFinish(size=len(data)))


def put(client, bucket: str, key: str, data: bytes) -> pb.PutObjectResponse:
    return client.PutObject(put_requests(bucket, key, data), timeout=RPC_TIMEOUT_S)


def get(client, bucket: str, key: str, **range_) -> tuple[pb.ObjectInfo | None, bytes, list[int]]:
    """Returns (info from the first message, the bytes, the chunk sizes)."""
    info = None
    parts: list[bytes] = []
    for i, msg in enumerate(
        client.GetObject(pb.GetObjectRequest(bucket=bucket, key=key, **range_), timeout=RPC_TIMEOUT_S)
    ):
        if i == 0:
            info = msg.info if msg.HasField("info") else None
        else:
            assert not msg.HasField("info"), f"message {i} of GetObject carries info again"
        parts.append(msg.chunk)
    return info, b"".join(parts), [len(p) for p in parts]


def list_all(client, bucket: str, prefix: str = "", page_size: int = 0) -> tuple[list[pb.ObjectInfo], list[int]]:
    """Follows next_page_token to the end; returns (objects, size of each page)."""
    objects: list[pb.ObjectInfo] = []
    pages: list[int] = []
    token = ""
    for _ in range(1000):
        resp = client.ListObjects(
            pb.ListObjectsRequest(bucket=bucket, prefix=prefix, page_token=token, page_size=page_size),
            timeout=RPC_TIMEOUT_S,
        )
        objects.extend(resp.objects)
        pages.append(len(resp.objects))
        token = resp.next_page_token
        if not token:
            return objects, pages
    raise AssertionError(f"ListObjects still paging after 1000 pages: {pages[:20]}...")


def rpc_error(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


@pytest.fixture(scope="module")
def bucket() -> str:
    # Lowercase letters, digits and '-': valid everywhere, unique per run.
    return f"pytest-{secrets.token_hex(4)}"


@pytest.fixture(scope="module")
def stored(object_clients, bucket):
    """Puts every object of OBJECTS (and OTHER_KEY) through agent 0."""
    writer = object_clients[0]
    out = {}
    for key, size in list(OBJECTS.items()) + [(OTHER_KEY, 1234)]:
        data = os.urandom(size)
        out[key] = (data, put(writer, bucket, key, data))
    return out


def reader_for(object_clients, n: int):
    """A client for some agent other than agent 0 (which did the puts)."""
    return object_clients[1 + n % (len(object_clients) - 1)]


def test_put_returns_object_info(stored, bucket):
    for key, (data, resp) in stored.items():
        info = resp.info
        assert (info.bucket, info.key) == (bucket, key)
        assert info.pool == "default"
        assert info.size == len(data)
        assert info.version > 0
        assert HEX64.match(info.blake3), info.blake3
        assert (info.k, info.m) == (4, 2)
        assert info.chunk_size > 0
        assert info.created_unix_ms > 0
        if _blake3 is not None:
            assert info.blake3 == _blake3.blake3(data).hexdigest()
    # Distinct content, distinct hashes (catches a constant or truncated hash).
    hashes = {resp.info.blake3 for _, resp in stored.values()}
    assert len(hashes) == len(stored)


def test_stat_from_every_agent(object_clients, stored, bucket):
    for key, (data, put_resp) in stored.items():
        for client in object_clients:
            info = client.StatObject(pb.StatObjectRequest(bucket=bucket, key=key), timeout=RPC_TIMEOUT_S)
            assert info.key == key
            assert info.size == len(data)
            assert HEX64.match(info.blake3), info.blake3
            assert info.blake3 == put_resp.info.blake3
            assert info.version == put_resp.info.version


@pytest.mark.parametrize("key", list(OBJECTS))
def test_get_through_another_agent(object_clients, stored, bucket, key):
    data, put_resp = stored[key]
    reader = reader_for(object_clients, list(OBJECTS).index(key))
    info, got, chunks = get(reader, bucket, key)
    assert info is not None, "the first GetObject message must carry info"
    assert info.size == len(data)
    assert info.blake3 == put_resp.info.blake3
    assert len(got) == len(data)
    assert got == data
    assert max(chunks, default=0) <= MAX_GET_CHUNK, f"chunk sizes {chunks}"


def test_ranged_get(object_clients, stored, bucket):
    key = f"{PREFIX}three-mib-plus-7"
    data, put_resp = stored[key]
    size = len(data)
    cases = [
        dict(offset=0, length=10),
        dict(offset=123, length=1),
        dict(offset=MiB - 3, length=2 * MiB + 5),  # crosses chunk boundaries
        dict(offset=3 * MiB),  # no length: to the end
        dict(offset=5, length=0),  # length 0: to the end
        dict(length=17),  # no offset: from the start
        dict(offset=size - 1, length=1),  # last byte
    ]
    checks = [(key, case) for case in cases]

    # Ranges across stripe boundaries, on the object that spans several stripes.
    big = f"{PREFIX}nine-mib"
    big_size = len(stored[big][0])
    stripe = put_resp.info.k * put_resp.info.chunk_size  # data bytes per stripe
    assert stripe > 0
    if stripe < big_size:
        checks += [
            (big, dict(offset=stripe - 11, length=22)),  # straddles the first boundary
            (big, dict(offset=stripe, length=stripe)),  # exactly the second stripe
            (big, dict(offset=stripe // 2, length=big_size - stripe)),  # middle, several stripes
            (big, dict(offset=big_size - stripe - 1)),  # to the end
        ]

    for n, (k, case) in enumerate(checks):
        content = stored[k][0]
        reader = reader_for(object_clients, n)
        _, got, chunks = get(reader, bucket, k, **case)
        start = case.get("offset", 0)
        length = case.get("length", 0)
        end = len(content) if length == 0 else start + length
        assert got == content[start:end], f"{k} range {case}: got {len(got)} bytes, want {end - start}"
        assert max(chunks, default=0) <= MAX_GET_CHUNK


def test_list_with_prefix(object_clients, stored, bucket):
    reader = reader_for(object_clients, 0)
    objects, _ = list_all(reader, bucket, prefix=PREFIX)
    assert [o.key for o in objects] == sorted(OBJECTS), "listing is sorted by key and honours the prefix"
    for o in objects:
        data, put_resp = stored[o.key]
        assert o.bucket == bucket
        assert o.size == len(data)
        assert o.blake3 == put_resp.info.blake3

    others, _ = list_all(reader, bucket, prefix="py/other/")
    assert [o.key for o in others] == [OTHER_KEY]

    everything, _ = list_all(reader, bucket)
    assert [o.key for o in everything] == sorted(stored)

    none, _ = list_all(reader, bucket, prefix="no/such/prefix/")
    assert none == []


def test_list_paging(object_clients, stored, bucket):
    reader = reader_for(object_clients, 1)
    objects, pages = list_all(reader, bucket, page_size=2)
    assert [o.key for o in objects] == sorted(stored), f"pages {pages}"
    assert all(n <= 2 for n in pages), f"page_size=2 exceeded: {pages}"
    assert len(pages) >= (len(stored) + 1) // 2, f"pages {pages}"

    prefixed, pages = list_all(reader, bucket, prefix=PREFIX, page_size=2)
    assert [o.key for o in prefixed] == sorted(OBJECTS), f"pages {pages}"
    assert all(n <= 2 for n in pages)


def test_delete_then_not_found(object_clients, bucket):
    key = "py/delete/me"
    data = os.urandom(MiB + 3)
    put_resp = put(object_clients[0], bucket, key, data)

    deleted = object_clients[2].DeleteObject(pb.DeleteObjectRequest(bucket=bucket, key=key), timeout=RPC_TIMEOUT_S)
    assert deleted.version > put_resp.info.version

    for client in (object_clients[0], object_clients[3]):
        err = rpc_error(lambda: client.StatObject(pb.StatObjectRequest(bucket=bucket, key=key), timeout=RPC_TIMEOUT_S))
        assert err.code() == grpc.StatusCode.NOT_FOUND, err
        assert err.details(), "NOT_FOUND should say what is missing"

    err = rpc_error(lambda: get(object_clients[4], bucket, key))
    assert err.code() == grpc.StatusCode.NOT_FOUND, err

    listed, _ = list_all(object_clients[5], bucket, prefix="py/delete/")
    assert listed == [], "a deleted object must not be listed"


def test_stat_missing_key_is_not_found(object_clients, bucket):
    err = rpc_error(
        lambda: object_clients[1].StatObject(
            pb.StatObjectRequest(bucket=bucket, key="py/never/written"), timeout=RPC_TIMEOUT_S
        )
    )
    assert err.code() == grpc.StatusCode.NOT_FOUND, err


@pytest.mark.parametrize("rpc", ["StatObject", "GetObject", "ListObjects", "PutObject", "DeleteObject"])
def test_invalid_bucket_name(object_clients, rpc):
    client = object_clients[0]
    bad = "Bad_Bucket"
    calls = {
        "StatObject": lambda: client.StatObject(pb.StatObjectRequest(bucket=bad, key="k"), timeout=RPC_TIMEOUT_S),
        "GetObject": lambda: get(client, bad, "k"),
        "ListObjects": lambda: client.ListObjects(pb.ListObjectsRequest(bucket=bad), timeout=RPC_TIMEOUT_S),
        "PutObject": lambda: put(client, bad, "k", b"data"),
        "DeleteObject": lambda: client.DeleteObject(pb.DeleteObjectRequest(bucket=bad, key="k"), timeout=RPC_TIMEOUT_S),
    }
    err = rpc_error(calls[rpc])
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
    assert err.details(), "INVALID_ARGUMENT should explain what is wrong"
