//! Who may call the ObjectService: the keys and buckets the cluster map grants.
//!
//! A client sends `authorization: Bearer <access-key-id>:<secret>`. The map holds, per
//! bucket, its pool and the BLAKE3 of each key's secret (never the secret itself), so the
//! check is: find the key by id, hash what was sent, compare hashes. `blake3::Hash` compares
//! in constant time, so the time taken says nothing about how much of a secret was right.
//!
//! A share link's holder sends `authorization: Share <token>` instead (`potluck_format::share`):
//! the token names the access key that signed it, so the check is the same lookup, a keyed
//! BLAKE3 MAC with a key derived from that key's secret hash, the expiry against this agent's
//! clock and the grant id against the map's revocations. Such a caller may only read (get,
//! stat) what the grant covers, and list within a prefix grant.
//!
//! Authentication happens before anything is read from a request's body; authorisation once
//! the bucket is known (for a put, after its header). Sent credentials are always checked,
//! even when the map does not require them: a client with a wrong key should hear so rather
//! than silently act anonymously.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use potluck_format::share::{self, Grant};
use potluck_proto::v1 as pb;
use tonic::metadata::MetadataMap;
use tonic::Status;

use crate::cluster::MapView;
use crate::validate;

/// The gRPC metadata key credentials travel in.
pub const METADATA_KEY: &str = "authorization";

const HOW_TO_SEND: &str =
    "send the metadata `authorization: Bearer <accessKeyId>:<secretAccessKey>` \
     with the two values from your Bucket's credentials Secret (the potluck CLI: --access-key and \
     --secret-key, or POTLUCK_ACCESS_KEY and POTLUCK_SECRET_KEY)";

struct Key {
    secret_blake3: blake3::Hash,
    bucket: String,
    pool: String,
}

/// The map's grants, indexed once per epoch.
#[derive(Default)]
struct Index {
    epoch: u64,
    require_auth: bool,
    keys: HashMap<String, Key>,
    /// Bucket name to its pool.
    pools: HashMap<String, String>,
    /// Share grant ids revoked before their expiry.
    revoked: HashMap<[u8; 16], String>,
}

impl Index {
    fn new(map: &pb::ClusterMap) -> Self {
        let mut keys = HashMap::new();
        let mut pools = HashMap::new();
        // The operator never publishes a name or key id twice; if a map does anyway, neither
        // claimant gets it, rather than whichever happens to come first.
        let mut clashing_keys = Vec::new();
        let mut clashing_names = Vec::new();
        for bucket in &map.buckets {
            if pools
                .insert(bucket.name.clone(), bucket.pool.clone())
                .is_some()
            {
                clashing_names.push(bucket.name.clone());
            }
            for key in &bucket.keys {
                let Ok(hash) = <[u8; 32]>::try_from(key.secret_blake3.as_ref()) else {
                    tracing::warn!(key = %key.id, "the map holds a key whose hash is not 32 bytes; ignoring it");
                    continue;
                };
                let entry = Key {
                    secret_blake3: blake3::Hash::from(hash),
                    bucket: bucket.name.clone(),
                    pool: bucket.pool.clone(),
                };
                if keys.insert(key.id.clone(), entry).is_some() {
                    clashing_keys.push(key.id.clone());
                }
            }
        }
        for id in clashing_keys {
            tracing::warn!(key = %id, "the map grants an access key id twice; refusing it");
            keys.remove(&id);
        }
        for name in clashing_names {
            tracing::warn!(bucket = %name, "the map lists a bucket twice; refusing its keys");
            keys.retain(|_, k| k.bucket != name);
        }
        let revoked = map
            .revoked_shares
            .iter()
            .filter_map(|r| Some((<[u8; 16]>::try_from(r.id.as_ref()).ok()?, r.bucket.clone())))
            .collect();
        Self {
            epoch: map.epoch,
            require_auth: map.require_auth,
            keys,
            pools,
            revoked,
        }
    }
}

/// Checks calls against the current map, rebuilding its index when the epoch changes.
#[derive(Default)]
pub struct Authenticator {
    index: Mutex<Arc<Index>>,
}

/// An authenticated caller: the key it presented, if any, or the share grant.
pub struct Caller {
    index: Arc<Index>,
    /// The access key id, when one was presented and checked.
    key: Option<String>,
    /// The verified, unexpired, unrevoked grant of a share link's holder.
    grant: Option<Grant>,
}

/// Seconds since the Unix epoch by this agent's clock.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn share_status(e: share::TokenError) -> Status {
    match e {
        share::TokenError::BadSignature => Status::permission_denied(e.to_string()),
        _ => Status::unauthenticated(e.to_string()),
    }
}

/// Checks a share token against `index` at `now` (unix seconds).
fn check_token(index: &Index, token: &str, now: u64) -> Result<Grant, Status> {
    let unverified = share::parse(token).map_err(share_status)?;
    let claimed = unverified.grant();
    let Some(key) = index.keys.get(&claimed.access_key_id) else {
        return Err(Status::permission_denied(format!(
            "this share link was signed with access key {:?}, which this fleet does not know: \
             the link belongs to another fleet, or its bucket's key was rotated or the bucket \
             deleted; ask the owner for a new link",
            claimed.access_key_id
        )));
    };
    if key.bucket != claimed.bucket {
        return Err(share_status(share::TokenError::BadSignature));
    }
    let secret_hash = *key.secret_blake3.as_bytes();
    let grant = unverified.verify(&secret_hash).map_err(share_status)?;
    if grant.expires_unix <= now {
        return Err(Status::permission_denied(format!(
            "this share link expired at unix time {} ({} s ago); ask the owner for a new link",
            grant.expires_unix,
            now - grant.expires_unix
        )));
    }
    if index.revoked.contains_key(&grant.id) {
        return Err(Status::permission_denied(format!(
            "this share link (grant {}) was revoked by its owner; ask the owner for a new link",
            grant.id_hex()
        )));
    }
    Ok(grant)
}

impl Authenticator {
    pub fn new() -> Self {
        Self::default()
    }

    fn index(&self, view: &MapView) -> Arc<Index> {
        let mut current = self.index.lock().unwrap_or_else(PoisonError::into_inner);
        if current.epoch != view.epoch() {
            *current = Arc::new(Index::new(&view.map));
        }
        current.clone()
    }

    /// Who is calling: a valid key, or nobody when the map lets anonymous callers in.
    /// Missing (when required), malformed, unknown or wrong credentials are UNAUTHENTICATED.
    pub fn authenticate(&self, view: &MapView, metadata: &MetadataMap) -> Result<Caller, Status> {
        let index = self.index(view);
        let Some(value) = metadata.get(METADATA_KEY) else {
            if index.require_auth {
                return Err(Status::unauthenticated(format!(
                    "this fleet requires credentials and the call carried none: {HOW_TO_SEND}"
                )));
            }
            return Ok(Caller {
                index,
                key: None,
                grant: None,
            });
        };
        let text = value.to_str().map_err(|_| malformed())?;
        let (scheme, credentials) = text.trim().split_once(' ').ok_or_else(malformed)?;
        if scheme.eq_ignore_ascii_case("share") {
            let grant = check_token(&index, credentials.trim(), now_unix())?;
            return Ok(Caller {
                index,
                key: None,
                grant: Some(grant),
            });
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(malformed());
        }
        let (id, secret) = credentials.trim().split_once(':').ok_or_else(malformed)?;
        let Some(key) = index.keys.get(id) else {
            return Err(Status::unauthenticated(format!(
                "access key id {id:?} is not known to this fleet (its Bucket may be deleted, not \
                 Ready yet, or the map not here yet); check the Bucket's status and {HOW_TO_SEND}"
            )));
        };
        if blake3::hash(secret.as_bytes()) != key.secret_blake3 {
            return Err(Status::unauthenticated(format!(
                "wrong secret for access key id {id:?}: {HOW_TO_SEND}"
            )));
        }
        Ok(Caller {
            key: Some(id.to_owned()),
            index,
            grant: None,
        })
    }

    /// The grant of a share token presented outside gRPC (the HTTP endpoint).
    pub fn grant(&self, view: &MapView, token: &str) -> Result<Grant, Status> {
        check_token(&self.index(view), token, now_unix())
    }
}

fn malformed() -> Status {
    Status::unauthenticated(format!(
        "the authorization metadata is not `Bearer <accessKeyId>:<secretAccessKey>`: {HOW_TO_SEND}"
    ))
}

impl Caller {
    /// Whether the caller may read object `key` of `bucket` in `pool` (get, stat): what
    /// [`Caller::authorize`] allows, and to a share link's holder what its grant covers.
    pub fn authorize_read(&self, bucket: &str, key: &str, pool: &mut String) -> Result<(), Status> {
        match &self.grant {
            Some(g) => {
                self.fill_pool(bucket, pool);
                if g.bucket != bucket || !g.covers_key(key) {
                    return Err(Status::permission_denied(format!(
                        "this share link opens only {} in bucket {:?}, not {bucket}/{key}",
                        describe(g),
                        g.bucket
                    )));
                }
                self.grant_pool(g, pool)
            }
            None => self.authorize(bucket, pool),
        }
    }

    /// Whether the caller may list `bucket` under `prefix`: a share link's holder only within
    /// a prefix grant.
    pub fn authorize_list(
        &self,
        bucket: &str,
        prefix: &str,
        pool: &mut String,
    ) -> Result<(), Status> {
        match &self.grant {
            Some(g) => {
                self.fill_pool(bucket, pool);
                if g.bucket != bucket || !g.covers_listing(prefix) {
                    return Err(Status::permission_denied(format!(
                        "this share link lists only within {} in bucket {:?}; ask for a listing \
                         under that prefix",
                        describe(g),
                        g.bucket
                    )));
                }
                self.grant_pool(g, pool)
            }
            None => self.authorize(bucket, pool),
        }
    }

    /// The grant this caller holds, if it came with a share link.
    pub fn share_grant(&self) -> Option<&Grant> {
        self.grant.as_ref()
    }

    /// The access key and its secret's hash, for signing share grants of the caller's
    /// bucket: only a caller that presented its bucket's key may create or revoke links.
    pub fn signing_key(&self, bucket: &str) -> Result<(String, [u8; 32]), Status> {
        let Some(id) = &self.key else {
            return Err(Status::unauthenticated(format!(
                "creating, listing or revoking share links needs the bucket's key: {HOW_TO_SEND}"
            )));
        };
        let mut pool = String::new();
        self.authorize(bucket, &mut pool)?;
        let key = self.index.keys.get(id).ok_or_else(|| {
            Status::unauthenticated(format!("access key id {id:?} is no longer granted"))
        })?;
        Ok((id.clone(), *key.secret_blake3.as_bytes()))
    }

    fn fill_pool(&self, bucket: &str, pool: &mut String) {
        if pool.is_empty() {
            if let Some(bound) = self.index.pools.get(bucket) {
                pool.clone_from(bound);
            }
        }
    }

    fn grant_pool(&self, g: &Grant, pool: &str) -> Result<(), Status> {
        let bound = self.index.pools.get(&g.bucket);
        if bound.map(String::as_str) != Some(validate::pool_name(pool)) {
            return Err(Status::permission_denied(format!(
                "bucket {:?} of this share link is in pool {:?}; leave the pool empty",
                g.bucket,
                bound.map(String::as_str).unwrap_or("(none)")
            )));
        }
        Ok(())
    }

    /// Whether the caller may use `bucket` in `pool`. An empty `pool` becomes the pool the
    /// bucket is bound to, when it has one, so that clients need not know it. A share link
    /// opens nothing here: writes, deletes and whole-bucket calls need a key.
    pub fn authorize(&self, bucket: &str, pool: &mut String) -> Result<(), Status> {
        if self.grant.is_some() {
            return Err(Status::permission_denied(
                "a share link only reads what it names; this call needs the bucket's key",
            ));
        }
        if pool.is_empty() {
            if let Some(bound) = self.index.pools.get(bucket) {
                pool.clone_from(bound);
            }
        }
        let Some(id) = &self.key else {
            return Ok(());
        };
        let Some(key) = self.index.keys.get(id) else {
            return Err(Status::unauthenticated(format!(
                "access key id {id:?} is no longer granted"
            )));
        };
        if key.bucket != bucket {
            return Err(Status::permission_denied(format!(
                "access key {id:?} does not open bucket {bucket:?}; use the credentials of that \
                 bucket's Secret"
            )));
        }
        let asked = validate::pool_name(pool);
        if asked != key.pool {
            return Err(Status::permission_denied(format!(
                "bucket {bucket:?} is in pool {:?}, not {asked:?}; leave the pool empty or name \
                 {:?}",
                key.pool, key.pool
            )));
        }
        Ok(())
    }
}

fn describe(g: &Grant) -> String {
    if g.prefix {
        format!("keys under {:?}", g.path)
    } else {
        format!("object {:?}", g.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    const SECRET_A: &str = "secret-of-bucket-a-0123456789abcdefghij";

    fn map(epoch: u64, require_auth: bool) -> pb::ClusterMap {
        let access = |name: &str, pool: &str, id: &str, secret: &str| pb::BucketAccess {
            name: name.into(),
            pool: pool.into(),
            keys: vec![pb::AccessKey {
                id: id.into(),
                secret_blake3: blake3::hash(secret.as_bytes()).as_bytes().to_vec().into(),
            }],
        };
        pb::ClusterMap {
            epoch,
            require_auth,
            buckets: vec![
                access("bucket-a", "default", "pk-a", SECRET_A),
                access(
                    "bucket-b",
                    "fast",
                    "pk-b",
                    "secret-of-bucket-b-0123456789abcdefghij",
                ),
            ],
            ..Default::default()
        }
    }

    fn view(map: pb::ClusterMap) -> MapView {
        MapView::new(map).unwrap()
    }

    fn with(value: Option<&str>) -> MetadataMap {
        let mut md = MetadataMap::new();
        if let Some(v) = value {
            md.insert(METADATA_KEY, v.parse().unwrap());
        }
        md
    }

    fn bearer(id: &str, secret: &str) -> MetadataMap {
        with(Some(&format!("Bearer {id}:{secret}")))
    }

    fn check(
        auth: &Authenticator,
        view: &MapView,
        md: &MetadataMap,
        bucket: &str,
        pool: &str,
    ) -> Result<String, Status> {
        let caller = auth.authenticate(view, md)?;
        let mut pool = pool.to_owned();
        caller.authorize(bucket, &mut pool)?;
        Ok(pool)
    }

    #[test]
    fn a_key_opens_its_bucket_in_its_pool_only() {
        let auth = Authenticator::new();
        let v = view(map(3, true));
        let a = bearer("pk-a", SECRET_A);
        assert_eq!(check(&auth, &v, &a, "bucket-a", "").unwrap(), "default");
        assert_eq!(
            check(&auth, &v, &a, "bucket-a", "default").unwrap(),
            "default"
        );

        let other = check(&auth, &v, &a, "bucket-b", "").unwrap_err();
        assert_eq!(other.code(), Code::PermissionDenied);
        assert!(
            other.message().contains("\"bucket-b\""),
            "{}",
            other.message()
        );
        let unregistered = check(&auth, &v, &a, "loose", "").unwrap_err();
        assert_eq!(unregistered.code(), Code::PermissionDenied);
        let wrong_pool = check(&auth, &v, &a, "bucket-a", "fast").unwrap_err();
        assert_eq!(wrong_pool.code(), Code::PermissionDenied);
        assert!(wrong_pool.message().contains("is in pool \"default\""));
    }

    #[test]
    fn missing_unknown_wrong_or_malformed_credentials_are_unauthenticated() {
        let auth = Authenticator::new();
        let v = view(map(3, true));
        let cases = [
            (with(None), "carried none"),
            (bearer("pk-a", "not-the-secret"), "wrong secret"),
            (bearer("pk-a", &SECRET_A[1..]), "wrong secret"),
            (bearer("pk-zzz", SECRET_A), "not known"),
            (with(Some(&format!("Basic pk-a:{SECRET_A}"))), "not `Bearer"),
            (with(Some("Bearer pk-a")), "not `Bearer"),
            (with(Some("Bearer")), "not `Bearer"),
        ];
        for (md, says) in cases {
            let err = check(&auth, &v, &md, "bucket-a", "").unwrap_err();
            assert_eq!(err.code(), Code::Unauthenticated, "{md:?}");
            assert!(err.message().contains(says), "{md:?}: {}", err.message());
            assert!(
                err.message().contains("authorization: Bearer"),
                "says what to send: {}",
                err.message()
            );
            assert!(!err.message().contains(SECRET_A), "echoes the secret");
        }
        // The scheme is case-insensitive, as in HTTP.
        assert!(check(
            &auth,
            &v,
            &with(Some(&format!("bearer pk-a:{SECRET_A}"))),
            "bucket-a",
            ""
        )
        .is_ok());
    }

    #[test]
    fn without_require_auth_anonymous_calls_pass_but_sent_keys_are_checked() {
        let auth = Authenticator::new();
        let v = view(map(3, false));
        // Anonymous: any bucket, any pool; a bound bucket's pool fills an empty one.
        assert_eq!(
            check(&auth, &v, &with(None), "bucket-b", "").unwrap(),
            "fast"
        );
        assert_eq!(check(&auth, &v, &with(None), "loose", "").unwrap(), "");
        assert_eq!(
            check(&auth, &v, &with(None), "bucket-a", "fast").unwrap(),
            "fast"
        );
        let wrong = check(&auth, &v, &bearer("pk-a", "nope"), "bucket-a", "").unwrap_err();
        assert_eq!(wrong.code(), Code::Unauthenticated);
        let other = check(&auth, &v, &bearer("pk-a", SECRET_A), "bucket-b", "").unwrap_err();
        assert_eq!(other.code(), Code::PermissionDenied);
    }

    #[test]
    fn a_new_epoch_takes_keys_away() {
        let auth = Authenticator::new();
        let a = bearer("pk-a", SECRET_A);
        assert!(check(&auth, &view(map(3, true)), &a, "bucket-a", "").is_ok());
        let mut without_a = map(4, true);
        without_a.buckets.remove(0);
        let err = check(&auth, &view(without_a), &a, "bucket-a", "").unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
        // A map from before buckets existed: nothing required, nothing granted.
        let empty = view(pb::ClusterMap {
            epoch: 5,
            ..Default::default()
        });
        assert!(check(&auth, &empty, &with(None), "bucket-a", "").is_ok());
        assert_eq!(
            check(&auth, &empty, &a, "bucket-a", "").unwrap_err().code(),
            Code::Unauthenticated
        );
    }

    fn share_token(path: &str, prefix: bool, expires_unix: u64) -> (Grant, String) {
        let g = Grant {
            id: [5; 16],
            bucket: "bucket-a".into(),
            access_key_id: "pk-a".into(),
            path: path.into(),
            prefix,
            expires_unix,
        };
        let token = g
            .sign(blake3::hash(SECRET_A.as_bytes()).as_bytes())
            .unwrap();
        (g, token)
    }

    fn share(token: &str) -> MetadataMap {
        with(Some(&format!("Share {token}")))
    }

    #[test]
    fn a_share_token_reads_what_it_grants_and_nothing_else() {
        let auth = Authenticator::new();
        let v = view(map(3, true));
        let (_, token) = share_token("docs/a.txt", false, now_unix() + 60);
        let caller = auth.authenticate(&v, &share(&token)).unwrap();
        let mut pool = String::new();
        caller
            .authorize_read("bucket-a", "docs/a.txt", &mut pool)
            .unwrap();
        assert_eq!(pool, "default");
        let denied =
            |r: Result<(), Status>| assert_eq!(r.unwrap_err().code(), Code::PermissionDenied);
        denied(caller.authorize_read("bucket-a", "docs/b.txt", &mut String::new()));
        denied(caller.authorize_read("bucket-b", "docs/a.txt", &mut String::new()));
        denied(caller.authorize_read("bucket-a", "docs/a.txt", &mut "fast".to_owned()));
        denied(caller.authorize_list("bucket-a", "docs/", &mut String::new()));
        // Puts, deletes and share management need a key.
        denied(caller.authorize("bucket-a", &mut String::new()));
        assert_eq!(
            caller.signing_key("bucket-a").unwrap_err().code(),
            Code::Unauthenticated
        );

        let (_, folder) = share_token("docs/", true, now_unix() + 60);
        let caller = auth.authenticate(&v, &share(&folder)).unwrap();
        caller
            .authorize_read("bucket-a", "docs/deep/x", &mut String::new())
            .unwrap();
        caller
            .authorize_list("bucket-a", "docs/deep/", &mut String::new())
            .unwrap();
        denied(caller.authorize_list("bucket-a", "", &mut String::new()));
        denied(caller.authorize_read("bucket-a", "other", &mut String::new()));
    }

    #[test]
    fn expired_revoked_tampered_foreign_and_malformed_tokens_are_refused() {
        let auth = Authenticator::new();
        let v = view(map(3, true));
        let refused = |md: MetadataMap, code: Code, says: &str| {
            let err = auth.authenticate(&v, &md).err().expect("refused");
            assert_eq!(err.code(), code, "{}", err.message());
            assert!(err.message().contains(says), "{}", err.message());
        };
        let (_, expired) = share_token("a", false, now_unix() - 5);
        refused(
            share(&expired),
            Code::PermissionDenied,
            "expired at unix time",
        );
        let (g, token) = share_token("a", false, now_unix() + 60);
        let foreign = g.sign(&[1; 32]).unwrap();
        refused(
            share(&foreign),
            Code::PermissionDenied,
            "signature does not match",
        );
        let stranger = Grant {
            access_key_id: "pk-elsewhere".into(),
            ..g.clone()
        }
        .sign(&[1; 32])
        .unwrap();
        refused(share(&stranger), Code::PermissionDenied, "another fleet");
        // A token claiming another bucket than its key opens.
        let other_bucket = Grant {
            bucket: "bucket-b".into(),
            ..g.clone()
        }
        .sign(blake3::hash(SECRET_A.as_bytes()).as_bytes())
        .unwrap();
        refused(share(&other_bucket), Code::PermissionDenied, "signature");
        refused(
            share("pl1.nonsense"),
            Code::Unauthenticated,
            "not a share token",
        );
        refused(
            share(&token[..token.len() - 2]),
            Code::Unauthenticated,
            "not a share token",
        );

        // Revoked in the next map.
        let mut m = map(4, true);
        m.revoked_shares.push(pb::RevokedShare {
            id: g.id.to_vec().into(),
            bucket: "bucket-a".into(),
            expires_unix: g.expires_unix,
        });
        let err = auth
            .authenticate(&view(m), &share(&token))
            .err()
            .expect("revoked");
        assert_eq!(err.code(), Code::PermissionDenied);
        assert!(err.message().contains("was revoked"), "{}", err.message());
        // And through the HTTP path's check.
        assert!(auth.grant(&v, &token).is_ok());
    }

    #[test]
    fn a_key_id_or_name_granted_twice_opens_nothing() {
        let auth = Authenticator::new();
        let mut m = map(3, true);
        let mut dup = m.buckets[0].clone();
        dup.name = "bucket-c".into();
        m.buckets.push(dup);
        let err = check(&auth, &view(m), &bearer("pk-a", SECRET_A), "bucket-a", "").unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
    }
}
