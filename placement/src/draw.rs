//! Rendezvous draws: one pseudo-random number per (PG, member), derived from BLAKE3.
//!
//! Each member gets one BLAKE3 output stream keyed by its id; the draw for PG `p` is bytes
//! `8p..8p+8` of that stream. That is a hash of (pg, member id) like any other, but one
//! compression yields the draws of eight PGs and the crate can compute many blocks at once, so
//! a thousand members times thousands of PGs costs milliseconds rather than a hash call each.

use std::f64::consts::{LN_2, SQRT_2};

/// Changing either context changes every placement decided from scratch, so they are versioned
/// like a wire format.
const DRAW_CONTEXT: &str = "potluck placement 2026-11 rendezvous draw v1";
const TIE_CONTEXT: &str = "potluck placement 2026-11 tie-break v1";

/// PGs drawn per batch: 64 PGs of 8 bytes fill 8 BLAKE3 blocks per member, enough for the
/// multi-block path while the batch buffer of a thousand members stays around half a MiB.
const BATCH: usize = 64;
const DRAW_BYTES: usize = 8;

pub(crate) struct Draws {
    readers: Vec<blake3::OutputReader>,
}

impl Draws {
    pub(crate) fn new<'a>(ids: impl Iterator<Item = &'a str>) -> Self {
        let readers = ids
            .map(|id| {
                let mut hasher = blake3::Hasher::new_derive_key(DRAW_CONTEXT);
                hasher.update(id.as_bytes());
                hasher.finalize_xof()
            })
            .collect();
        Draws { readers }
    }

    /// Calls `visit(pg, draws)` for every PG in order, where `draws[i]` is member `i`'s raw
    /// draw in that PG.
    pub(crate) fn for_each_pg(&mut self, pg_count: usize, mut visit: impl FnMut(usize, &[u64])) {
        let n = self.readers.len();
        let stride = BATCH * DRAW_BYTES;
        let mut raw = vec![0u8; n * stride];
        let mut draws = vec![0u64; n];
        let mut start = 0;
        while start < pg_count {
            let count = BATCH.min(pg_count - start);
            for (reader, chunk) in self.readers.iter_mut().zip(raw.chunks_exact_mut(stride)) {
                reader.set_position((start * DRAW_BYTES) as u64);
                reader.fill(&mut chunk[..count * DRAW_BYTES]);
            }
            for j in 0..count {
                for (i, draw) in draws.iter_mut().enumerate() {
                    let at = i * stride + j * DRAW_BYTES;
                    let mut bytes = [0u8; DRAW_BYTES];
                    bytes.copy_from_slice(&raw[at..at + DRAW_BYTES]);
                    *draw = u64::from_le_bytes(bytes);
                }
                visit(start + j, &draws);
            }
            start += count;
        }
    }
}

/// A raw draw as a uniform number in (0, 1): 53 random bits, centred in their interval so
/// that it is never 0 nor 1.
pub(crate) fn unit(raw: u64) -> f64 {
    ((raw >> 11) as f64 + 0.5) * (1.0 / (1u64 << 53) as f64)
}

/// straw2's rule in "smallest wins" form: `-ln(u) / weight` is an exponential variate with
/// rate `weight`, so the minimum over members lands on each member with probability
/// proportional to its weight, and a member's key does not depend on who else is present
/// (which is what keeps movement minimal when membership changes).
pub(crate) fn rendezvous_key(u: f64, weight: f64) -> f64 {
    -ln_unit(u) / weight
}

/// Whether `rendezvous_key(u, weight)` is certainly no smaller than `bound`, decided without
/// the logarithm: `-ln(u) >= 1 - u`, and in a PG of many members almost every draw fails
/// this cheap test. The margin keeps rounding from ever rejecting a key below `bound`.
pub(crate) fn key_at_least(u: f64, weight: f64, bound: f64) -> bool {
    (1.0 - u) * (1.0 - 1e-9) >= bound * weight
}

/// A member's tie-break seed: used only to spread choices that the balancer and the refill
/// would otherwise always make in favour of the lowest PG number.
pub(crate) fn tie_seed(id: &str) -> u64 {
    let mut hasher = blake3::Hasher::new_derive_key(TIE_CONTEXT);
    hasher.update(id.as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&hasher.finalize().as_bytes()[..8]);
    u64::from_le_bytes(bytes)
}

/// Cheap per-(seed, pg) scramble (splitmix64 finaliser); only orders otherwise equal choices.
pub(crate) fn mix(seed: u64, pg: usize) -> u64 {
    let mut z = seed ^ (pg as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Natural logarithm for `x` in (0, 1], built from `+ - * /` only.
///
/// Those operations are correctly rounded on every IEEE-754 platform, whereas `f64::ln` comes
/// from the platform's libm and may differ in the last bit between systems or library versions.
/// A different bit can flip a close rendezvous contest, so an operator upgrade or a move to
/// another architecture could otherwise change placements computed from identical inputs.
pub(crate) fn ln_unit(x: f64) -> f64 {
    let bits = x.to_bits();
    let mut exponent = ((bits >> 52) & 0x7ff) as i64 - 1023;
    let mut mantissa = f64::from_bits((bits & 0x000f_ffff_ffff_ffff) | 0x3ff0_0000_0000_0000);
    if mantissa > SQRT_2 {
        mantissa *= 0.5;
        exponent += 1;
    }
    // ln(m) = 2 atanh(s) with s = (m-1)/(m+1), |s| <= 0.172: s^2 < 0.03 makes the odd series
    // converge to double precision in a dozen terms.
    let s = (mantissa - 1.0) / (mantissa + 1.0);
    let s2 = s * s;
    const INV_ODD: [f64; 11] = [
        1.0 / 21.0,
        1.0 / 19.0,
        1.0 / 17.0,
        1.0 / 15.0,
        1.0 / 13.0,
        1.0 / 11.0,
        1.0 / 9.0,
        1.0 / 7.0,
        1.0 / 5.0,
        1.0 / 3.0,
        1.0,
    ];
    let mut series = 1.0 / 23.0;
    for c in INV_ODD {
        series = series * s2 + c;
    }
    exponent as f64 * LN_2 + 2.0 * s * series
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ln_unit_matches_libm() {
        let mut x = 1.0f64;
        while x > 1e-16 {
            for f in [1.0, 0.9, 0.75, 0.71, 0.7, 0.6, 0.51] {
                let v = x * f;
                let err = (ln_unit(v) - v.ln()).abs();
                assert!(
                    err <= 4.0 * f64::EPSILON * v.ln().abs().max(1.0),
                    "{v}: {err}"
                );
            }
            x *= 0.5;
        }
        assert_eq!(ln_unit(1.0), 0.0);
    }

    #[test]
    fn draws_do_not_depend_on_batching_or_other_members() {
        let mut alone = Draws::new(["m1"].into_iter());
        let mut together = Draws::new(["m0", "m1"].into_iter());
        let mut a = Vec::new();
        let mut b = Vec::new();
        alone.for_each_pg(200, |_, keys| a.push(keys[0]));
        together.for_each_pg(200, |_, keys| b.push(keys[1]));
        assert_eq!(a, b);
        assert_eq!(a.len(), 200);
    }

    #[test]
    fn cheap_rejection_never_rejects_a_smaller_key() {
        let mut draws = Draws::new(["a"].into_iter());
        let mut checked = 0;
        draws.for_each_pg(4096, |_, raw| {
            let u = unit(raw[0]);
            for w in [1.0, 3.0, 1e12] {
                let key = rendezvous_key(u, w);
                for bound in [key, key * 0.999_999, key * 1.000_001, 1e-3, 1e-15] {
                    if key_at_least(u, w, bound) {
                        assert!(key >= bound, "u {u} w {w} bound {bound}");
                        checked += 1;
                    }
                }
            }
        });
        assert!(checked > 0);
        assert!(key_at_least(0.5, 1.0, 0.4));
        assert!(!key_at_least(1.0 - 1e-12, 1.0, 1e-12));
    }
}
