//! Share tokens: a self-describing, signed grant to read one object or every key under a
//! prefix of one bucket until an expiry.
//!
//! Text form: `pl1.<base64url(payload)>.<base64url(mac)>` (no padding). The payload, all
//! integers big-endian:
//!
//! | bytes | field |
//! |---|---|
//! | 1 | version, `1` |
//! | 1 | flags: bit 0 set = `path` is a prefix; other bits must be 0 |
//! | 16 | grant id (random) |
//! | 8 | expiry, unix seconds |
//! | 1 + n | bucket name |
//! | 1 + n | access key id the grant was signed for |
//! | 2 + n | object key, or prefix |
//!
//! The MAC is keyed BLAKE3 over `pl1.` and the payload bytes, with a key derived
//! (`blake3::derive_key`, [`MAC_CONTEXT`]) from the BLAKE3 of the access key's secret: the
//! holder of the secret can sign, every agent can verify with the cluster map (which carries
//! that hash), and rotating the bucket's key invalidates every link signed with the old one.
//! A fleet with other keys (another cluster) cannot verify the token at all.
//!
//! No RocksDB and no runtime here: tokens come from anyone on the network, so the decoder is
//! fuzzed (`fuzz/fuzz_targets/share_token.rs`).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

/// What every token starts with; also covered by the MAC.
pub const PREFIX: &str = "pl1.";
/// Domain separation for the MAC key: never reuse the secret hash for anything else.
pub const MAC_CONTEXT: &str = "potluck.dev 2026-11 share grant token v1 MAC key";
/// Longest token text accepted, checked before any decoding. A maximal payload (1024-byte
/// key, 128-byte key id, 63-byte bucket) is about 1.3 KB, 1.8 K characters as text.
pub const MAX_TOKEN_CHARS: usize = 2048;
const VERSION: u8 = 1;
const FLAG_PREFIX: u8 = 1;
const MAC_LEN: usize = 32;
const FIXED: usize = 1 + 1 + 16 + 8;

/// What a token grants. Nothing in it is secret: anyone holding the link can decode it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// Random; names the grant for `share ls` and revocation.
    pub id: [u8; 16],
    pub bucket: String,
    /// The access key whose secret signed the token.
    pub access_key_id: String,
    /// An object key, or a prefix when `prefix` is set (an empty prefix is the whole bucket).
    pub path: String,
    pub prefix: bool,
    /// Unix seconds after which the token opens nothing.
    pub expires_unix: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("not a share token ({0}); a link looks like https://HOST/s/pl1.XXXX.YYYY")]
    Malformed(&'static str),
    #[error("share token version {0} is not known to this agent; upgrade the agents or ask for a new link")]
    Version(u8),
    #[error("the share token's signature does not match: it was altered, or signed by another fleet or with a key that has since been rotated; ask the owner for a new link")]
    BadSignature,
}

impl Grant {
    /// The id as text (32 hex digits), as `potluck share ls` shows it.
    pub fn id_hex(&self) -> String {
        hex::encode(self.id)
    }

    /// Whether the grant opens object `key` of its bucket.
    pub fn covers_key(&self, key: &str) -> bool {
        if self.prefix {
            key.starts_with(&self.path)
        } else {
            key == self.path
        }
    }

    /// Whether a listing of keys under `prefix` stays within the grant: only prefix grants
    /// list, and only within their prefix.
    pub fn covers_listing(&self, prefix: &str) -> bool {
        self.prefix && prefix.starts_with(&self.path)
    }

    fn payload(&self) -> Result<Vec<u8>, TokenError> {
        let (b, k, p) = (
            self.bucket.as_bytes(),
            self.access_key_id.as_bytes(),
            self.path.as_bytes(),
        );
        let (Ok(bl), Ok(kl), Ok(pl)) = (
            u8::try_from(b.len()),
            u8::try_from(k.len()),
            u16::try_from(p.len()),
        ) else {
            return Err(TokenError::Malformed("a field is too long"));
        };
        let mut out = Vec::with_capacity(FIXED + 4 + b.len() + k.len() + p.len());
        out.push(VERSION);
        out.push(if self.prefix { FLAG_PREFIX } else { 0 });
        out.extend_from_slice(&self.id);
        out.extend_from_slice(&self.expires_unix.to_be_bytes());
        out.push(bl);
        out.extend_from_slice(b);
        out.push(kl);
        out.extend_from_slice(k);
        out.extend_from_slice(&pl.to_be_bytes());
        out.extend_from_slice(p);
        Ok(out)
    }

    /// The token text, signed with the key derived from `secret_blake3`.
    pub fn sign(&self, secret_blake3: &[u8; 32]) -> Result<String, TokenError> {
        let payload = self.payload()?;
        let mac = mac(secret_blake3, &payload);
        let text = format!(
            "{PREFIX}{}.{}",
            URL_SAFE_NO_PAD.encode(&payload),
            URL_SAFE_NO_PAD.encode(mac.as_bytes())
        );
        if text.len() > MAX_TOKEN_CHARS {
            return Err(TokenError::Malformed("the token would be too long"));
        }
        Ok(text)
    }
}

fn mac(secret_blake3: &[u8; 32], payload: &[u8]) -> blake3::Hash {
    let key = blake3::derive_key(MAC_CONTEXT, secret_blake3);
    let mut h = blake3::Hasher::new_keyed(&key);
    h.update(PREFIX.as_bytes());
    h.update(payload);
    h.finalize()
}

/// A token whose structure decoded but whose signature is not checked yet: the caller looks
/// up the secret hash of `grant().access_key_id` and calls [`Unverified::verify`].
#[derive(Debug)]
pub struct Unverified {
    grant: Grant,
    payload: Vec<u8>,
    mac: [u8; MAC_LEN],
}

impl Unverified {
    /// What the token claims; trust none of it before `verify`.
    pub fn grant(&self) -> &Grant {
        &self.grant
    }

    /// The grant, if the MAC matches the key derived from `secret_blake3`. The comparison is
    /// `blake3::Hash` equality, which takes constant time.
    pub fn verify(self, secret_blake3: &[u8; 32]) -> Result<Grant, TokenError> {
        if mac(secret_blake3, &self.payload) == blake3::Hash::from(self.mac) {
            Ok(self.grant)
        } else {
            Err(TokenError::BadSignature)
        }
    }
}

/// Decodes a token's text. Never panics, allocates at most about the text's length.
pub fn parse(token: &str) -> Result<Unverified, TokenError> {
    if token.len() > MAX_TOKEN_CHARS {
        return Err(TokenError::Malformed("longer than any token"));
    }
    let rest = token
        .strip_prefix(PREFIX)
        .ok_or(TokenError::Malformed("it does not start with pl1."))?;
    let (payload_text, mac_text) = rest
        .split_once('.')
        .ok_or(TokenError::Malformed("no signature part"))?;
    let payload = URL_SAFE_NO_PAD
        .decode(payload_text)
        .map_err(|_| TokenError::Malformed("the payload is not base64url"))?;
    let mac_bytes = URL_SAFE_NO_PAD
        .decode(mac_text)
        .map_err(|_| TokenError::Malformed("the signature is not base64url"))?;
    let mac: [u8; MAC_LEN] = mac_bytes
        .try_into()
        .map_err(|_| TokenError::Malformed("the signature is not 32 bytes"))?;
    let grant = decode_payload(&payload)?;
    Ok(Unverified {
        grant,
        payload,
        mac,
    })
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], TokenError> {
        if self.0.len() < n {
            return Err(TokenError::Malformed("the payload is cut short"));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn text(&mut self, len: usize) -> Result<String, TokenError> {
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| TokenError::Malformed("a field is not UTF-8"))
    }
}

fn decode_payload(payload: &[u8]) -> Result<Grant, TokenError> {
    let mut r = Reader(payload);
    let version = r.take(1)?[0];
    if version != VERSION {
        return Err(TokenError::Version(version));
    }
    let flags = r.take(1)?[0];
    if flags & !FLAG_PREFIX != 0 {
        return Err(TokenError::Malformed("unknown flags"));
    }
    let mut id = [0u8; 16];
    id.copy_from_slice(r.take(16)?);
    let mut exp = [0u8; 8];
    exp.copy_from_slice(r.take(8)?);
    let bl = r.take(1)?[0] as usize;
    let bucket = r.text(bl)?;
    let kl = r.take(1)?[0] as usize;
    let access_key_id = r.text(kl)?;
    let pl = r.take(2)?;
    let pl = u16::from_be_bytes([pl[0], pl[1]]) as usize;
    let path = r.text(pl)?;
    if !r.0.is_empty() {
        return Err(TokenError::Malformed("bytes after the payload"));
    }
    Ok(Grant {
        id,
        bucket,
        access_key_id,
        path,
        prefix: flags & FLAG_PREFIX != 0,
        expires_unix: u64::from_be_bytes(exp),
    })
}

/// Finds the token in a link: the path segment after `/s/` of a URL, or the text itself,
/// without any `#fragment` or `?query`.
pub fn token_of_link(link: &str) -> &str {
    let after = after_s(link);
    after.split('/').next().unwrap_or(after).trim()
}

/// The object key after the token in a link to a prefix grant (`.../s/<token>/<key>`).
pub fn key_of_link(link: &str) -> Option<&str> {
    after_s(link)
        .split_once('/')
        .map(|(_, key)| key)
        .filter(|k| !k.is_empty())
}

fn after_s(link: &str) -> &str {
    let no_fragment = link.split('#').next().unwrap_or(link);
    let no_query = no_fragment.split('?').next().unwrap_or(no_fragment);
    match no_query.find("/s/pl") {
        Some(at) => &no_query[at + 3..],
        None => no_query.trim(),
    }
}

/// The `k=` value of a link's fragment (a content key for client-side encrypted objects),
/// which browsers and the CLI never send to a server.
pub fn fragment_key(link: &str) -> Option<&str> {
    let (_, fragment) = link.split_once('#')?;
    fragment
        .split('&')
        .find_map(|part| part.strip_prefix("k="))
        .filter(|k| !k.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant() -> Grant {
        Grant {
            id: [7; 16],
            bucket: "photos".into(),
            access_key_id: "pk-0123".into(),
            path: "2026/cat.jpg".into(),
            prefix: false,
            expires_unix: 1_900_000_000,
        }
    }

    const SECRET: [u8; 32] = [42; 32];

    #[test]
    fn round_trip_and_verify() {
        for prefix in [false, true] {
            let g = Grant { prefix, ..grant() };
            let token = g.sign(&SECRET).unwrap();
            assert!(token.starts_with("pl1."));
            let parsed = parse(&token).unwrap();
            assert_eq!(parsed.grant(), &g);
            assert_eq!(parsed.verify(&SECRET).unwrap(), g);
        }
    }

    #[test]
    fn another_secret_or_any_changed_byte_fails() {
        let token = grant().sign(&SECRET).unwrap();
        assert_eq!(
            parse(&token).unwrap().verify(&[43; 32]).unwrap_err(),
            TokenError::BadSignature
        );
        // Every position of the text, changed: either it no longer decodes or the MAC fails.
        for i in PREFIX.len()..token.len() {
            let mut bytes = token.clone().into_bytes();
            bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            let Ok(text) = String::from_utf8(bytes) else {
                continue;
            };
            if text == token {
                continue;
            }
            match parse(&text) {
                Ok(u) => assert!(u.verify(&SECRET).is_err(), "position {i} accepted"),
                Err(TokenError::Malformed(_) | TokenError::Version(_)) => {}
                Err(e) => panic!("{e}"),
            }
        }
    }

    #[test]
    fn a_payload_swapped_between_tokens_fails() {
        let a = grant().sign(&SECRET).unwrap();
        let b = Grant {
            path: "2026/dog.jpg".into(),
            ..grant()
        }
        .sign(&SECRET)
        .unwrap();
        let (a_payload, _) = a.rsplit_once('.').unwrap();
        let (_, b_mac) = b.rsplit_once('.').unwrap();
        let franken = format!("{a_payload}.{b_mac}");
        assert_eq!(
            parse(&franken).unwrap().verify(&SECRET).unwrap_err(),
            TokenError::BadSignature
        );
    }

    #[test]
    fn malformed_tokens_say_so() {
        let long = "pl1.".to_owned() + &"A".repeat(MAX_TOKEN_CHARS);
        for bad in [
            "",
            "pl1.",
            "pl2.AAAA.AAAA",
            "pl1.AAAA",
            "pl1.!!.AAAA",
            "pl1..",
            &long,
        ] {
            assert!(
                matches!(parse(bad), Err(TokenError::Malformed(_))),
                "{bad:?}"
            );
        }
        let token = grant().sign(&SECRET).unwrap();
        let (head, _) = token.rsplit_once('.').unwrap();
        assert!(matches!(
            parse(&format!("{head}.AAAA")),
            Err(TokenError::Malformed(_))
        ));
        let mut payload = grant().payload().unwrap();
        payload[0] = 9;
        let text = format!(
            "pl1.{}.{}",
            URL_SAFE_NO_PAD.encode(&payload),
            URL_SAFE_NO_PAD.encode([0u8; 32])
        );
        assert_eq!(parse(&text).unwrap_err(), TokenError::Version(9));
        payload[0] = 1;
        payload.push(0);
        let text = format!(
            "pl1.{}.{}",
            URL_SAFE_NO_PAD.encode(&payload),
            URL_SAFE_NO_PAD.encode([0u8; 32])
        );
        assert!(matches!(parse(&text), Err(TokenError::Malformed(_))));
    }

    #[test]
    fn coverage() {
        let g = grant();
        assert!(g.covers_key("2026/cat.jpg"));
        assert!(!g.covers_key("2026/cat.jpg2"));
        assert!(!g.covers_listing("2026/"));
        let p = Grant {
            path: "2026/".into(),
            prefix: true,
            ..grant()
        };
        assert!(p.covers_key("2026/cat.jpg"));
        assert!(!p.covers_key("2025/cat.jpg"));
        assert!(p.covers_listing("2026/"));
        assert!(p.covers_listing("2026/c"));
        assert!(!p.covers_listing("20"));
        assert!(!p.covers_listing(""));
    }

    #[test]
    fn links() {
        let t = "pl1.AAAA.BBBB";
        assert_eq!(token_of_link(t), t);
        assert_eq!(token_of_link(&format!("https://h:1/s/{t}#k=xyz")), t);
        assert_eq!(token_of_link(&format!("http://h/a/s/{t}?x=1")), t);
        assert_eq!(key_of_link(&format!("http://h/s/{t}")), None);
        assert_eq!(key_of_link(&format!("http://h/s/{t}/")), None);
        let prefixed = format!("http://h/s/{t}/2026/cat.jpg#k=1");
        assert_eq!(token_of_link(&prefixed), t);
        assert_eq!(key_of_link(&prefixed), Some("2026/cat.jpg"));
        assert_eq!(key_of_link(&format!("{t}/a/b")), Some("a/b"));
        assert_eq!(fragment_key(&format!("https://h/s/{t}#k=xyz")), Some("xyz"));
        assert_eq!(fragment_key(&format!("https://h/s/{t}#a=1&k=q")), Some("q"));
        assert_eq!(fragment_key(&format!("https://h/s/{t}#k=")), None);
        assert_eq!(fragment_key(&format!("https://h/s/{t}")), None);
    }
}
