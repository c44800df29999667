//! Resumable uploads of files: `potluck put BUCKET/KEY FILE` run again after an interruption
//! continues after the stripes the fleet already holds.
//!
//! The upload id is random and kept in a small state file named after the pool, the object and
//! the file's absolute path (in `$POTLUCK_STATE_DIR`, else `$XDG_STATE_HOME/potluck/uploads`,
//! else `~/.local/state/potluck/uploads`), so running the same command again finds it. Before
//! skipping anything the client asks the fleet how far the upload got (GetUpload) and checks
//! its file against the data-shard hashes of every committed stripe; the gateway checks the
//! same again from a digest. A changed file is an error that says to start a new upload.

use std::io::SeekFrom;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use potluck_proto::v1::{PutObjectHeader, PutObjectResponse, UploadResume};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::client::{Client, ClientError, Progress};

#[derive(Debug, thiserror::Error)]
pub enum ResumeError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("upload state in {path}: {source}")]
    State {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("reading {path}: {source}")]
    Input {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not the file this upload started with ({why}); run again with --new-upload to upload it from the beginning")]
    Changed { path: PathBuf, why: String },
    #[error("the fleet's record of upload {id} is malformed ({why}); run again with --new-upload")]
    BadRecord { id: String, why: String },
}

impl ResumeError {
    /// The gRPC code behind the error, for the exit status: a changed file is a failed
    /// precondition, like the gateway's refusal of the same resume.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            Self::Client(e) => e.code(),
            Self::Changed { .. } | Self::BadRecord { .. } => Some(tonic::Code::FailedPrecondition),
            _ => None,
        }
    }
}

/// What a resumable put did.
#[derive(Debug)]
pub struct Outcome {
    pub response: PutObjectResponse,
    /// Object bytes sent by this run.
    pub sent: u64,
    /// Object bytes an earlier run had committed, not sent again.
    pub skipped: u64,
}

/// Where upload state files live.
pub fn state_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("POTLUCK_STATE_DIR") {
        return Some(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_STATE_HOME") {
        return Some(PathBuf::from(d).join("potluck").join("uploads"));
    }
    std::env::var_os("HOME").map(|h| {
        PathBuf::from(h)
            .join(".local")
            .join("state")
            .join("potluck")
            .join("uploads")
    })
}

/// The state file of uploading `file` to `pool`/`bucket`/`key`.
pub fn state_file(dir: &Path, pool: &str, bucket: &str, key: &str, file: &Path) -> PathBuf {
    let mut h = blake3::Hasher::new();
    for part in [pool.as_bytes(), bucket.as_bytes(), key.as_bytes()] {
        h.update(&(part.len() as u64).to_le_bytes());
        h.update(part);
    }
    h.update(file.as_os_str().as_encoded_bytes());
    dir.join(&h.finalize().to_hex()[..32])
}

fn read_state(path: &Path) -> Result<Option<[u8; 16]>, ResumeError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(ResumeError::State {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    // A damaged state file only costs the resume: start over under a new id.
    Ok(hex::decode(text.trim())
        .ok()
        .and_then(|b| <[u8; 16]>::try_from(b.as_slice()).ok()))
}

fn write_state(path: &Path, id: &[u8; 16]) -> Result<(), ResumeError> {
    let err = |source| ResumeError::State {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{}\n", hex::encode(id))).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// How a put goes, beyond what to put where (`potluck put` flags).
#[derive(Debug, Clone, Copy, Default)]
pub struct PutOptions {
    /// Start from the beginning even if an earlier run was interrupted.
    pub new_upload: bool,
    /// Send at most this many bytes per second.
    pub limit_rate: Option<u64>,
}

/// Uploads `file` (whose size is `size`) as `bucket/key`, resuming an earlier interrupted run
/// of the same command unless `how.new_upload`.
pub async fn put_file(
    client: &Client,
    bucket: &str,
    key: &str,
    (file, size): (&Path, u64),
    how: PutOptions,
    progress: impl FnMut(Progress),
) -> Result<Outcome, ResumeError> {
    let PutOptions {
        new_upload,
        limit_rate,
    } = how;
    let abs = std::path::absolute(file).unwrap_or_else(|_| file.to_path_buf());
    let state = state_dir().map(|d| state_file(&d, client.pool(), bucket, key, &abs));
    let known = match (&state, new_upload) {
        (Some(s), false) => read_state(s)?,
        _ => None,
    };
    let (id, skip, digest, already) = match known {
        Some(id) => match client.get_upload(bucket, key, &id).await? {
            Some(status) => {
                let (skip, digest, already) = check_input(file, size, &id, &status).await?;
                (id, skip, digest, already)
            }
            None => (id, 0, Bytes::new(), 0),
        },
        None => {
            let id: [u8; 16] = rand::random();
            if let Some(s) = &state {
                write_state(s, &id)?;
            }
            (id, 0, Bytes::new(), 0)
        }
    };
    let mut input = tokio::fs::File::open(file)
        .await
        .map_err(|source| ResumeError::Input {
            path: file.to_path_buf(),
            source,
        })?;
    input
        .seek(SeekFrom::Start(already))
        .await
        .map_err(|source| ResumeError::Input {
            path: file.to_path_buf(),
            source,
        })?;
    let header = PutObjectHeader {
        bucket: bucket.to_string(),
        key: key.to_string(),
        pool: client.pool().to_string(),
        size: Some(size),
        upload: Some(UploadResume {
            upload_id: Bytes::copy_from_slice(&id),
            skip_stripes: skip,
            skipped_digest: digest,
        }),
    };
    let response = match limit_rate {
        Some(rate) => {
            let input = crate::rate::Throttled::new(input, rate);
            client.put_with(header, input, already, progress).await?
        }
        None => client.put_with(header, input, already, progress).await?,
    };
    if let Some(s) = &state {
        // The object is committed; a leftover state file would only cost a GetUpload.
        let _ = std::fs::remove_file(s);
    }
    Ok(Outcome {
        response,
        sent: size - already,
        skipped: already,
    })
}

/// Checks the committed stripes against the local file: the stripes to skip, their digest
/// for the gateway, and the bytes they cover.
async fn check_input(
    file: &Path,
    size: u64,
    id: &[u8; 16],
    status: &potluck_proto::v1::GetUploadResponse,
) -> Result<(u64, Bytes, u64), ResumeError> {
    let changed = |why: String| ResumeError::Changed {
        path: file.to_path_buf(),
        why,
    };
    if status.size != size {
        return Err(changed(format!(
            "the upload was started for {} bytes, the file has {size}",
            status.size
        )));
    }
    let (k, chunk) = (status.k as usize, status.chunk_size);
    let bad = |why: &str| ResumeError::BadRecord {
        id: hex::encode(id),
        why: why.to_string(),
    };
    if k == 0 || chunk == 0 || chunk > 64 << 20 {
        return Err(bad("impossible stripe geometry"));
    }
    let stripes = status.committed_stripes;
    if status.stripe_hashes.len() as u64 != stripes
        || status.stripe_hashes.iter().any(|h| h.len() != k * 32)
        || stripes.saturating_mul(k as u64 * chunk) > size
    {
        return Err(bad("stripe hashes do not match the stripe count"));
    }
    let mut input = tokio::fs::File::open(file)
        .await
        .map_err(|source| ResumeError::Input {
            path: file.to_path_buf(),
            source,
        })?;
    let mut digest = blake3::Hasher::new();
    let mut buf = vec![0u8; chunk as usize];
    for (s, hashes) in status.stripe_hashes.iter().enumerate() {
        for i in 0..k {
            input
                .read_exact(&mut buf)
                .await
                .map_err(|source| ResumeError::Input {
                    path: file.to_path_buf(),
                    source,
                })?;
            if blake3::hash(&buf).as_bytes() != &hashes[i * 32..(i + 1) * 32] {
                return Err(changed(format!(
                    "bytes {}.. differ from those uploaded before",
                    (s as u64 * k as u64 + i as u64) * chunk
                )));
            }
        }
        digest.update(hashes);
    }
    Ok((
        stripes,
        Bytes::copy_from_slice(digest.finalize().as_bytes()),
        stripes * k as u64 * chunk,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_files_differ_by_object_and_file() {
        let d = Path::new("/s");
        let a = state_file(d, "", "b", "k", Path::new("/x/f"));
        assert_eq!(a, state_file(d, "", "b", "k", Path::new("/x/f")));
        assert_ne!(a, state_file(d, "", "b", "k2", Path::new("/x/f")));
        assert_ne!(a, state_file(d, "", "b", "k", Path::new("/x/g")));
        assert_ne!(
            state_file(d, "", "ab", "c", Path::new("/f")),
            state_file(d, "", "a", "bc", Path::new("/f"))
        );
    }

    #[test]
    fn state_round_trips_and_damage_means_none() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub").join("state");
        assert!(read_state(&p).unwrap().is_none());
        write_state(&p, &[9u8; 16]).unwrap();
        assert_eq!(read_state(&p).unwrap(), Some([9u8; 16]));
        std::fs::write(&p, "zz").unwrap();
        assert!(read_state(&p).unwrap().is_none());
    }
}
