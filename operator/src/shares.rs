//! Share grants in the cluster map: revoked, unexpired grants are published per bucket so
//! that every agent refuses their tokens; expired Share resources are deleted.
//!
//! Share resources live in the operator's (and agents') namespace; the fleet pass lists them
//! each time it runs (every few seconds, a fraction of the shortest `downAfter`), so a
//! revocation reaches agents within one pass and needs no watch of its own.

use kube::api::{DeleteParams, ListParams};
use kube::{Api, Client, ResourceExt};
use potluck_api::Share;
use potluck_proto::v1::{ClusterMap, RevokedShare};

use crate::cluster_map::MapError;

/// Every Share in `namespace`; none when the Share CRD is not installed (a cluster upgraded
/// without `deploy/crds.yaml`), so that everything else keeps working there.
pub async fn list(client: &Client, namespace: &str) -> Result<Vec<Share>, kube::Error> {
    match Api::<Share>::namespaced(client.clone(), namespace)
        .list(&ListParams::default())
        .await
    {
        Ok(list) => Ok(list.items),
        Err(kube::Error::Api(s)) if s.code == 404 => {
            tracing::debug!("the Share CRD is not installed; publishing no revocations");
            Ok(Vec::new())
        }
        Err(e) => Err(e),
    }
}

/// The revocations the map carries at `now_unix`: revoked Shares whose expiry has not passed,
/// sorted by id so that an unchanged set compares equal and costs no epoch. Shares whose id
/// is not 32 hex digits are skipped (no token can carry them).
pub fn revoked(shares: &[Share], now_unix: u64) -> Vec<RevokedShare> {
    let mut out: Vec<RevokedShare> = shares
        .iter()
        .filter(|s| s.spec.revoked)
        .filter_map(|s| {
            let expires = u64::try_from(s.spec.expires_unix).ok()?;
            if expires <= now_unix {
                return None;
            }
            let id = hex::decode(&s.spec.id).ok().filter(|id| id.len() == 16)?;
            Some(RevokedShare {
                id: id.into(),
                bucket: s.spec.bucket.clone(),
                expires_unix: expires,
            })
        })
        .collect();
    out.sort_by(|a, b| a.id.cmp(&b.id).then_with(|| a.bucket.cmp(&b.bucket)));
    out.dedup();
    out
}

/// Puts the revocations into the map the pass computed, minting one more epoch when they are
/// all that changed (agents apply only newer epochs).
pub fn with_revocations(
    mut next: ClusterMap,
    previous: Option<&ClusterMap>,
    revoked: Vec<RevokedShare>,
    now_unix_ms: u64,
) -> Result<ClusterMap, MapError> {
    if next.revoked_shares == revoked {
        return Ok(next);
    }
    next.revoked_shares = revoked;
    crate::cluster_map::next_epoch_if_reused(next, previous, now_unix_ms)
}

/// Deletes Shares whose expiry has passed: their tokens open nothing any more. Best effort;
/// a failure is logged and retried on the next pass.
pub async fn collect_expired(client: &Client, namespace: &str, shares: &[Share], now_unix: u64) {
    let api = Api::<Share>::namespaced(client.clone(), namespace);
    for s in shares {
        let expired = match u64::try_from(s.spec.expires_unix) {
            Ok(e) => e <= now_unix,
            Err(_) => true,
        };
        if !expired || s.metadata.deletion_timestamp.is_some() {
            continue;
        }
        match api.delete(&s.name_any(), &DeleteParams::default()).await {
            Ok(_) => {
                tracing::info!(share = %s.name_any(), bucket = %s.spec.bucket, "deleted expired share grant")
            }
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => {
                tracing::warn!(share = %s.name_any(), "cannot delete expired share grant, retrying next pass: {e}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use potluck_api::ShareSpec;

    fn share(id: &str, revoked: bool, expires: i64) -> Share {
        Share::new(
            &format!("share-{id}"),
            ShareSpec {
                id: id.into(),
                bucket: "photos".into(),
                path: "a".into(),
                prefix: false,
                expires_unix: expires,
                access_key_id: "pk-1".into(),
                revoked,
            },
        )
    }

    #[test]
    fn only_revoked_unexpired_grants_with_valid_ids_are_published_sorted() {
        let b = "bb".repeat(16);
        let a = "aa".repeat(16);
        let shares = vec![
            share(&b, true, 200),
            share(&a, true, 200),
            share(&"cc".repeat(16), false, 200),
            share(&"dd".repeat(16), true, 100),
            share("nothex", true, 200),
        ];
        let r = revoked(&shares, 100);
        let ids: Vec<String> = r.iter().map(|s| hex::encode(&s.id)).collect();
        assert_eq!(ids, vec![a, b]);
    }

    #[test]
    fn a_new_epoch_only_when_revocations_change() {
        let prev = ClusterMap {
            epoch: 5,
            ..Default::default()
        };
        let same = with_revocations(prev.clone(), Some(&prev), vec![], 1).unwrap();
        assert_eq!(same.epoch, 5);
        let one = vec![RevokedShare {
            id: vec![1; 16].into(),
            bucket: "photos".into(),
            expires_unix: 9,
        }];
        let next = with_revocations(prev.clone(), Some(&prev), one.clone(), 1).unwrap();
        assert_eq!(next.epoch, 6);
        assert_eq!(next.revoked_shares, one);
        // Already a new epoch for other reasons: no second bump.
        let moved = ClusterMap {
            epoch: 6,
            ..Default::default()
        };
        assert_eq!(
            with_revocations(moved, Some(&prev), one, 1).unwrap().epoch,
            6
        );
    }
}
