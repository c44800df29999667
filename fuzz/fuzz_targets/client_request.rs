//! What a client sends the gateway: PutObject headers, GetObject and ListObjects requests
//! (protobuf bytes) through the checks the gateway runs on them, page tokens included.
//! Input: one byte choosing the message, then its bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use potluck_format::keys;
use potluck_format::validate;
use potluck_proto::v1 as pb;
use prost::Message;

fn bucket(b: &str) -> bool {
    let ok = validate::bucket(b).is_ok();
    if ok {
        assert!((3..=63).contains(&b.len()));
        assert!(b
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.'));
        // Bucket names go into manifest keys behind a one-byte length.
        assert!(keys::bucket_prefix("p", b).len() == 3 + b.len());
    }
    ok
}

fn key(k: &str) -> bool {
    let ok = validate::key(k).is_ok();
    if ok {
        assert!((1..=validate::MAX_KEY_BYTES).contains(&k.len()) && !k.contains('\0'));
        // A key can always be resumed after: its page token decodes back to it.
        assert_eq!(
            validate::page_token(&hex::encode(k)).ok().as_deref(),
            Some(k)
        );
    }
    ok
}

fn pool(p: &str) {
    let name = validate::pool_name(p);
    assert!(!name.is_empty());
}

fuzz_target!(|data: &[u8]| {
    let Some((sel, bytes)) = data.split_first() else {
        return;
    };
    match sel % 4 {
        0 => {
            let Ok(req) = pb::PutObjectRequest::decode(bytes) else {
                return;
            };
            if let Some(pb::put_object_request::Body::Header(h)) = req.body {
                if bucket(&h.bucket) && key(&h.key) {
                    let _ = keys::manifest_key(validate::pool_name(&h.pool), &h.bucket, &h.key);
                }
                pool(&h.pool);
            }
        }
        1 => {
            let Ok(req) = pb::GetObjectRequest::decode(bytes) else {
                return;
            };
            bucket(&req.bucket);
            key(&req.key);
            pool(&req.pool);
        }
        2 => {
            let Ok(req) = pb::ListObjectsRequest::decode(bytes) else {
                return;
            };
            bucket(&req.bucket);
            let _ = validate::prefix(&req.prefix);
            if let Ok(after) = validate::page_token(&req.page_token) {
                assert!(hex::encode(&after).eq_ignore_ascii_case(&req.page_token));
            }
            pool(&req.pool);
        }
        _ => {
            let s = String::from_utf8_lossy(bytes);
            bucket(&s);
            key(&s);
            let _ = validate::prefix(&s);
            let _ = validate::page_token(&s);
            pool(&s);
        }
    }
});
