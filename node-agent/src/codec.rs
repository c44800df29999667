//! Reed–Solomon coding of stripes (systematic: data shards are the input bytes).
//!
//! One `StripeCodec` per (k, m) is built once and shared; encoding works in
//! place on a reused stripe buffer, so steady-state puts allocate nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use reed_solomon_erasure::galois_8::ReedSolomon;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("invalid erasure code {k}+{m}: {reason}")]
    InvalidCode { k: u32, m: u32, reason: String },
    #[error("cannot reconstruct stripe: {available} of {total} shards usable, {needed} needed")]
    TooFewShards {
        available: usize,
        needed: usize,
        total: usize,
    },
    #[error("erasure coding failed: {0}")]
    Internal(String),
}

pub struct StripeCodec {
    k: usize,
    m: usize,
    rs: ReedSolomon,
}

impl StripeCodec {
    pub fn new(k: u32, m: u32) -> Result<Self, CodecError> {
        let rs = ReedSolomon::new(k as usize, m as usize).map_err(|e| CodecError::InvalidCode {
            k,
            m,
            reason: format!("{e:?}"),
        })?;
        Ok(Self {
            k: k as usize,
            m: m as usize,
            rs,
        })
    }

    pub fn k(&self) -> usize {
        self.k
    }

    pub fn m(&self) -> usize {
        self.m
    }

    /// Computes parity in place. `buf` holds k+m shards at a stride of
    /// `stride` bytes; each shard's first `shard_len` bytes are used.
    pub fn encode_strided(
        &self,
        buf: &mut [u8],
        stride: usize,
        shard_len: usize,
    ) -> Result<(), CodecError> {
        let (data, parity) = buf.split_at_mut(self.k * stride);
        let data: Vec<&[u8]> = data.chunks(stride).map(|c| &c[..shard_len]).collect();
        let mut parity: Vec<&mut [u8]> = parity
            .chunks_mut(stride)
            .take(self.m)
            .map(|c| &mut c[..shard_len])
            .collect();
        self.rs
            .encode_sep(&data, &mut parity)
            .map_err(|e| CodecError::Internal(format!("{e:?}")))
    }

    fn enough(&self, shards: &[Option<Vec<u8>>]) -> Result<(), CodecError> {
        let available = shards.iter().filter(|s| s.is_some()).count();
        if available < self.k {
            return Err(CodecError::TooFewShards {
                available,
                needed: self.k,
                total: shards.len(),
            });
        }
        Ok(())
    }

    /// Rebuilds every missing shard, parity included, from any k present ones: what recovery
    /// writes to a member that lost its shard.
    pub fn reconstruct_all(&self, shards: &mut [Option<Vec<u8>>]) -> Result<(), CodecError> {
        self.enough(shards)?;
        self.rs
            .reconstruct(shards)
            .map_err(|e| CodecError::Internal(format!("{e:?}")))
    }

    /// Rebuilds the missing data shards (`None`) from any k present shards.
    pub fn reconstruct_data(&self, shards: &mut [Option<Vec<u8>>]) -> Result<(), CodecError> {
        self.enough(shards)?;
        self.rs
            .reconstruct_data(shards)
            .map_err(|e| CodecError::Internal(format!("{e:?}")))
    }
}

/// Codecs by (k, m), built on first use. Building one inverts a matrix, so a
/// request should never pay for it twice.
#[derive(Default)]
pub struct CodecCache {
    codecs: Mutex<HashMap<(u32, u32), Arc<StripeCodec>>>,
}

impl CodecCache {
    pub fn get(&self, k: u32, m: u32) -> Result<Arc<StripeCodec>, CodecError> {
        let mut map = self
            .codecs
            .lock()
            .map_err(|_| CodecError::Internal("codec cache poisoned".into()))?;
        if let Some(c) = map.get(&(k, m)) {
            return Ok(c.clone());
        }
        let c = Arc::new(StripeCodec::new(k, m)?);
        map.insert((k, m), c.clone());
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_k_shards_rebuild_the_data() {
        let codec = StripeCodec::new(4, 2).unwrap();
        let stride = 64;
        let len = 37;
        let mut buf = vec![0u8; 6 * stride];
        for (i, b) in buf[..4 * stride].iter_mut().enumerate() {
            *b = (i * 31 % 251) as u8;
        }
        codec.encode_strided(&mut buf, stride, len).unwrap();
        let shards: Vec<Vec<u8>> = buf.chunks(stride).map(|c| c[..len].to_vec()).collect();
        for lost in [(0, 1), (2, 5), (4, 5), (0, 3)] {
            let mut opt: Vec<Option<Vec<u8>>> = shards.iter().cloned().map(Some).collect();
            opt[lost.0] = None;
            opt[lost.1] = None;
            codec.reconstruct_data(&mut opt).unwrap();
            for i in 0..4 {
                assert_eq!(opt[i].as_ref().unwrap(), &shards[i], "lost {lost:?}");
            }
        }
        let mut opt: Vec<Option<Vec<u8>>> = shards.iter().cloned().map(Some).collect();
        opt[0] = None;
        opt[1] = None;
        opt[2] = None;
        assert!(matches!(
            codec.reconstruct_data(&mut opt),
            Err(CodecError::TooFewShards {
                available: 3,
                needed: 4,
                ..
            })
        ));
    }

    #[test]
    fn invalid_codes_are_refused() {
        assert!(StripeCodec::new(0, 2).is_err());
        assert!(StripeCodec::new(200, 100).is_err());
    }
}
