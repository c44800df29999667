//! Emptying a deleted Bucket before it goes. Agents know a bucket by its name alone, so
//! objects left behind by a deleted Bucket would be read by the next Bucket to claim the
//! name, possibly someone else's in another namespace. A Bucket therefore carries the
//! finalizer [`FINALIZER`], and when it is deleted the operator:
//!
//! 1. takes the Bucket's own key out of the map and grants the name a purge key it made
//!    itself (so the tenant is cut off at once and the operator needs no Secret);
//! 2. lists the bucket through an Up member and deletes what it finds, a page per pass;
//! 3. releases the finalizer once a listing comes back empty. Only then can another Bucket
//!    claim the name, and it finds nothing there.
//!
//! The purge key lives in the operator's memory only; a restarted operator makes a new one
//! (and publishes a new epoch). A Bucket whose pool is gone has nothing left to purge.

use std::time::Duration;

use futures::stream::{self, StreamExt};
use potluck_proto::v1::{ClusterMap, DeleteObjectRequest, ListObjectsRequest, MemberState};
use tonic::metadata::MetadataValue;

use crate::agents::Agents;

pub const FINALIZER: &str = "potluck.dev/bucket-objects";
/// Objects listed and deleted per pass.
const PAGE: u32 = 1000;
/// Deletes in flight at once.
const CONCURRENCY: usize = 8;
/// How soon the next pass runs while objects remain.
pub const NEXT_PASS: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum PurgeError {
    #[error("no member is up to empty the bucket through")]
    NoMember,
    #[error("the agents do not take the purge key yet (map epoch {0} still spreading)")]
    KeyNotThere(u64),
    #[error("emptying the bucket through {member}: {message}")]
    Call { member: String, message: String },
}

/// One pass: deletes up to a page of the bucket's objects. Returns how many were deleted;
/// 0 means the bucket is empty.
pub async fn purge_page(
    agents: &Agents,
    map: &ClusterMap,
    bucket: &str,
    pool: &str,
    key: &(String, String),
) -> Result<u64, PurgeError> {
    let bearer: MetadataValue<_> =
        format!("Bearer {}:{}", key.0, key.1)
            .parse()
            .map_err(|_| PurgeError::Call {
                member: String::new(),
                message: "the purge key is not valid metadata".into(),
            })?;
    let mut last = PurgeError::NoMember;
    for member in map
        .members
        .iter()
        .filter(|m| MemberState::try_from(m.state) == Ok(MemberState::Up))
    {
        let fail = |message: String| PurgeError::Call {
            member: member.id.clone(),
            message,
        };
        let mut client = match agents.object_client(&member.id, &member.endpoint) {
            Ok(c) => c,
            Err(e) => {
                last = fail(e);
                continue;
            }
        };
        // Skips pages with nothing live on them (a listing may stop short of a full page).
        let mut token = String::new();
        let listed = loop {
            let mut list = tonic::Request::new(ListObjectsRequest {
                bucket: bucket.to_owned(),
                prefix: String::new(),
                pool: pool.to_owned(),
                page_token: std::mem::take(&mut token),
                page_size: PAGE,
            });
            list.metadata_mut().insert("authorization", bearer.clone());
            match client.list_objects(list).await {
                Ok(page) => {
                    let page = page.into_inner();
                    if !page.objects.is_empty() || page.next_page_token.is_empty() {
                        break Ok(page.objects);
                    }
                    token = page.next_page_token;
                }
                Err(s) => break Err(s),
            }
        };
        let objects = match listed {
            Ok(objects) if objects.is_empty() => return Ok(0),
            Ok(objects) => objects,
            Err(s)
                if matches!(
                    s.code(),
                    tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
                ) =>
            {
                // This member has not applied the map with the purge key; another may have.
                last = PurgeError::KeyNotThere(map.epoch);
                continue;
            }
            Err(s) => {
                last = fail(s.message().to_owned());
                continue;
            }
        };
        let deletes = objects.into_iter().map(|object| {
            let mut client = client.clone();
            let bearer = bearer.clone();
            async move {
                let mut req = tonic::Request::new(DeleteObjectRequest {
                    bucket: object.bucket,
                    key: object.key,
                    pool: pool.to_owned(),
                });
                req.metadata_mut().insert("authorization", bearer);
                match client.delete_object(req).await {
                    Ok(_) => Ok(()),
                    // Gone meanwhile: as good as deleted.
                    Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
                    Err(s) => Err(s.message().to_owned()),
                }
            }
        });
        let results: Vec<Result<(), String>> = stream::iter(deletes)
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        let deleted = results.iter().filter(|r| r.is_ok()).count() as u64;
        if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
            return Err(fail(format!("deleted {deleted}, then: {e}")));
        }
        return Ok(deleted);
    }
    Err(last)
}
