//! Client-side encryption: the content key and the sealed-object format
//! (`docs/encryption.md` is the byte-level specification).
//!
//! An object is sealed before it leaves the client, so members store and
//! erasure-code ciphertext only. The format is a STREAM construction over
//! XChaCha20-Poly1305: a fixed header, then the plaintext cut into chunks of
//! `chunk_size` bytes, each sealed separately. A chunk's nonce is the
//! object's random prefix, the chunk's index and a last-chunk flag, so a
//! reordered, dropped, repeated or appended chunk fails authentication, and
//! so does a stream cut at a chunk boundary. Because chunks are fixed-size,
//! memory stays bounded by one chunk and a plaintext range maps to a
//! ciphertext range without reading what comes before it.
//!
//! The last chunk always holds fewer than `chunk_size` bytes (zero when the
//! plaintext is a multiple of the chunk size): neither side then needs to
//! look ahead to know which chunk is the last one.

use std::fmt;

use base64::Engine as _;
use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};
use zeroize::Zeroizing;

/// First bytes of every sealed object. The 0x89 keeps text files from
/// starting with it by accident (the PNG trick).
pub const MAGIC: [u8; 4] = *b"\x89PLK";
/// Format version written into the header.
pub const VERSION: u8 = 1;
/// Cipher id of XChaCha20-Poly1305, the only cipher so far.
pub const CIPHER_XCHACHA20_POLY1305: u8 = 1;
pub const KEY_LEN: usize = 32;
pub const TAG_LEN: usize = 16;
pub const NONCE_PREFIX_LEN: usize = 16;
/// Header fields before the key check: magic, version, cipher, two reserved
/// bytes, chunk size, nonce prefix.
const FIELDS_LEN: usize = 4 + 1 + 1 + 2 + 4 + NONCE_PREFIX_LEN;
/// The whole header: the fields and the key check tag.
pub const HEADER_LEN: usize = FIELDS_LEN + TAG_LEN;
/// Small enough that a ranged read wastes little, large enough that the
/// 16-byte tags cost 0.02%.
pub const DEFAULT_CHUNK_SIZE: u32 = 64 << 10;
/// Readers refuse larger chunks, so a hostile header cannot make them
/// allocate without bound.
pub const MAX_CHUNK_SIZE: u32 = 16 << 20;
/// Nonce byte 23 for a chunk that is not the last one.
const FLAG_MORE: u8 = 0;
/// Nonce byte 23 for the last chunk.
const FLAG_LAST: u8 = 1;
/// Nonce byte 23 for the key check: never used for a chunk, so the check
/// cannot be replayed as one.
const FLAG_KEY_CHECK: u8 = 2;
/// Chunk indices are 7 bytes in the nonce.
const MAX_CHUNKS: u64 = 1 << 56;

/// Why sealing or opening failed. Authentication failures say which chunk,
/// because "damaged at byte N" is what someone restoring a copy needs.
#[derive(Debug, thiserror::Error)]
pub enum CryptError {
    #[error("a key is 32 bytes written as 43 base64url characters or 64 hex digits; this text is neither ({0})")]
    BadKeyText(String),
    #[error("cannot read the key file {path}: {source}")]
    KeyFile {
        path: String,
        source: std::io::Error,
    },
    #[error("the system's random number generator failed: {0}")]
    Random(String),
    #[error("the object is not encrypted (it has no Potluck encryption header)")]
    NotEncrypted,
    #[error("the object is encrypted; a key is needed to read it")]
    KeyNeeded,
    #[error("the object was encrypted with format version {0}, which this potluck does not know; upgrade it")]
    UnsupportedVersion(u8),
    #[error(
        "the object was encrypted with cipher {0}, which this potluck does not know; upgrade it"
    )]
    UnsupportedCipher(u8),
    #[error("the encryption header is malformed: {0}")]
    BadHeader(String),
    #[error("the key does not open this object: it was encrypted with another key (or its header was altered)")]
    WrongKey,
    #[error("chunk {index} (plaintext bytes from {offset}) failed authentication: the stored object was altered or damaged")]
    Tampered { index: u64, offset: u64 },
    #[error("the encrypted object ends before its last chunk: it was cut short or truncated")]
    Truncated,
    #[error("the encrypted object has data after its last chunk: something was appended to it")]
    TrailingData,
    #[error("the stored size {0} is not a possible size of an encrypted object: it was truncated or extended")]
    ImpossibleSize(u64),
    #[error("the range starts at {offset}, past the end of the {size}-byte plaintext")]
    RangeOutOfBounds { offset: u64, size: u64 },
    #[error("the object changed while it was read (version {before}, then {after}); retry")]
    Changed { before: u64, after: u64 },
    #[error("chunk of {len} bytes does not fit a {chunk_size}-byte chunk stream here")]
    ChunkLength { len: usize, chunk_size: u32 },
    #[error("more than 2^56 chunks: the object is too large for one stream")]
    TooManyChunks,
    #[error("reading the encrypted stream: {0}")]
    Read(std::io::Error),
    #[error("writing the decrypted output: {0}")]
    Write(std::io::Error),
}

/// The secret every object of a user is sealed with: 32 random bytes.
///
/// Kept apart from how it is supplied (a file today, a URL fragment later),
/// so its text form is plain base64url (no padding) that fits in a URL.
#[derive(Clone)]
pub struct ContentKey(Zeroizing<[u8; KEY_LEN]>);

impl ContentKey {
    /// A fresh key straight from the operating system's generator, not a
    /// user-space one, because it protects everything sealed with it.
    pub fn generate() -> Result<Self, CryptError> {
        use rand::TryRngCore;
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        rand::rngs::OsRng
            .try_fill_bytes(bytes.as_mut())
            .map_err(|e| CryptError::Random(e.to_string()))?;
        Ok(Self(bytes))
    }

    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// Base64url without padding: 43 characters, safe in a URL fragment.
    pub fn to_text(&self) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.0.as_ref())
    }

    /// Reads either text form, ignoring surrounding whitespace (key files end
    /// in a newline). The lengths differ, so the form is never ambiguous.
    pub fn parse(text: &str) -> Result<Self, CryptError> {
        let text = text.trim();
        let decoded = match text.len() {
            43 => base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(text)
                .map_err(|e| CryptError::BadKeyText(format!("not base64url: {e}")))?,
            64 => hex::decode(text).map_err(|e| CryptError::BadKeyText(format!("not hex: {e}")))?,
            n => return Err(CryptError::BadKeyText(format!("{n} characters"))),
        };
        let decoded = Zeroizing::new(decoded);
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        if decoded.len() != KEY_LEN {
            return Err(CryptError::BadKeyText(format!("{} bytes", decoded.len())));
        }
        bytes.copy_from_slice(&decoded);
        Ok(Self(bytes))
    }

    /// Reads a key file written by `potluck key new`.
    pub fn read_file(path: &std::path::Path) -> Result<Self, CryptError> {
        let text = std::fs::read_to_string(path).map_err(|source| CryptError::KeyFile {
            path: path.display().to_string(),
            source,
        })?;
        let text = Zeroizing::new(text);
        Self::parse(&text)
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(&chacha20poly1305::Key::from(*self.0))
    }
}

/// Never prints the secret, so a key cannot leak through a log line.
impl fmt::Debug for ContentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ContentKey(..)")
    }
}

/// Whether `prefix` (the first bytes of an object) starts like a sealed
/// object. Only the magic is checked, so that objects of a future format
/// version are still recognised as encrypted.
pub fn looks_sealed(prefix: &[u8]) -> bool {
    prefix.starts_with(&MAGIC)
}

/// The parsed header of a sealed object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub chunk_size: u32,
    pub nonce_prefix: [u8; NONCE_PREFIX_LEN],
    key_check: [u8; TAG_LEN],
}

impl Header {
    /// Checks the fixed fields; the key check needs the key ([`Opener::new`]).
    pub fn parse(bytes: &[u8]) -> Result<Self, CryptError> {
        if !looks_sealed(bytes) {
            return Err(CryptError::NotEncrypted);
        }
        if bytes.len() < HEADER_LEN {
            return Err(CryptError::BadHeader(format!(
                "{} bytes, the header has {HEADER_LEN}",
                bytes.len()
            )));
        }
        if bytes[4] != VERSION {
            return Err(CryptError::UnsupportedVersion(bytes[4]));
        }
        if bytes[5] != CIPHER_XCHACHA20_POLY1305 {
            return Err(CryptError::UnsupportedCipher(bytes[5]));
        }
        if bytes[6..8] != [0, 0] {
            return Err(CryptError::BadHeader("reserved bytes are not zero".into()));
        }
        let chunk_size = u32::from_be_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
        if chunk_size == 0 || chunk_size > MAX_CHUNK_SIZE {
            return Err(CryptError::BadHeader(format!(
                "chunk size {chunk_size} is outside 1..={MAX_CHUNK_SIZE}"
            )));
        }
        let mut nonce_prefix = [0u8; NONCE_PREFIX_LEN];
        nonce_prefix.copy_from_slice(&bytes[12..FIELDS_LEN]);
        let mut key_check = [0u8; TAG_LEN];
        key_check.copy_from_slice(&bytes[FIELDS_LEN..HEADER_LEN]);
        Ok(Self {
            chunk_size,
            nonce_prefix,
            key_check,
        })
    }

    fn fields(&self) -> [u8; FIELDS_LEN] {
        let mut out = [0u8; FIELDS_LEN];
        out[..4].copy_from_slice(&MAGIC);
        out[4] = VERSION;
        out[5] = CIPHER_XCHACHA20_POLY1305;
        out[8..12].copy_from_slice(&self.chunk_size.to_be_bytes());
        out[12..].copy_from_slice(&self.nonce_prefix);
        out
    }

    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[..FIELDS_LEN].copy_from_slice(&self.fields());
        out[FIELDS_LEN..].copy_from_slice(&self.key_check);
        out
    }

    /// Where the chunks sit in a stored object of `stored_len` bytes.
    pub fn layout(&self, stored_len: u64) -> Result<Layout, CryptError> {
        Layout::new(self.chunk_size, stored_len)
    }
}

fn nonce(prefix: &[u8; NONCE_PREFIX_LEN], index: u64, flag: u8) -> XNonce {
    let mut n = [0u8; 24];
    n[..NONCE_PREFIX_LEN].copy_from_slice(prefix);
    n[NONCE_PREFIX_LEN..23].copy_from_slice(&index.to_be_bytes()[1..]);
    n[23] = flag;
    XNonce::from(n)
}

/// The key check: the tag of an empty message under the key, with the header
/// fields as associated data. It tells a wrong key apart from a damaged
/// chunk before any chunk is read.
fn key_check(cipher: &XChaCha20Poly1305, header: &Header) -> Result<[u8; TAG_LEN], CryptError> {
    let tag = cipher
        .encrypt_inout_detached(
            &nonce(&header.nonce_prefix, 0, FLAG_KEY_CHECK),
            &header.fields(),
            (&mut [][..]).into(),
        )
        .map_err(|_| CryptError::BadHeader("cannot compute the key check".into()))?;
    Ok(tag.into())
}

/// Sealed size of `plain_len` bytes: the header plus a tag per chunk, counting
/// the final short (possibly empty) chunk.
pub fn sealed_len(plain_len: u64, chunk_size: u32) -> u64 {
    let chunks = plain_len / u64::from(chunk_size) + 1;
    HEADER_LEN as u64 + plain_len + chunks * TAG_LEN as u64
}

/// Where each chunk of a sealed object of known stored size lies. Computed
/// from the size the server reports; a wrong size only moves which chunk is
/// opened as the last one, which then fails authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub chunk_size: u32,
    pub stored_len: u64,
    pub plain_len: u64,
    /// Number of chunks, including the final short one (at least 1).
    pub chunks: u64,
}

impl Layout {
    pub fn new(chunk_size: u32, stored_len: u64) -> Result<Self, CryptError> {
        let cs = u64::from(chunk_size);
        let full = cs + TAG_LEN as u64;
        let body = stored_len
            .checked_sub(HEADER_LEN as u64)
            .ok_or(CryptError::ImpossibleSize(stored_len))?;
        let full_chunks = body / full;
        let last_sealed = body % full;
        if last_sealed < TAG_LEN as u64 {
            return Err(CryptError::ImpossibleSize(stored_len));
        }
        let chunks = full_chunks + 1;
        if chunks > MAX_CHUNKS {
            return Err(CryptError::TooManyChunks);
        }
        Ok(Self {
            chunk_size,
            stored_len,
            plain_len: full_chunks * cs + last_sealed - TAG_LEN as u64,
            chunks,
        })
    }

    /// Offset in the stored object where chunk `index` starts.
    pub fn chunk_offset(&self, index: u64) -> u64 {
        HEADER_LEN as u64 + index * (u64::from(self.chunk_size) + TAG_LEN as u64)
    }

    /// Sealed length of chunk `index` (the last one is short).
    pub fn sealed_chunk_len(&self, index: u64) -> u64 {
        if index + 1 == self.chunks {
            self.stored_len - self.chunk_offset(index)
        } else {
            u64::from(self.chunk_size) + TAG_LEN as u64
        }
    }
}

/// Seals one object's chunks in order.
pub struct Sealer {
    cipher: XChaCha20Poly1305,
    header: Header,
    next: u64,
    finished: bool,
}

impl Sealer {
    /// A sealer with a fresh random nonce prefix: two objects sealed under the
    /// same key then never share a nonce (16 random bytes, so a collision is
    /// not expected before about 2^64 objects).
    pub fn new(key: &ContentKey, chunk_size: u32) -> Result<Self, CryptError> {
        use rand::TryRngCore;
        let mut prefix = [0u8; NONCE_PREFIX_LEN];
        rand::rngs::OsRng
            .try_fill_bytes(&mut prefix)
            .map_err(|e| CryptError::Random(e.to_string()))?;
        Self::with_nonce_prefix(key, chunk_size, prefix)
    }

    /// For tests and test vectors: a fixed prefix. Never reuse a prefix with
    /// the same key for different content.
    pub fn with_nonce_prefix(
        key: &ContentKey,
        chunk_size: u32,
        nonce_prefix: [u8; NONCE_PREFIX_LEN],
    ) -> Result<Self, CryptError> {
        if chunk_size == 0 || chunk_size > MAX_CHUNK_SIZE {
            return Err(CryptError::BadHeader(format!(
                "chunk size {chunk_size} is outside 1..={MAX_CHUNK_SIZE}"
            )));
        }
        let cipher = key.cipher();
        let mut header = Header {
            chunk_size,
            nonce_prefix,
            key_check: [0; TAG_LEN],
        };
        header.key_check = key_check(&cipher, &header)?;
        Ok(Self {
            cipher,
            header,
            next: 0,
            finished: false,
        })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    pub fn chunk_size(&self) -> usize {
        self.header.chunk_size as usize
    }

    /// Encrypts `buf` in place and appends its tag. Every chunk but the last
    /// must be exactly `chunk_size` bytes; the last must be shorter (empty
    /// when the plaintext is a multiple of the chunk size).
    pub fn seal(&mut self, buf: &mut Vec<u8>, last: bool) -> Result<(), CryptError> {
        let fits = if last {
            buf.len() < self.chunk_size()
        } else {
            buf.len() == self.chunk_size()
        };
        if self.finished || !fits {
            return Err(CryptError::ChunkLength {
                len: buf.len(),
                chunk_size: self.header.chunk_size,
            });
        }
        if self.next >= MAX_CHUNKS {
            return Err(CryptError::TooManyChunks);
        }
        let flag = if last { FLAG_LAST } else { FLAG_MORE };
        let tag = self
            .cipher
            .encrypt_inout_detached(
                &nonce(&self.header.nonce_prefix, self.next, flag),
                &self.header.to_bytes(),
                buf.as_mut_slice().into(),
            )
            .map_err(|_| CryptError::ChunkLength {
                len: buf.len(),
                chunk_size: self.header.chunk_size,
            })?;
        buf.extend_from_slice(&tag);
        self.next += 1;
        self.finished = last;
        Ok(())
    }
}

/// Opens the chunks of one sealed object, in any order (ranged reads start
/// in the middle), given each chunk's index and whether it is the last.
pub struct Opener {
    cipher: XChaCha20Poly1305,
    header: Header,
}

impl Opener {
    /// Parses the header and checks the key against it.
    pub fn new(key: &ContentKey, header_bytes: &[u8]) -> Result<Self, CryptError> {
        let header = Header::parse(header_bytes)?;
        let cipher = key.cipher();
        // Compared through the AEAD's own constant-time tag check rather
        // than with ==, so no timing tells how much of the check matched.
        let tag = Tag::from(header.key_check);
        cipher
            .decrypt_inout_detached(
                &nonce(&header.nonce_prefix, 0, FLAG_KEY_CHECK),
                &header.fields(),
                (&mut [][..]).into(),
                &tag,
            )
            .map_err(|_| CryptError::WrongKey)?;
        Ok(Self { cipher, header })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    pub fn chunk_size(&self) -> usize {
        self.header.chunk_size as usize
    }

    /// Authenticates and decrypts chunk `index` in place, dropping its tag.
    /// On failure `buf` holds no plaintext (the cipher only decrypts after
    /// the tag verified).
    pub fn open(&self, index: u64, buf: &mut Vec<u8>, last: bool) -> Result<(), CryptError> {
        let offset = index.saturating_mul(u64::from(self.header.chunk_size));
        let tampered = CryptError::Tampered { index, offset };
        let too_long = if last {
            buf.len() >= self.chunk_size() + TAG_LEN
        } else {
            buf.len() != self.chunk_size() + TAG_LEN
        };
        if buf.len() < TAG_LEN || too_long || index >= MAX_CHUNKS {
            return Err(tampered);
        }
        let split = buf.len() - TAG_LEN;
        let (data, tag) = buf.split_at_mut(split);
        let tag = Tag::try_from(&*tag).map_err(|_| CryptError::Tampered { index, offset })?;
        let flag = if last { FLAG_LAST } else { FLAG_MORE };
        self.cipher
            .decrypt_inout_detached(
                &nonce(&self.header.nonce_prefix, index, flag),
                &self.header.to_bytes(),
                data.into(),
                &tag,
            )
            .map_err(|_| tampered)?;
        buf.truncate(split);
        Ok(())
    }
}

/// Seals a whole plaintext in memory: for tests and small objects.
pub fn seal_bytes(key: &ContentKey, chunk_size: u32, plain: &[u8]) -> Result<Vec<u8>, CryptError> {
    let mut sealer = Sealer::new(key, chunk_size)?;
    let cs = sealer.chunk_size();
    let mut out = Vec::with_capacity(sealed_len(plain.len() as u64, chunk_size) as usize);
    out.extend_from_slice(&sealer.header().to_bytes());
    let mut chunks = plain.chunks_exact(cs);
    for chunk in &mut chunks {
        let mut buf = chunk.to_vec();
        sealer.seal(&mut buf, false)?;
        out.extend_from_slice(&buf);
    }
    let mut buf = chunks.remainder().to_vec();
    sealer.seal(&mut buf, true)?;
    out.extend_from_slice(&buf);
    Ok(out)
}

/// Opens a whole sealed object in memory: for tests and small objects.
pub fn open_bytes(key: &ContentKey, sealed: &[u8]) -> Result<Vec<u8>, CryptError> {
    let opener = Opener::new(key, sealed)?;
    let full = opener.chunk_size() + TAG_LEN;
    let mut out = Vec::new();
    let mut rest = &sealed[HEADER_LEN..];
    let mut index = 0u64;
    loop {
        let take = rest.len().min(full);
        let last = take < full;
        if !last && rest.len() == full {
            // A full chunk with nothing after it: the short last one is gone.
            return Err(CryptError::Truncated);
        }
        let mut buf = rest[..take].to_vec();
        opener.open(index, &mut buf, last)?;
        out.extend_from_slice(&buf);
        rest = &rest[take..];
        if last {
            return Ok(out);
        }
        index += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> ContentKey {
        ContentKey::from_bytes([seed; KEY_LEN])
    }

    fn plain(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 % 251) as u8).collect()
    }

    const CS: u32 = 64;

    #[test]
    fn round_trips_at_every_chunk_boundary() {
        let k = key(1);
        for n in [0, 1, 63, 64, 65, 127, 128, 129, 64 * 5, 64 * 5 + 3] {
            let p = plain(n);
            let sealed = seal_bytes(&k, CS, &p).unwrap();
            assert_eq!(sealed.len() as u64, sealed_len(n as u64, CS), "n={n}");
            assert!(looks_sealed(&sealed));
            assert_eq!(open_bytes(&k, &sealed).unwrap(), p, "n={n}");
            let layout = Header::parse(&sealed)
                .unwrap()
                .layout(sealed.len() as u64)
                .unwrap();
            assert_eq!(layout.plain_len, n as u64, "n={n}");
            assert_eq!(layout.chunks, n as u64 / 64 + 1, "n={n}");
        }
    }

    #[test]
    fn empty_and_exactly_one_chunk_have_a_final_short_chunk() {
        let k = key(1);
        let empty = seal_bytes(&k, CS, &[]).unwrap();
        assert_eq!(empty.len(), HEADER_LEN + TAG_LEN);
        assert_eq!(open_bytes(&k, &empty).unwrap(), Vec::<u8>::new());
        let one = seal_bytes(&k, CS, &plain(64)).unwrap();
        assert_eq!(one.len(), HEADER_LEN + 64 + 2 * TAG_LEN);
        // Without the empty last chunk the stream reads as cut short.
        let cut = &one[..one.len() - TAG_LEN];
        assert!(matches!(open_bytes(&k, cut), Err(CryptError::Truncated)));
    }

    #[test]
    fn a_wrong_key_is_named_as_such() {
        let sealed = seal_bytes(&key(1), CS, &plain(200)).unwrap();
        assert!(matches!(
            open_bytes(&key(2), &sealed),
            Err(CryptError::WrongKey)
        ));
    }

    #[test]
    fn every_flipped_byte_is_detected() {
        let k = key(1);
        let p = plain(150);
        let sealed = seal_bytes(&k, CS, &p).unwrap();
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x40;
            let err = open_bytes(&k, &bad).expect_err("a flipped byte must not open");
            if i >= HEADER_LEN {
                assert!(
                    matches!(err, CryptError::Tampered { .. }),
                    "byte {i}: {err}"
                );
            }
        }
    }

    #[test]
    fn truncation_reordering_and_extension_are_detected() {
        let k = key(1);
        let p = plain(64 * 3 + 10);
        let sealed = seal_bytes(&k, CS, &p).unwrap();
        let full = 64 + TAG_LEN;
        let chunk = |i: usize| HEADER_LEN + i * full..HEADER_LEN + (i + 1) * full;

        // Cut at a chunk boundary (the last chunk dropped): no chunk is short.
        let cut = &sealed[..HEADER_LEN + 3 * full];
        assert!(matches!(open_bytes(&k, cut), Err(CryptError::Truncated)));
        // Cut inside a chunk: that chunk is opened as the last and fails.
        let cut = &sealed[..HEADER_LEN + full + 20];
        assert!(matches!(
            open_bytes(&k, cut),
            Err(CryptError::Tampered { index: 1, .. })
        ));
        // Header only.
        assert!(matches!(
            open_bytes(&k, &sealed[..HEADER_LEN]),
            Err(CryptError::Tampered { index: 0, .. })
        ));

        // Two chunks swapped.
        let mut swapped = sealed[..HEADER_LEN].to_vec();
        swapped.extend_from_slice(&sealed[chunk(1)]);
        swapped.extend_from_slice(&sealed[chunk(0)]);
        swapped.extend_from_slice(&sealed[HEADER_LEN + 2 * full..]);
        assert!(matches!(
            open_bytes(&k, &swapped),
            Err(CryptError::Tampered { index: 0, .. })
        ));
        // A chunk repeated.
        let mut repeated = sealed[..HEADER_LEN + full].to_vec();
        repeated.extend_from_slice(&sealed[HEADER_LEN..]);
        assert!(matches!(
            open_bytes(&k, &repeated),
            Err(CryptError::Tampered { index: 1, .. })
        ));

        // Anything appended after the last chunk makes the last chunk a
        // full-size non-last one or moves it, and fails.
        for extra in [1usize, 16, full] {
            let mut longer = sealed.clone();
            longer.extend(std::iter::repeat_n(0u8, extra));
            assert!(open_bytes(&k, &longer).is_err(), "{extra} bytes appended");
        }
        // A whole second object appended.
        let mut two = sealed.clone();
        two.extend_from_slice(&seal_bytes(&k, CS, b"more").unwrap());
        assert!(open_bytes(&k, &two).is_err());
    }

    #[test]
    fn chunks_of_another_object_under_the_same_key_do_not_open() {
        let k = key(1);
        let a = seal_bytes(&k, CS, &plain(100)).unwrap();
        let b = seal_bytes(&k, CS, &plain(100)).unwrap();
        assert_ne!(a[..HEADER_LEN], b[..HEADER_LEN], "fresh nonce prefixes");
        let mut mixed = a[..HEADER_LEN].to_vec();
        mixed.extend_from_slice(&b[HEADER_LEN..]);
        assert!(matches!(
            open_bytes(&k, &mixed),
            Err(CryptError::Tampered { index: 0, .. })
        ));
    }

    #[test]
    fn header_fields_are_checked() {
        let k = key(1);
        let sealed = seal_bytes(&k, CS, b"x").unwrap();
        let with = |i: usize, v: u8| {
            let mut h = sealed.clone();
            h[i] = v;
            h
        };
        assert!(matches!(
            Header::parse(b"plain text"),
            Err(CryptError::NotEncrypted)
        ));
        assert!(matches!(
            Header::parse(&with(4, 9)),
            Err(CryptError::UnsupportedVersion(9))
        ));
        assert!(matches!(
            Header::parse(&with(5, 7)),
            Err(CryptError::UnsupportedCipher(7))
        ));
        assert!(matches!(
            Header::parse(&with(6, 1)),
            Err(CryptError::BadHeader(_))
        ));
        assert!(matches!(
            Header::parse(&sealed[..20]),
            Err(CryptError::BadHeader(_))
        ));
        // A changed chunk size or nonce prefix no longer matches the key check.
        assert!(matches!(
            Opener::new(&k, &with(11, 65)),
            Err(CryptError::WrongKey)
        ));
        assert!(matches!(
            Opener::new(&k, &with(20, sealed[20] ^ 1)),
            Err(CryptError::WrongKey)
        ));
        let mut huge = sealed.clone();
        huge[8..12].copy_from_slice(&(MAX_CHUNK_SIZE + 1).to_be_bytes());
        assert!(matches!(
            Header::parse(&huge),
            Err(CryptError::BadHeader(_))
        ));
    }

    #[test]
    fn the_sealer_refuses_misuse() {
        let mut s = Sealer::new(&key(1), CS).unwrap();
        assert!(s.seal(&mut vec![0; 10], false).is_err(), "short non-last");
        assert!(s.seal(&mut vec![0; 64], true).is_err(), "full last");
        s.seal(&mut vec![0; 3], true).unwrap();
        assert!(s.seal(&mut vec![0; 3], true).is_err(), "after the last");
        assert!(Sealer::new(&key(1), 0).is_err());
        assert!(Sealer::new(&key(1), MAX_CHUNK_SIZE + 1).is_err());
    }

    #[test]
    fn layouts_match_sealed_sizes_and_reject_impossible_ones() {
        for cs in [1u32, 64, DEFAULT_CHUNK_SIZE] {
            for n in [0u64, 1, 63, 64, 65, 1 << 20, (1 << 20) + 17] {
                let l = Layout::new(cs, sealed_len(n, cs)).unwrap();
                assert_eq!(l.plain_len, n, "cs={cs} n={n}");
                let last = l.chunks - 1;
                assert_eq!(
                    l.chunk_offset(last) + l.sealed_chunk_len(last),
                    l.stored_len
                );
            }
        }
        assert!(Layout::new(64, 10).is_err());
        assert!(Layout::new(64, (HEADER_LEN + 15) as u64).is_err());
        assert!(Layout::new(64, (HEADER_LEN + 80 + 3) as u64).is_err());
    }

    #[test]
    fn keys_round_trip_through_text() {
        let k = ContentKey::generate().unwrap();
        let text = k.to_text();
        assert_eq!(text.len(), 43);
        assert!(text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        assert_eq!(ContentKey::parse(&text).unwrap().as_bytes(), k.as_bytes());
        assert_eq!(
            ContentKey::parse(&format!("  {text}\n"))
                .unwrap()
                .as_bytes(),
            k.as_bytes()
        );
        let hex_text = hex::encode(k.as_bytes());
        assert_eq!(
            ContentKey::parse(&hex_text).unwrap().as_bytes(),
            k.as_bytes()
        );
        assert_ne!(ContentKey::generate().unwrap().as_bytes(), k.as_bytes());
        for bad in [
            "",
            "short",
            &text[..42],
            &format!("{text}A"),
            &"g".repeat(64),
        ] {
            assert!(
                matches!(ContentKey::parse(bad), Err(CryptError::BadKeyText(_))),
                "{bad:?}"
            );
        }
        assert_eq!(format!("{k:?}"), "ContentKey(..)");
    }

    /// A fixed vector, so another implementation can check itself against
    /// this one (`docs/encryption.md` quotes it).
    #[test]
    fn test_vector() {
        let k = ContentKey::from_bytes(std::array::from_fn(|i| i as u8));
        let mut s = Sealer::with_nonce_prefix(&k, 4, [0xAB; NONCE_PREFIX_LEN]).unwrap();
        let mut out = s.header().to_bytes().to_vec();
        for (chunk, last) in [
            (&b"pot-"[..], false),
            (&b"luck"[..], false),
            (&b"!"[..], true),
        ] {
            let mut buf = chunk.to_vec();
            s.seal(&mut buf, last).unwrap();
            out.extend_from_slice(&buf);
        }
        assert_eq!(open_bytes(&k, &out).unwrap(), b"pot-luck!");
        assert_eq!(
            hex::encode(&out),
            "89504c4b0101000000000004abababababababababababababababab\
             f659f9bb630d747405b6d70083b880c8d76c29d9ab91cdd58e341577\
             3b56f03db52d4d0e98615bdaae641f084d7466eda2f7571023fd3b75\
             331df75b52c612f1218d028d3b050648e8",
            "update docs/encryption.md with the new vector if the format changed"
        );
    }
}
