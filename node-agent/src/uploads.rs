//! Records of resumable uploads, kept by the members of the upload key's manifest PG.
//!
//! A record names the object id the upload will commit under and, for every stripe already
//! durable (in order), its shard hashes and missing mask: what the manifest will need. A
//! gateway appends to it as stripes reach their write quorum; any gateway can read it back to
//! resume the upload.
//!
//! One file per upload in `<data dir>/uploads/`: a length-prefixed header (the record without
//! stripes), then one fixed-size entry per stripe (missing mask, then (k+m) × 32 bytes of
//! hashes). Appends are linear in the upload's size, unlike rewriting a growing record. The
//! files live outside RocksDB because they are few, small and short-lived, and need no
//! ordering with shard writes. Records that stop changing are swept after the orphan grace;
//! by then the upload can no longer commit (a put must commit within half the grace of its
//! object id's time), and the PG leaders collect its stripes as abandoned.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use potluck_proto::v1 as pb;
use prost::Message;

/// Upload ids are 16 random bytes.
pub const UPLOAD_ID_LEN: usize = 16;
/// Largest header accepted from disk; a record header is a few hundred bytes.
const MAX_HEADER: usize = 64 << 10;
/// Widest stripe a pool may have (`validate`): bounds an entry read from disk.
const MAX_WIDTH: u32 = 64;

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("upload id must be {UPLOAD_ID_LEN} bytes, got {0}")]
    BadId(usize),
    #[error("malformed upload record: {0}")]
    Malformed(String),
    #[error("upload record {id} belongs to another object or upload ({why}); start a new upload")]
    Mismatch { id: String, why: String },
    #[error("upload record {id} holds {have} stripes, cannot append from stripe {first}")]
    Gap { id: String, have: u64, first: u64 },
    #[error("upload record i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// The upload records of this member.
pub struct UploadRecords {
    dir: PathBuf,
    /// Appends read the length and then write; one lock keeps two writers of one record from
    /// interleaving (records are small and writes rare next to shard writes).
    lock: Mutex<()>,
}

fn entry_len(record: &pb::UploadRecord) -> usize {
    4 + (record.k + record.m) as usize * 32
}

fn check_header(r: &pb::UploadRecord) -> Result<(), UploadError> {
    if r.upload_id.len() != UPLOAD_ID_LEN {
        return Err(UploadError::BadId(r.upload_id.len()));
    }
    if r.object_id.len() != 16 {
        return Err(UploadError::Malformed(format!(
            "object id of {} bytes",
            r.object_id.len()
        )));
    }
    if r.k == 0 || r.k + r.m > MAX_WIDTH || r.chunk_size == 0 {
        return Err(UploadError::Malformed(format!(
            "geometry {}+{} of {} byte chunks",
            r.k, r.m, r.chunk_size
        )));
    }
    Ok(())
}

impl UploadRecords {
    /// Records under `dir` (created on first write).
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            lock: Mutex::new(()),
        }
    }

    fn file(&self, id: &[u8]) -> Result<PathBuf, UploadError> {
        if id.len() != UPLOAD_ID_LEN {
            return Err(UploadError::BadId(id.len()));
        }
        Ok(self.dir.join(hex::encode(id)))
    }

    fn guard(&self) -> std::sync::MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends `record.stripes` as stripes `first..`, creating the record if `first` is 0 (a
    /// record with another object id is replaced: the upload started over). Returns the
    /// stripes now held.
    pub fn put(&self, record: &pb::UploadRecord, first: u64) -> Result<u64, UploadError> {
        check_header(record)?;
        let width = (record.k + record.m) as usize;
        for s in &record.stripes {
            if s.shard_hashes.len() != width * 32 {
                return Err(UploadError::Malformed(format!(
                    "stripe hashes of {} bytes, want {}",
                    s.shard_hashes.len(),
                    width * 32
                )));
            }
        }
        let path = self.file(&record.upload_id)?;
        let _g = self.guard();
        let existing = read_header(&path)?;
        let (mut file, header_len, have) = match existing {
            Some((h, header_len, have)) if h.object_id == record.object_id => {
                if (h.bucket.as_str(), h.key.as_str(), h.pool.as_str(), h.size)
                    != (
                        record.bucket.as_str(),
                        record.key.as_str(),
                        record.pool.as_str(),
                        record.size,
                    )
                    || (h.k, h.m, h.chunk_size) != (record.k, record.m, record.chunk_size)
                {
                    return Err(UploadError::Mismatch {
                        id: hex::encode(&record.upload_id),
                        why: "same object id, different address or geometry".into(),
                    });
                }
                let f = OpenOptions::new().read(true).write(true).open(&path)?;
                (f, header_len, have)
            }
            _ if first == 0 => {
                fs::create_dir_all(&self.dir)?;
                let mut header = record.clone();
                header.stripes.clear();
                let bytes = header.encode_to_vec();
                let mut f = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&path)?;
                f.write_all(&(bytes.len() as u32).to_le_bytes())?;
                f.write_all(&bytes)?;
                (f, 4 + bytes.len() as u64, 0)
            }
            Some((_, _, have)) => {
                return Err(UploadError::Gap {
                    id: hex::encode(&record.upload_id),
                    have,
                    first,
                })
            }
            None => {
                return Err(UploadError::Gap {
                    id: hex::encode(&record.upload_id),
                    have: 0,
                    first,
                })
            }
        };
        if first > have {
            return Err(UploadError::Gap {
                id: hex::encode(&record.upload_id),
                have,
                first,
            });
        }
        let entry = entry_len(record) as u64;
        let at = header_len + first * entry;
        file.set_len(at)?;
        file.seek(SeekFrom::Start(at))?;
        let mut out = Vec::with_capacity(record.stripes.len() * entry as usize);
        for s in &record.stripes {
            out.extend_from_slice(&s.missing.to_le_bytes());
            out.extend_from_slice(&s.shard_hashes);
        }
        file.write_all(&out)?;
        file.sync_data()?;
        Ok(first + record.stripes.len() as u64)
    }

    /// The whole record, if this member has it.
    pub fn get(&self, id: &[u8]) -> Result<Option<pb::UploadRecord>, UploadError> {
        let path = self.file(id)?;
        let _g = self.guard();
        let Some((mut header, header_len, have)) = read_header(&path)? else {
            return Ok(None);
        };
        let entry = entry_len(&header);
        let mut f = File::open(&path)?;
        f.seek(SeekFrom::Start(header_len))?;
        let mut body = vec![0u8; have as usize * entry];
        f.read_exact(&mut body)?;
        header.stripes = body
            .chunks_exact(entry)
            .map(|e| {
                let mut missing = [0u8; 4];
                missing.copy_from_slice(&e[..4]);
                pb::UploadStripe {
                    missing: u32::from_le_bytes(missing),
                    shard_hashes: bytes::Bytes::copy_from_slice(&e[4..]),
                }
            })
            .collect();
        Ok(Some(header))
    }

    pub fn delete(&self, id: &[u8]) -> Result<bool, UploadError> {
        let path = self.file(id)?;
        let _g = self.guard();
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes records untouched for `older_than`; returns how many.
    pub fn sweep(&self, older_than: Duration) -> Result<u64, UploadError> {
        let rd = match fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e.into()),
        };
        let _g = self.guard();
        let now = SystemTime::now();
        let mut swept = 0;
        for entry in rd.flatten() {
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| now.duration_since(t).ok())
                .is_some_and(|age| age > older_than);
            if old && fs::remove_file(entry.path()).is_ok() {
                swept += 1;
            }
        }
        Ok(swept)
    }
}

/// The header, its length on disk and the whole stripes that follow it.
fn read_header(path: &Path) -> Result<Option<(pb::UploadRecord, u64, u64)>, UploadError> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let total = f.metadata()?.len();
    let mut len = [0u8; 4];
    f.read_exact(&mut len)
        .map_err(|e| UploadError::Malformed(format!("short header: {e}")))?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_HEADER || 4 + len as u64 > total {
        return Err(UploadError::Malformed(format!("header of {len} bytes")));
    }
    let mut buf = vec![0u8; len];
    f.read_exact(&mut buf)?;
    let header = pb::UploadRecord::decode(&buf[..])
        .map_err(|e| UploadError::Malformed(format!("header: {e}")))?;
    check_header(&header)?;
    let header_len = 4 + len as u64;
    // A torn last entry (a crash mid-append) is not counted.
    let have = (total - header_len) / entry_len(&header) as u64;
    Ok(Some((header, header_len, have)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(object: u8, stripes: &[u8]) -> pb::UploadRecord {
        pb::UploadRecord {
            upload_id: vec![7u8; 16].into(),
            pool: "default".into(),
            bucket: "b".into(),
            key: "k".into(),
            object_id: vec![object; 16].into(),
            created_unix_ms: 1,
            size: 100 << 20,
            k: 4,
            m: 2,
            chunk_size: 1 << 20,
            stripes: stripes
                .iter()
                .map(|&b| pb::UploadStripe {
                    shard_hashes: vec![b; 6 * 32].into(),
                    missing: b as u32,
                })
                .collect(),
        }
    }

    #[test]
    fn appends_overwrites_tails_and_refuses_gaps() {
        let dir = tempfile::tempdir().unwrap();
        let r = UploadRecords::new(dir.path().join("uploads"));
        assert!(r.get(&[7u8; 16]).unwrap().is_none());
        assert_eq!(r.put(&record(1, &[]), 0).unwrap(), 0);
        assert_eq!(r.put(&record(1, &[1, 2]), 0).unwrap(), 2);
        assert_eq!(r.put(&record(1, &[3, 4]), 2).unwrap(), 4);
        // A retried append of stripe 3 replaces the tail.
        assert_eq!(r.put(&record(1, &[9]), 3).unwrap(), 4);
        let got = r.get(&[7u8; 16]).unwrap().unwrap();
        let missing: Vec<u32> = got.stripes.iter().map(|s| s.missing).collect();
        assert_eq!(missing, vec![1, 2, 3, 9]);
        assert!(matches!(
            r.put(&record(1, &[5]), 6),
            Err(UploadError::Gap { have: 4, .. })
        ));
        // Another object id from stripe 0: the upload started over.
        assert_eq!(r.put(&record(2, &[5]), 0).unwrap(), 1);
        assert!(matches!(
            r.put(&record(3, &[5]), 1),
            Err(UploadError::Gap { .. })
        ));
        assert!(r.delete(&[7u8; 16]).unwrap());
        assert!(!r.delete(&[7u8; 16]).unwrap());
        assert!(matches!(r.get(&[1u8; 3]), Err(UploadError::BadId(3))));
    }

    #[test]
    fn sweep_removes_only_old_records() {
        let dir = tempfile::tempdir().unwrap();
        let r = UploadRecords::new(dir.path().join("uploads"));
        r.put(&record(1, &[1]), 0).unwrap();
        assert_eq!(r.sweep(Duration::from_secs(3600)).unwrap(), 0);
        assert_eq!(r.sweep(Duration::ZERO).unwrap(), 1);
        assert!(r.get(&[7u8; 16]).unwrap().is_none());
    }
}
