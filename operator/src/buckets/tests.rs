use super::*;
use http::{Request, Response};
use kube::client::Body;
use kube::Client;
use potluck_api::BucketSpec;

fn bucket(ns: &str, name: &str, pool: &str, created: i64) -> Bucket {
    let mut b = Bucket::new(
        name,
        BucketSpec {
            pool: pool.into(),
            bucket_name: None,
            secret_name: None,
        },
    );
    b.metadata.namespace = Some(ns.into());
    b.metadata.uid = Some(format!("uid-{ns}-{name}"));
    b.metadata.generation = Some(1);
    b.metadata.creation_timestamp = Some(Time(Timestamp::from_second(created).unwrap()));
    b
}

fn uid(b: &Bucket) -> String {
    b.metadata.uid.clone().unwrap()
}

fn material(id: &str) -> KeyMaterial {
    KeyMaterial {
        id: id.into(),
        secret_blake3: hash_secret(&format!("{id}-secret-of-forty-characters-or-so")),
    }
}

fn pools() -> BTreeSet<String> {
    BTreeSet::from(["default".to_owned()])
}

#[test]
fn granted_buckets_are_sorted_and_carry_only_the_hash() {
    let b = bucket("team-b", "zebra", "default", 2);
    let a = bucket("team-a", "apple", "default", 1);
    let resolved = Resolved::from([
        (uid(&a), Ok(material("pk-a"))),
        (uid(&b), Ok(material("pk-b"))),
    ]);
    let plan = plan(&[b.clone(), a.clone()], &pools(), &resolved, None);
    let names: Vec<&str> = plan.access.iter().map(|x| x.name.as_str()).collect();
    assert_eq!(names, ["apple", "zebra"]);
    assert_eq!(plan.access[0].pool, "default");
    assert_eq!(plan.access[0].keys[0].id, "pk-a");
    assert_eq!(
        plan.access[0].keys[0].secret_blake3.as_ref(),
        blake3::hash(b"pk-a-secret-of-forty-characters-or-so").as_bytes()
    );
    assert_eq!(
        plan.verdicts[&uid(&b)],
        Verdict::Granted {
            name: "zebra".into(),
            key_id: "pk-b".into()
        }
    );
}

#[test]
fn the_older_bucket_keeps_a_name_and_a_key_id() {
    let older = bucket("team-a", "photos", "default", 1);
    let newer = bucket("team-b", "photos", "default", 5);
    // Another name, but an admin copied team-a's key id into its Secret.
    let copycat = bucket("team-c", "other", "default", 6);
    let resolved = Resolved::from([
        (uid(&older), Ok(material("pk-a"))),
        (uid(&newer), Ok(material("pk-b"))),
        (uid(&copycat), Ok(material("pk-a"))),
    ]);
    let plan = plan(
        &[newer.clone(), copycat.clone(), older.clone()],
        &pools(),
        &resolved,
        None,
    );
    assert_eq!(plan.access.len(), 1);
    assert_eq!(plan.access[0].keys[0].id, "pk-a");
    let Verdict::Refused { reason, message } = &plan.verdicts[&uid(&newer)] else {
        panic!("newer bucket granted")
    };
    assert_eq!(*reason, REASON_NAME_TAKEN);
    assert!(message.contains("spec.bucketName"), "{message}");
    assert!(
        !message.contains("team-a"),
        "another tenant's namespace leaks: {message}"
    );
    assert!(matches!(
        &plan.verdicts[&uid(&copycat)],
        Verdict::Refused {
            reason: REASON_KEY_TAKEN,
            ..
        }
    ));
}

#[test]
fn missing_pools_bad_secrets_and_deleted_buckets_grant_nothing() {
    let lost = bucket("team-a", "lost", "nowhere", 1);
    let broken = bucket("team-a", "broken", "default", 2);
    let mut leaving = bucket("team-a", "leaving", "default", 3);
    leaving.metadata.deletion_timestamp = Some(Time(Timestamp::from_second(9).unwrap()));
    let resolved = Resolved::from([
        (uid(&lost), Ok(material("pk-l"))),
        (
            uid(&broken),
            Err(BucketError::MissingKey(SECRET_SECRET_ACCESS_KEY)),
        ),
        (uid(&leaving), Ok(material("pk-x"))),
    ]);
    let plan = plan(
        &[lost.clone(), broken.clone(), leaving.clone()],
        &pools(),
        &resolved,
        None,
    );
    assert!(plan.access.is_empty());
    let Verdict::Refused { reason, message } = &plan.verdicts[&uid(&lost)] else {
        panic!()
    };
    assert_eq!(*reason, REASON_POOL_NOT_FOUND);
    assert!(message.contains("\"nowhere\""), "{message}");
    let Verdict::Refused { reason, message } = &plan.verdicts[&uid(&broken)] else {
        panic!()
    };
    assert_eq!(*reason, REASON_INVALID_SECRET);
    assert!(message.contains("broken-credentials") && message.contains("secretAccessKey"));
    assert!(!plan.verdicts.contains_key(&uid(&leaving)));
}

#[test]
fn a_deleted_bucket_keeps_its_name_while_it_is_emptied() {
    let mut leaving = bucket("team-a", "alpha", "default", 1);
    leaving.metadata.deletion_timestamp = Some(Time(Timestamp::from_second(9).unwrap()));
    leaving.metadata.finalizers = Some(vec![crate::bucket_purge::FINALIZER.into()]);
    let mut next = bucket("team-b", "alpha", "default", 5);
    next.spec.bucket_name = Some("alpha".into());
    let resolved = Resolved::from([
        (uid(&leaving), Ok(material("pk-purge"))),
        (uid(&next), Ok(material("pk-next"))),
    ]);
    let plan = plan(&[next.clone(), leaving.clone()], &pools(), &resolved, None);
    assert_eq!(plan.access.len(), 1);
    assert_eq!(plan.access[0].keys[0].id, "pk-purge");
    let Verdict::Refused { reason, .. } = &plan.verdicts[&uid(&next)] else {
        panic!("the next claimant waits")
    };
    assert_eq!(*reason, REASON_NAME_TAKEN);
}

#[test]
fn an_unread_bucket_keeps_its_previous_grant() {
    let a = bucket("team-a", "photos", "default", 1);
    let before = plan(
        std::slice::from_ref(&a),
        &pools(),
        &Resolved::from([(uid(&a), Ok(material("pk-a")))]),
        None,
    );
    let previous = ClusterMap {
        epoch: 3,
        buckets: before.access.clone(),
        ..Default::default()
    };
    // A restarted operator has read no Secret yet.
    let after = plan(
        std::slice::from_ref(&a),
        &pools(),
        &Resolved::new(),
        Some(&previous),
    );
    assert_eq!(after.access, before.access);
    assert!(matches!(
        &after.verdicts[&uid(&a)],
        Verdict::Refused {
            reason: REASON_PENDING,
            ..
        }
    ));
    // Without a previous grant it waits with nothing.
    assert!(plan(&[a], &pools(), &Resolved::new(), None)
        .access
        .is_empty());
}

#[test]
fn status_is_ready_only_once_the_stored_map_grants_the_key() {
    let a = bucket("team-a", "photos", "default", 1);
    let verdict = Verdict::Granted {
        name: "photos".into(),
        key_id: "pk-a".into(),
    };
    let empty = ClusterMap {
        epoch: 4,
        ..Default::default()
    };
    let waiting = bucket_status(&a, Some(&verdict), Some(&empty), Some("pk-a"), now());
    assert!(!condition::is_true(&waiting.conditions, READY));
    assert_eq!(waiting.access_key_id.as_deref(), Some("pk-a"));
    assert_eq!(waiting.secret_name.as_deref(), Some("photos-credentials"));

    let granting = ClusterMap {
        epoch: 5,
        buckets: plan(
            std::slice::from_ref(&a),
            &pools(),
            &Resolved::from([(uid(&a), Ok(material("pk-a")))]),
            None,
        )
        .access,
        ..Default::default()
    };
    let ready = bucket_status(&a, Some(&verdict), Some(&granting), Some("pk-a"), now());
    assert!(condition::is_true(&ready.conditions, READY));
    assert_eq!(ready.map_epoch, 5);
    assert_eq!(ready.bucket_name.as_deref(), Some("photos"));

    // Later epochs keep the status as it is: no write per epoch.
    let mut a_ready = a.clone();
    a_ready.status = Some(ready.clone());
    let later = ClusterMap {
        epoch: 9,
        ..granting.clone()
    };
    assert_eq!(
        bucket_status(&a_ready, Some(&verdict), Some(&later), Some("pk-a"), now()),
        ready
    );
}

#[test]
fn generated_credentials_are_random_and_readable_back() {
    let (id1, secret1) = generate_credentials();
    let (id2, secret2) = generate_credentials();
    assert_ne!((&id1, &secret1), (&id2, &secret2));
    assert!(id1.starts_with("pk-") && id1.len() == 23, "{id1}");
    assert_eq!(secret1.len(), 43);
    let a = bucket("team-a", "photos", "default", 1);
    let secret = new_secret(&a, "photos-credentials");
    let material = read_secret(&secret).unwrap();
    let data = secret.data.as_ref().unwrap();
    let plain = String::from_utf8(data[SECRET_SECRET_ACCESS_KEY].0.clone()).unwrap();
    assert_eq!(material.secret_blake3, hash_secret(&plain));
    assert_eq!(data[SECRET_BUCKET].0, b"photos");
    assert_eq!(data[SECRET_POOL].0, b"default");
    let owner = &secret.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.controller),
        ("Bucket", Some(true))
    );
    assert_eq!(owner.uid, "uid-team-a-photos");
}

fn json(status: u16, body: serde_json::Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .body(Body::from(serde_json::to_vec(&body).unwrap()))
        .unwrap()
}

fn not_found() -> Response<Body> {
    json(
        404,
        serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
            "reason": "NotFound", "code": 404, "message": "not found"}),
    )
}

/// A missing Secret is created in the Bucket's namespace, owned by it; an existing one
/// (an admin's) is read and never written.
#[tokio::test]
async fn a_missing_secret_is_created_and_an_existing_one_used_as_is() {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let server = tokio::spawn(async move {
        let (req, send) = handle.next_request().await.expect("GET");
        assert_eq!(req.method(), "GET");
        assert_eq!(
            req.uri().path(),
            "/api/v1/namespaces/team-a/secrets/photos-credentials"
        );
        send.send_response(not_found());
        let (req, send) = handle.next_request().await.expect("POST");
        assert_eq!(req.method(), "POST");
        assert_eq!(req.uri().path(), "/api/v1/namespaces/team-a/secrets");
        let body = req.into_body().collect_bytes().await.unwrap();
        let created: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(created["metadata"]["ownerReferences"][0]["kind"], "Bucket");
        assert!(created["data"]["accessKeyId"].is_string());
        send.send_response(json(201, created));

        // The admin's Secret: read, no write follows.
        let (req, send) = handle.next_request().await.expect("GET");
        assert_eq!(req.method(), "GET");
        let admin = serde_json::json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "photos-credentials", "namespace": "team-a"},
            "stringData": {},
            "data": {
                "accessKeyId": base64::engine::general_purpose::STANDARD.encode("admin-key"),
                "secretAccessKey": base64::engine::general_purpose::STANDARD
                    .encode("an-admin-chosen-secret-of-40-characters!"),
            }
        });
        send.send_response(json(200, admin));
    });
    let a = bucket("team-a", "photos", "default", 1);
    let created = ensure_secret(&client, &a).await.unwrap().unwrap();
    assert!(created.id.starts_with("pk-"));
    let admin = ensure_secret(&client, &a).await.unwrap().unwrap();
    assert_eq!(admin.id, "admin-key");
    assert_eq!(
        admin.secret_blake3,
        hash_secret("an-admin-chosen-secret-of-40-characters!")
    );
    server.await.unwrap();
}
