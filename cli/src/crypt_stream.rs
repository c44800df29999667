//! The sealed-object format (`crypt`) over async streams, holding one chunk
//! at a time whatever the object's size.

use std::io;
use std::pin::Pin;

use bytes::Bytes;
use futures::Stream;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::io::StreamReader;

use crate::crypt::{looks_sealed, ContentKey, CryptError, Layout, Opener, Sealer, HEADER_LEN};
use crate::crypt::{MAGIC, TAG_LEN};

type ChunkStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

/// An `AsyncRead` of the sealed form of another reader.
pub type SealingReader = StreamReader<ChunkStream, Bytes>;

/// Reads until `buf` holds `want` bytes or the input ends; returns how many
/// it holds. Short only at the end of the input.
async fn read_up_to<R: AsyncRead + Unpin + ?Sized>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    want: usize,
) -> io::Result<usize> {
    buf.clear();
    buf.resize(want, 0);
    let mut filled = 0;
    while filled < want {
        let n = reader.read(&mut buf[filled..]).await?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    buf.truncate(filled);
    Ok(filled)
}

/// Seals `input` as it is read: the header, then one sealed chunk per
/// `chunk_size` bytes of input. A read error of the input comes out as a
/// read error of this reader, so an upload fed from it fails instead of
/// storing a stream that merely stops.
pub fn seal_reader<R>(input: R, sealer: Sealer) -> SealingReader
where
    R: AsyncRead + Unpin + Send + 'static,
{
    let header = Bytes::copy_from_slice(&sealer.header().to_bytes());
    let stream = futures::stream::try_unfold(
        (input, sealer, Some(header), false),
        |(mut input, mut sealer, header, done)| async move {
            if let Some(header) = header {
                return Ok(Some((header, (input, sealer, None, false))));
            }
            if done {
                return Ok(None);
            }
            let cs = sealer.chunk_size();
            let mut buf = Vec::with_capacity(cs + TAG_LEN);
            let n = read_up_to(&mut input, &mut buf, cs).await?;
            // A full chunk is never the last one: the last is always short,
            // empty when the input is a multiple of the chunk size.
            let last = n < cs;
            sealer
                .seal(&mut buf, last)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            Ok(Some((Bytes::from(buf), (input, sealer, None, last))))
        },
    );
    StreamReader::new(Box::pin(stream) as ChunkStream)
}

/// Opens a whole sealed object read from `source` and writes the plaintext
/// to `out`, one verified chunk at a time; returns the plaintext length.
/// Nothing that failed authentication is ever written, but on error `out`
/// may hold the verified chunks before the bad one.
pub async fn open_stream<R, W>(
    source: &mut R,
    out: &mut W,
    key: &ContentKey,
) -> Result<u64, CryptError>
where
    R: AsyncRead + Unpin + ?Sized,
    W: AsyncWrite + Unpin + ?Sized,
{
    let mut buf = Vec::new();
    let n = read_up_to(source, &mut buf, HEADER_LEN)
        .await
        .map_err(CryptError::Read)?;
    if n < MAGIC.len() || !looks_sealed(&buf) {
        return Err(CryptError::NotEncrypted);
    }
    if n < HEADER_LEN {
        return Err(CryptError::Truncated);
    }
    let opener = Opener::new(key, &buf)?;
    let full = opener.chunk_size() + TAG_LEN;
    buf.reserve(full);
    let mut written = 0u64;
    for index in 0.. {
        let n = read_up_to(source, &mut buf, full)
            .await
            .map_err(CryptError::Read)?;
        if n == 0 {
            // Every stream ends with a short chunk of at least a tag.
            return Err(CryptError::Truncated);
        }
        let last = n < full;
        opener.open(index, &mut buf, last)?;
        out.write_all(&buf).await.map_err(CryptError::Write)?;
        written += buf.len() as u64;
        if last {
            break;
        }
    }
    out.flush().await.map_err(CryptError::Write)?;
    Ok(written)
}

/// What part of a sealed object a ranged read covers: chunks `first..=last`
/// are read from the source, and of their plaintext `skip` bytes are dropped
/// and then `take` bytes written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkWindow {
    pub first: u64,
    pub last: u64,
    pub skip: u64,
    pub take: u64,
}

impl ChunkWindow {
    /// The chunks holding plaintext bytes `start..end` (`start < end <=
    /// plain_len`). A range that reaches the end also takes the last chunk,
    /// even when it holds no byte of the range: only that chunk's flag
    /// proves the object was not cut short.
    pub fn covering(layout: &Layout, start: u64, end: u64) -> Self {
        let cs = u64::from(layout.chunk_size);
        let first = start / cs;
        let last = if end >= layout.plain_len {
            layout.chunks - 1
        } else {
            (end - 1) / cs
        };
        Self {
            first,
            last,
            skip: start - first * cs,
            take: end - start,
        }
    }

    /// The stored bytes to fetch: offset and length.
    pub fn stored_range(&self, layout: &Layout) -> (u64, u64) {
        let start = layout.chunk_offset(self.first);
        let end = layout.chunk_offset(self.last) + layout.sealed_chunk_len(self.last);
        (start, end - start)
    }
}

/// Opens the chunks of `window` read from `source` (exactly its stored
/// range) and writes the asked plaintext bytes to `out`.
pub async fn open_window<R, W>(
    source: &mut R,
    out: &mut W,
    opener: &Opener,
    layout: &Layout,
    window: ChunkWindow,
) -> Result<(), CryptError>
where
    R: AsyncRead + Unpin + ?Sized,
    W: AsyncWrite + Unpin + ?Sized,
{
    let mut buf = Vec::with_capacity(opener.chunk_size() + TAG_LEN);
    let mut skip = window.skip as usize;
    let mut left = window.take;
    for index in window.first..=window.last {
        let want = layout.sealed_chunk_len(index) as usize;
        let n = read_up_to(source, &mut buf, want)
            .await
            .map_err(CryptError::Read)?;
        if n < want {
            return Err(CryptError::Truncated);
        }
        opener.open(index, &mut buf, index + 1 == layout.chunks)?;
        let from = skip.min(buf.len());
        let to = buf
            .len()
            .min(from + usize::try_from(left).unwrap_or(usize::MAX));
        out.write_all(&buf[from..to])
            .await
            .map_err(CryptError::Write)?;
        left -= (to - from) as u64;
        skip = 0;
    }
    out.flush().await.map_err(CryptError::Write)?;
    Ok(())
}

/// Copies `source` to `out`, refusing a sealed object before writing any of
/// it: reading one without its key would only print ciphertext.
pub async fn copy_unsealed<R, W>(source: &mut R, out: &mut W) -> Result<u64, CryptError>
where
    R: AsyncRead + Unpin + ?Sized,
    W: AsyncWrite + Unpin + ?Sized,
{
    let mut head = Vec::new();
    read_up_to(source, &mut head, MAGIC.len())
        .await
        .map_err(CryptError::Read)?;
    if looks_sealed(&head) {
        return Err(CryptError::KeyNeeded);
    }
    out.write_all(&head).await.map_err(CryptError::Write)?;
    let mut copied = head.len() as u64;
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = source.read(&mut buf).await.map_err(CryptError::Read)?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n]).await.map_err(CryptError::Write)?;
        copied += n as u64;
    }
    out.flush().await.map_err(CryptError::Write)?;
    Ok(copied)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypt::{open_bytes, seal_bytes, sealed_len, Header};

    fn key(seed: u8) -> ContentKey {
        ContentKey::from_bytes([seed; 32])
    }

    fn plain(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 13 % 251) as u8).collect()
    }

    /// A reader that hands out a few bytes at a time, as pipes do.
    struct Trickle(Vec<u8>, usize);

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            let start = self.1;
            let end = self.0.len().min(start + 7).min(start + buf.remaining());
            buf.put_slice(&self.0[start..end]);
            self.1 = end;
            std::task::Poll::Ready(Ok(()))
        }
    }

    async fn seal_stream(k: &ContentKey, cs: u32, p: &[u8]) -> Vec<u8> {
        let sealer = Sealer::new(k, cs).unwrap();
        let mut reader = seal_reader(Trickle(p.to_vec(), 0), sealer);
        let mut out = Vec::new();
        reader.read_to_end(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn streams_round_trip_and_match_the_in_memory_form() {
        let k = key(3);
        for n in [0, 1, 99, 100, 101, 1000, 100 * 7] {
            let p = plain(n);
            let sealed = seal_stream(&k, 100, &p).await;
            assert_eq!(sealed.len() as u64, sealed_len(n as u64, 100), "n={n}");
            assert_eq!(open_bytes(&k, &sealed).unwrap(), p, "n={n}");
            let mut out = Vec::new();
            let got = open_stream(&mut Trickle(sealed.clone(), 0), &mut out, &k)
                .await
                .unwrap();
            assert_eq!((got, out), (n as u64, p.clone()), "n={n}");
        }
    }

    #[tokio::test]
    async fn streamed_opening_stops_at_the_bad_chunk() {
        let k = key(3);
        let p = plain(350);
        let mut sealed = seal_bytes(&k, 100, &p).unwrap();
        sealed[HEADER_LEN + 116 + 5] ^= 1; // inside chunk 1
        let mut out = Vec::new();
        let err = open_stream(&mut &sealed[..], &mut out, &k)
            .await
            .unwrap_err();
        assert!(
            matches!(err, CryptError::Tampered { index: 1, .. }),
            "{err}"
        );
        assert_eq!(out, &p[..100], "only the verified chunk was written");

        let sealed = seal_bytes(&k, 100, &p).unwrap();
        let mut out = Vec::new();
        let err = open_stream(&mut &sealed[..], &mut out, &key(4))
            .await
            .unwrap_err();
        assert!(matches!(err, CryptError::WrongKey));
        assert!(out.is_empty());
        let err = open_stream(&mut &sealed[..HEADER_LEN + 116], &mut out, &k)
            .await
            .unwrap_err();
        assert!(matches!(err, CryptError::Truncated), "{err}");
        let err = open_stream(&mut &b"hello"[..], &mut out, &k)
            .await
            .unwrap_err();
        assert!(matches!(err, CryptError::NotEncrypted));
    }

    #[tokio::test]
    async fn windows_return_exactly_the_asked_bytes() {
        let k = key(5);
        let p = plain(1000);
        let sealed = seal_bytes(&k, 100, &p).unwrap();
        let opener = Opener::new(&k, &sealed).unwrap();
        let layout = Header::parse(&sealed)
            .unwrap()
            .layout(sealed.len() as u64)
            .unwrap();
        for (start, end) in [
            (0, 1000),
            (0, 1),
            (99, 101),
            (100, 200),
            (150, 151),
            (999, 1000),
            (250, 990),
        ] {
            let w = ChunkWindow::covering(&layout, start, end);
            let (off, len) = w.stored_range(&layout);
            let part = &sealed[off as usize..(off + len) as usize];
            let mut out = Vec::new();
            open_window(&mut &part[..], &mut out, &opener, &layout, w)
                .await
                .unwrap();
            assert_eq!(out, &p[start as usize..end as usize], "{start}..{end}");
        }
        // A window whose last chunk is the object's last checks its flag: a
        // shorter claimed size makes a full chunk the "last" one, which fails.
        let short = Layout::new(100, sealed.len() as u64 - 116).unwrap();
        let w = ChunkWindow::covering(&short, 0, short.plain_len);
        let (off, len) = w.stored_range(&short);
        let part = &sealed[off as usize..(off + len) as usize];
        let err = open_window(&mut &part[..], &mut Vec::new(), &opener, &short, w)
            .await
            .unwrap_err();
        assert!(matches!(err, CryptError::Tampered { .. }), "{err}");
    }

    #[tokio::test]
    async fn plain_copies_refuse_sealed_objects_before_writing() {
        let sealed = seal_bytes(&key(1), 100, b"secret").unwrap();
        let mut out = Vec::new();
        let err = copy_unsealed(&mut &sealed[..], &mut out).await.unwrap_err();
        assert!(matches!(err, CryptError::KeyNeeded));
        assert!(out.is_empty());
        for text in [&b""[..], b"abc", b"plain text, long enough"] {
            let mut out = Vec::new();
            let n = copy_unsealed(&mut Trickle(text.to_vec(), 0), &mut out)
                .await
                .unwrap();
            assert_eq!((n, &out[..]), (text.len() as u64, text));
        }
    }

    #[tokio::test]
    async fn a_failing_input_fails_the_sealed_stream() {
        struct Broken;
        impl AsyncRead for Broken {
            fn poll_read(
                self: Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
                _: &mut tokio::io::ReadBuf<'_>,
            ) -> std::task::Poll<io::Result<()>> {
                std::task::Poll::Ready(Err(io::Error::other("disk on fire")))
            }
        }
        let mut reader = seal_reader(Broken, Sealer::new(&key(1), 100).unwrap());
        let mut out = Vec::new();
        let err = reader.read_to_end(&mut out).await.unwrap_err();
        assert!(err.to_string().contains("disk on fire"), "{err}");
    }
}
