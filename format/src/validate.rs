//! Checks on client input, each failing with a message that says what to do.

use tonic::Status;

pub const MAX_KEY_BYTES: usize = 1024;
/// Largest data chunk a client may send in one PutObject message.
pub const MAX_PUT_CHUNK: usize = 4 << 20;
pub const DEFAULT_POOL: &str = "default";

pub fn bucket(name: &str) -> Result<(), Status> {
    let ok_len = (3..=63).contains(&name.len());
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    let ok_ends = name
        .bytes()
        .next()
        .zip(name.bytes().last())
        .is_some_and(|(a, z)| a.is_ascii_alphanumeric() && z.is_ascii_alphanumeric());
    if ok_len && ok_chars && ok_ends && !name.contains("..") {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "invalid bucket name {name:?}: use 3-63 characters of a-z, 0-9, '-' and '.', starting and ending with a letter or digit"
        )))
    }
}

pub fn key(key: &str) -> Result<(), Status> {
    if key.is_empty() {
        return Err(Status::invalid_argument(
            "object key is empty: give a key of 1 to 1024 bytes",
        ));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(Status::invalid_argument(format!(
            "object key is {} bytes long; the limit is {MAX_KEY_BYTES} bytes: shorten it",
            key.len()
        )));
    }
    if key.contains('\0') {
        return Err(Status::invalid_argument(
            "object key contains a NUL character: remove it",
        ));
    }
    Ok(())
}

pub fn prefix(prefix: &str) -> Result<(), Status> {
    if prefix.len() > MAX_KEY_BYTES {
        return Err(Status::invalid_argument(format!(
            "prefix is {} bytes long; keys are at most {MAX_KEY_BYTES} bytes",
            prefix.len()
        )));
    }
    Ok(())
}

/// The key a `ListObjects` page token stands for (hex of the last key listed); empty for the
/// first page.
pub fn page_token(token: &str) -> Result<String, Status> {
    if token.is_empty() {
        return Ok(String::new());
    }
    // A key is at most MAX_KEY_BYTES, so a longer token was not made by us: refuse it before
    // decoding (and allocating for) it.
    if token.len() > 2 * MAX_KEY_BYTES {
        return Err(Status::invalid_argument(format!(
            "page token is {} characters long, longer than any token this service returns; pass next_page_token exactly as returned",
            token.len()
        )));
    }
    hex::decode(token)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| {
            Status::invalid_argument(
                "page token is malformed; pass next_page_token exactly as returned",
            )
        })
}

/// The pool a request names, with the default filled in.
pub fn pool_name(pool: &str) -> &str {
    if pool.is_empty() {
        DEFAULT_POOL
    } else {
        pool
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_names() {
        for ok in ["abc", "my-bucket.2024", "a1b"] {
            assert!(bucket(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "ab",
            "ABC",
            "-abc",
            "abc-",
            "a..b",
            &"a".repeat(64),
            "has space",
            "naïve",
        ] {
            let e = bucket(bad).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad}");
        }
    }

    #[test]
    fn keys() {
        assert!(key("a").is_ok());
        assert!(key(&"k".repeat(1024)).is_ok());
        assert_eq!(key("").unwrap_err().code(), tonic::Code::InvalidArgument);
        let long = key(&"k".repeat(1025)).unwrap_err();
        assert!(long.message().contains("1025"));
        assert!(key("a\0b").is_err());
    }

    #[test]
    fn page_tokens_round_trip_and_garbage_is_refused() {
        assert_eq!(page_token(&hex::encode("a/b")).unwrap(), "a/b");
        assert_eq!(page_token("").unwrap(), "");
        for bad in ["zz".to_string(), "f".into(), "ff".into(), "0".repeat(2050)] {
            let e = page_token(&bad).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad}");
        }
    }
}
