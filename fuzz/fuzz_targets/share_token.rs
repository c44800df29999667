//! Share tokens (and Range headers) as agents receive them (gRPC `authorization: Share <token>` metadata and the
//! HTTP path `/s/<token>`): any text must decode or be refused without panicking, and a
//! token that decodes must verify only with the key it was signed with.
#![no_main]

use libfuzzer_sys::fuzz_target;
use potluck_format::{http_range, share};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    // The same bytes as a Range header: a part is always within the object.
    let size = data.len() as u64;
    if let http_range::Wanted::Part { start, end } = http_range::parse_range(Some(&text), size) {
        assert!(start <= end && end < size);
    }
    let link = share::token_of_link(&text);
    let _ = share::fragment_key(&text);
    let _ = share::key_of_link(&text);
    let Ok(unverified) = share::parse(link) else {
        return;
    };
    let grant = unverified.grant().clone();
    // Re-signing what decoded gives a token that decodes to the same grant and verifies.
    let secret = [7u8; 32];
    if let Ok(token) = grant.sign(&secret) {
        let again = share::parse(&token).expect("a signed token decodes");
        assert_eq!(again.grant(), &grant);
        assert_eq!(again.verify(&secret).ok().as_ref(), Some(&grant));
    }
    let _ = grant.covers_key(&grant.path);
    let _ = grant.covers_listing(&grant.path);
    let _ = unverified.verify(&secret);
});
