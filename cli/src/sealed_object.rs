//! Puts and gets of encrypted objects through the [`Client`]: the client
//! moves ciphertext like any other bytes, and these functions seal on the
//! way in and verify and open on the way out.

use potluck_proto::v1::{ObjectInfo, PutObjectResponse};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::client::{ByteRange, Client, ClientError, Progress};
use crate::crypt::{
    looks_sealed, sealed_len, ContentKey, CryptError, Header, Layout, Opener, Sealer,
    DEFAULT_CHUNK_SIZE, HEADER_LEN, MAGIC,
};
use crate::crypt_stream::{copy_unsealed, open_stream, open_window, seal_reader, ChunkWindow};

/// Room between the download and the decryption: a few chunks, so neither
/// side waits on the other for every chunk.
const PIPE_BYTES: usize = 512 << 10;

/// Either the transfer failed or the content did not verify; kept apart
/// because they call for different exit codes and hints.
#[derive(Debug, thiserror::Error)]
pub enum SealedError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Crypt(#[from] CryptError),
}

/// Seals `input` with `key` and stores the ciphertext as `bucket/name`.
/// With `plain_size`, the input must be exactly that long; the stored size
/// (the ciphertext's) is derived from it.
pub async fn put_sealed<R>(
    client: &Client,
    bucket: &str,
    name: &str,
    input: R,
    plain_size: Option<u64>,
    key: &ContentKey,
    progress: impl FnMut(Progress),
) -> Result<PutObjectResponse, SealedError>
where
    R: AsyncRead + Unpin + Send + 'static,
{
    let sealer = Sealer::new(key, DEFAULT_CHUNK_SIZE)?;
    let stored = plain_size.map(|n| sealed_len(n, DEFAULT_CHUNK_SIZE));
    let reader = seal_reader(input, sealer);
    Ok(client.put(bucket, name, reader, stored, progress).await?)
}

/// A verified read of an encrypted object.
#[derive(Debug, Clone)]
pub struct Opened {
    /// The stored object's info: its size is the ciphertext's.
    pub info: ObjectInfo,
    /// Plaintext size of the whole object.
    pub plain_len: u64,
    /// Plaintext bytes written.
    pub written: u64,
}

/// Which error explains a failed download-and-decrypt. The download's
/// writes fail with `Output` only when the decrypting side stopped reading,
/// and then that side's error is the cause; any other download error came
/// first, and the decrypting side merely saw its input end.
fn settle<T, U>(
    fetched: Result<T, ClientError>,
    opened: Result<U, CryptError>,
) -> Result<(T, U), SealedError> {
    match (fetched, opened) {
        (Ok(t), Ok(u)) => Ok((t, u)),
        (Err(ClientError::Output(_)), Err(c)) | (Ok(_), Err(c)) => Err(c.into()),
        (Err(e), _) => Err(e.into()),
    }
}

/// Reads `bucket/name` (or a plaintext `range` of it), verifies it with
/// `key` and writes the plaintext to `out`. Only authenticated chunks are
/// written; on error `out` may hold the verified chunks before the failure,
/// so callers that need all-or-nothing write to a temporary file.
///
/// A range costs two reads: the header first (for the chunk size and the
/// key check), then just the chunks that hold the range.
pub async fn get_sealed<W>(
    client: &Client,
    bucket: &str,
    name: &str,
    range: Option<ByteRange>,
    out: &mut W,
    key: &ContentKey,
    progress: impl FnMut(Progress),
) -> Result<Opened, SealedError>
where
    W: AsyncWrite + Unpin + ?Sized,
{
    let Some(range) = range else {
        let (tx, rx) = tokio::io::duplex(PIPE_BYTES);
        let fetch = async move {
            let mut tx = tx;
            client.get(bucket, name, None, &mut tx, progress).await
        };
        let open = async move {
            let mut rx = rx;
            open_stream(&mut rx, out, key).await
        };
        let (fetched, opened) = tokio::join!(fetch, open);
        let (info, written) = settle(fetched, opened)?;
        return Ok(Opened {
            info,
            plain_len: written,
            written,
        });
    };

    let (info, first) = head(client, bucket, name, HEADER_LEN).await?;
    if !looks_sealed(&first) {
        return Err(CryptError::NotEncrypted.into());
    }
    let opener = Opener::new(key, &first)?;
    let layout = opener.header().layout(info.size)?;
    let plain_len = layout.plain_len;
    if range.offset > plain_len {
        return Err(CryptError::RangeOutOfBounds {
            offset: range.offset,
            size: plain_len,
        }
        .into());
    }
    let end = range
        .length
        .map_or(plain_len, |l| plain_len.min(range.offset.saturating_add(l)));
    if end == range.offset {
        return Ok(Opened {
            info,
            plain_len,
            written: 0,
        });
    }
    let window = ChunkWindow::covering(&layout, range.offset, end);
    let (offset, length) = window.stored_range(&layout);
    let stored = ByteRange {
        offset,
        length: Some(length),
    };
    let (tx, rx) = tokio::io::duplex(PIPE_BYTES);
    let fetch = async move {
        let mut tx = tx;
        client
            .get(bucket, name, Some(stored), &mut tx, progress)
            .await
    };
    let opener = &opener;
    let layout = &layout;
    let open = async move {
        let mut rx = rx;
        open_window(&mut rx, out, opener, layout, window).await
    };
    let (fetched, opened) = tokio::join!(fetch, open);
    // Checked first: chunks of a newer version fail authentication against
    // the older header, and "changed, retry" is the true story then.
    if let Ok(now) = &fetched {
        if now.version != info.version || now.blake3 != info.blake3 {
            return Err(CryptError::Changed {
                before: info.version,
                after: now.version,
            }
            .into());
        }
    }
    settle(fetched, opened)?;
    Ok(Opened {
        info,
        plain_len,
        written: window.take,
    })
}

/// The `ObjectInfo` and first `len` bytes of an object.
async fn head(
    client: &Client,
    bucket: &str,
    name: &str,
    len: usize,
) -> Result<(ObjectInfo, Vec<u8>), ClientError> {
    let range = ByteRange {
        offset: 0,
        length: Some(len as u64),
    };
    client.get_bytes(bucket, name, Some(range)).await
}

/// Reads `bucket/name` (or `range`) as stored, but refuses an encrypted
/// object before writing any of it: without its key it would only be
/// ciphertext. A range that does not start at 0 costs an extra read of the
/// object's first bytes.
pub async fn get_unsealed<W>(
    client: &Client,
    bucket: &str,
    name: &str,
    range: Option<ByteRange>,
    out: &mut W,
    progress: impl FnMut(Progress),
) -> Result<ObjectInfo, SealedError>
where
    W: AsyncWrite + Unpin + ?Sized,
{
    if range.is_some_and(|r| r.offset > 0) {
        let (_, first) = head(client, bucket, name, MAGIC.len()).await?;
        if looks_sealed(&first) {
            return Err(CryptError::KeyNeeded.into());
        }
        return Ok(client.get(bucket, name, range, out, progress).await?);
    }
    let (tx, rx) = tokio::io::duplex(PIPE_BYTES);
    let fetch = async move {
        let mut tx = tx;
        client.get(bucket, name, range, &mut tx, progress).await
    };
    let copy = async move {
        let mut rx = rx;
        copy_unsealed(&mut rx, out).await
    };
    let (fetched, copied) = tokio::join!(fetch, copy);
    Ok(settle(fetched, copied)?.0)
}

/// What `potluck stat` says about encryption: `None` for an object that
/// does not start with the encryption header.
pub async fn probe(
    client: &Client,
    bucket: &str,
    name: &str,
    info: &ObjectInfo,
) -> Result<Option<Result<(Header, Layout), CryptError>>, ClientError> {
    if info.size < MAGIC.len() as u64 {
        return Ok(None);
    }
    let (_, first) = head(client, bucket, name, HEADER_LEN).await?;
    if !looks_sealed(&first) {
        return Ok(None);
    }
    Ok(Some(Header::parse(&first).and_then(|h| {
        let layout = h.layout(info.size)?;
        Ok((h, layout))
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_side_that_stopped_first_explains_the_failure() {
        let pipe_closed = || ClientError::Output(std::io::ErrorKind::BrokenPipe.into());
        assert!(matches!(
            settle::<(), ()>(Err(pipe_closed()), Err(CryptError::WrongKey)),
            Err(SealedError::Crypt(CryptError::WrongKey))
        ));
        // A refused request ends the stream at once; "not encrypted" would
        // be a lie.
        assert!(matches!(
            settle::<(), ()>(
                Err(ClientError::NotFound("b/k".into())),
                Err(CryptError::NotEncrypted)
            ),
            Err(SealedError::Client(ClientError::NotFound(_)))
        ));
        assert!(matches!(
            settle::<(), ()>(
                Err(ClientError::Unavailable("down".into())),
                Err(CryptError::Truncated)
            ),
            Err(SealedError::Client(ClientError::Unavailable(_)))
        ));
        assert!(matches!(
            settle::<(), ()>(Ok(()), Err(CryptError::Truncated)),
            Err(SealedError::Crypt(CryptError::Truncated))
        ));
        assert!(settle::<u8, u8>(Ok(1), Ok(2)).is_ok());
    }
}
