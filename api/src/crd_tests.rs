//! The generated CRDs: the committed file is up to date, its YAML reads back as written, and
//! the CEL rules in it refuse what `StoragePoolSpec::validate` refuses, with the same advice.
//!
//! CEL rules are run here client-side by `kube-cel`, which evaluates `x-kubernetes-validations`
//! (after applying schema defaults, as the API server does) but not the plain OpenAPI keywords
//! (`minimum`, `maxLength`, `enum`); those are checked below by reading the schema. The e2e
//! tests against a real kube-apiserver are the final word on both.

use std::path::Path;

use serde_json::{json, Value};

use crate::pool::{MAX_CHUNK_SIZE, MAX_PG_COUNT, MAX_SHARDS, MIN_CHUNK_SIZE};
use crate::{
    crds, crds_yaml, StorageNode, StoragePool, StoragePoolSpec, CRDGEN_COMMAND, GROUP, VERSION,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

#[test]
fn committed_crds_match_the_types() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/crds.yaml");
    let generated = crds_yaml().unwrap();
    let committed = std::fs::read_to_string(&path).unwrap_or_else(|err| {
        panic!(
            "cannot read {}: {err}; generate it with `{CRDGEN_COMMAND}`",
            path.display()
        )
    });
    if committed != generated {
        let first_difference = committed
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| committed.lines().count().min(generated.lines().count()));
        panic!(
            "deploy/crds.yaml is out of date with the Rust types in api/ (first difference at \
             line {}); regenerate it from the workspace root with `{CRDGEN_COMMAND}` and commit it",
            first_difference + 1
        );
    }
}

#[test]
fn yaml_reads_back_as_the_crds() {
    let yaml = crds_yaml().unwrap();
    let docs: Vec<Value> = serde_saphyr::from_str_multiple(&yaml).unwrap();
    let want: Vec<Value> = crds()
        .iter()
        .map(|crd| serde_json::to_value(crd).unwrap())
        .collect();
    assert_eq!(docs, want);
}

fn schema_of(crd: &CustomResourceDefinition) -> Value {
    let schema = crd.spec.versions[0].schema.as_ref().unwrap();
    serde_json::to_value(schema.open_api_v3_schema.as_ref().unwrap()).unwrap()
}

#[test]
fn crds_are_cluster_scoped_with_status_short_names_and_columns() {
    for (crd, short, columns) in [
        (
            StoragePool::crd(),
            "spool",
            vec![
                "K", "M", "Members", "Used", "Capacity", "Health", "ETA", "Epoch", "Age",
            ],
        ),
        (
            StorageNode::crd(),
            "snode",
            vec!["Phase", "Endpoint", "Domain", "Used", "Capacity", "Age"],
        ),
    ] {
        assert_eq!(crd.spec.group, GROUP);
        assert_eq!(crd.spec.scope, "Cluster");
        assert_eq!(
            crd.spec.names.short_names.as_deref(),
            Some(&[short.to_owned()][..])
        );
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, VERSION);
        assert!(version.served && version.storage);
        assert!(version.subresources.as_ref().unwrap().status.is_some());
        let shown: Vec<&str> = version
            .additional_printer_columns
            .as_ref()
            .unwrap()
            .iter()
            .filter(|c| c.priority.unwrap_or(0) == 0)
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(shown, columns, "{}", crd.spec.names.kind);
    }
}

#[test]
fn pool_schema_bounds_and_defaults() {
    let schema = schema_of(&StoragePool::crd());
    let spec = &schema["properties"]["spec"]["properties"];
    for field in ["k", "m"] {
        assert_eq!(spec[field]["minimum"], json!(1.0), "{field}");
        assert_eq!(
            spec[field]["maximum"],
            json!(f64::from(MAX_SHARDS - 1)),
            "{field}"
        );
    }
    assert_eq!(spec["chunkSize"]["minimum"], json!(MIN_CHUNK_SIZE as f64));
    assert_eq!(spec["chunkSize"]["maximum"], json!(MAX_CHUNK_SIZE as f64));
    assert_eq!(spec["pgCount"]["maximum"], json!(f64::from(MAX_PG_COUNT)));
    assert_eq!(spec["chunkSize"]["default"], json!(1 << 20));
    assert_eq!(spec["pgCount"]["default"], json!(128));
    assert_eq!(
        spec["failureDomainKey"]["default"],
        json!("kubernetes.io/hostname")
    );
    assert_eq!(spec["downAfter"]["default"], json!("30s"));
    assert_eq!(spec["outAfter"]["default"], json!("5m"));
    assert!(spec["writeQuorum"].get("default").is_none());
    assert_eq!(
        schema["properties"]["spec"]["required"],
        json!(["k", "m"]),
        "only k and m must be given"
    );
    let health = &schema["properties"]["status"]["properties"]["health"]["enum"];
    assert_eq!(
        health,
        &json!(["Pending", "Healthy", "Degraded", "Unavailable"])
    );
    let conditions = &schema["properties"]["status"]["properties"]["conditions"];
    assert_eq!(conditions["x-kubernetes-list-type"], "map");
    assert_eq!(conditions["x-kubernetes-list-map-keys"], json!(["type"]));
}

#[test]
fn node_schema_bounds_and_defaults() {
    let schema = schema_of(&StorageNode::crd());
    let spec = &schema["properties"]["spec"]["properties"];
    assert_eq!(spec["drain"]["default"], json!(false));
    assert_eq!(spec["capacityBytes"]["minimum"], json!(0.0));
    assert_eq!(spec["failureDomain"]["minLength"], json!(1));
    let phases = &schema["properties"]["status"]["properties"]["phase"]["enum"];
    assert_eq!(
        phases,
        &json!(["Joining", "Up", "Down", "Out", "Draining", "Drained"])
    );
}

// ---- CEL, evaluated client-side ----

fn pool(spec: Value) -> Value {
    json!({
        "apiVersion": "potluck.dev/v1alpha1",
        "kind": "StoragePool",
        "metadata": {"name": "p"},
        "spec": spec,
    })
}

/// The messages of the rules that refuse `object` (after `old`, for an update).
fn pool_errors(object: &Value, old: Option<&Value>) -> Vec<(String, String)> {
    let schema = schema_of(&StoragePool::crd());
    match kube_cel::validate(&schema, object, old) {
        Ok(()) => vec![],
        Err(errors) => errors
            .iter()
            .map(|e| (e.field_path.clone(), e.message.clone()))
            .collect(),
    }
}

fn assert_refused(spec: Value, path: &str, advice: &str) {
    let errors = pool_errors(&pool(spec.clone()), None);
    assert!(
        errors.iter().any(|(p, m)| p == path && m.contains(advice)),
        "{spec}: want {path}: ..{advice}.., got {errors:?}"
    );
}

#[test]
fn cel_accepts_a_minimal_pool_once_defaulted() {
    assert_eq!(pool_errors(&pool(json!({"k": 4, "m": 2})), None), vec![]);
    assert_eq!(
        pool_errors(
            &pool(json!({
                "k": 10, "m": 4, "chunkSize": 4096, "pgCount": 65536, "writeQuorum": 14,
                "downAfter": "1m30s", "outAfter": "2h",
                "memberSelector": {"matchLabels": {"potluck.dev/pool": "p"}}
            })),
            None
        ),
        vec![]
    );
}

#[test]
fn cel_bounds_the_pool_name() {
    let mut object = pool(json!({"k": 2, "m": 1}));
    object["metadata"]["name"] = json!("p".repeat(63));
    assert_eq!(pool_errors(&object, None), vec![]);
    object["metadata"]["name"] = json!("p".repeat(64));
    let errors = pool_errors(&object, None);
    assert!(
        errors
            .iter()
            .any(|(_, m)| m.contains("choose a shorter name")),
        "{errors:?}"
    );
}

#[test]
fn cel_bounds_k_plus_m() {
    assert_refused(json!({"k": 31, "m": 2}), "spec", "k+m must be at most 32");
    assert_eq!(pool_errors(&pool(json!({"k": 16, "m": 16})), None), vec![]);
}

#[test]
fn cel_wants_pg_count_a_power_of_two() {
    for bad in [3, 100, 1000, 65535] {
        assert_refused(
            json!({"k": 2, "m": 1, "pgCount": bad}),
            "spec.pgCount",
            "power of two",
        );
    }
    for good in [1, 2, 128, 4096, 65536] {
        assert_eq!(
            pool_errors(&pool(json!({"k": 2, "m": 1, "pgCount": good})), None),
            vec![]
        );
    }
}

#[test]
fn cel_wants_chunk_size_aligned() {
    assert_refused(
        json!({"k": 2, "m": 1, "chunkSize": 1_048_500}),
        "spec.chunkSize",
        "multiple of 64 bytes",
    );
}

#[test]
fn cel_bounds_write_quorum_by_k_and_k_plus_m() {
    for bad in [3, 7] {
        assert_refused(
            json!({"k": 4, "m": 2, "writeQuorum": bad}),
            "spec.writeQuorum",
            "between k and k+m",
        );
    }
    for good in [4, 5, 6] {
        assert_eq!(
            pool_errors(&pool(json!({"k": 4, "m": 2, "writeQuorum": good})), None),
            vec![]
        );
    }
}

#[test]
fn cel_reads_durations_as_the_operator_does() {
    for bad in ["30", "1.5m", "5 m", "3d", "-5s", "10us", "500ms"] {
        assert_refused(
            json!({"k": 2, "m": 1, "downAfter": bad, "outAfter": "10m"}),
            "spec.downAfter",
            "such as 30s, 5m or 1m30s",
        );
    }
    assert_refused(
        json!({"k": 2, "m": 1, "downAfter": "5m", "outAfter": "5m"}),
        "spec.outAfter",
        "outAfter must be longer than downAfter",
    );
    assert_refused(
        json!({"k": 2, "m": 1, "downAfter": "10m"}),
        "spec.outAfter",
        "raise outAfter or lower downAfter",
    );
    // A malformed duration is reported once, by its own rule, not again by the ordering rule.
    let errors = pool_errors(&pool(json!({"k": 2, "m": 1, "outAfter": "soon"})), None);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].0, "spec.outAfter");
    assert!(
        errors[0].1.starts_with("outAfter must be a duration"),
        "{errors:?}"
    );
}

#[test]
fn cel_keeps_k_and_m_fixed_but_lets_the_rest_change() {
    let old = pool(json!({"k": 4, "m": 2}));
    for (field, new) in [
        ("k", json!({"k": 5, "m": 2})),
        ("m", json!({"k": 4, "m": 3})),
    ] {
        let errors = pool_errors(&pool(new), Some(&old));
        assert!(
            errors.iter().any(|(p, m)| p == &format!("spec.{field}")
                && m.contains(&format!("{field} cannot change after the pool is created"))
                && m.contains("create a new StoragePool")),
            "{errors:?}"
        );
    }
    let grown =
        pool(json!({"k": 4, "m": 2, "pgCount": 256, "chunkSize": 4 << 20, "outAfter": "1h"}));
    assert_eq!(pool_errors(&grown, Some(&old)), vec![]);
}

#[test]
fn cel_checks_node_endpoints() {
    let schema = schema_of(&StorageNode::crd());
    let node = |endpoint: &str| {
        json!({
            "apiVersion": "potluck.dev/v1alpha1",
            "kind": "StorageNode",
            "metadata": {"name": "n1"},
            "spec": {"endpoint": endpoint, "capacityBytes": 1, "failureDomain": "n1"},
        })
    };
    for good in [
        "10.0.0.5:7000",
        "node-1.example:7000",
        "[fd00::5]:7000",
        "localhost:1",
    ] {
        assert!(
            kube_cel::validate(&schema, &node(good), None).is_ok(),
            "{good}"
        );
    }
    for bad in [
        "10.0.0.5",
        "http://10.0.0.5:7000",
        ":7000",
        "fd00::5:7000",
        "a b:1",
    ] {
        let errors = kube_cel::validate(&schema, &node(bad), None).unwrap_err();
        assert!(
            errors[0].message.contains("endpoint must be host:port"),
            "{bad}: {errors:?}"
        );
    }
}

/// The operator's check and the API server's rules agree on every spec within the schema's
/// plain bounds, so a pool the API server took is never refused by the operator, and the
/// other way round.
#[test]
fn cel_and_validate_agree() {
    let mut specs = Vec::new();
    for (k, m) in [(1, 1), (4, 2), (16, 16), (20, 13), (31, 1)] {
        for quorum in [None, Some(k - 1), Some(k), Some(k + m), Some(k + m + 1)] {
            for (down, out) in [
                ("30s", "5m"),
                ("1s", "2s"),
                ("5m", "5m"),
                ("1h", "30m"),
                ("x", "5m"),
            ] {
                for (chunk, pgs) in [(1 << 20, 128), (4096, 1), (4100, 128), (1 << 20, 96)] {
                    specs.push(StoragePoolSpec {
                        chunk_size: chunk,
                        pg_count: pgs,
                        write_quorum: quorum.filter(|q| (1..=MAX_SHARDS).contains(q)),
                        down_after: down.into(),
                        out_after: out.into(),
                        ..StoragePoolSpec::with_defaults(k, m)
                    });
                }
            }
        }
    }
    let schema = schema_of(&StoragePool::crd());
    let compiled = kube_cel::compile_schema(&schema);
    assert!(
        !compiled.has_errors(),
        "{:?}",
        compiled.compilation_errors()
    );
    for spec in specs {
        let object = pool(serde_json::to_value(&spec).unwrap());
        let cel = kube_cel::validate_compiled(&compiled, &object, None);
        assert_eq!(
            cel.is_ok(),
            spec.validate().is_ok(),
            "{spec:?}: CEL says {cel:?}, validate says {:?}",
            spec.validate()
        );
    }
}

// ---- Bucket ----

fn bucket_object(name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "potluck.dev/v1alpha1",
        "kind": "Bucket",
        "metadata": {"name": name, "namespace": "team-a"},
        "spec": spec,
    })
}

fn bucket_errors(object: &Value, old: Option<&Value>) -> Vec<String> {
    let schema = schema_of(&crate::Bucket::crd());
    match kube_cel::validate(&schema, object, old) {
        Ok(()) => vec![],
        Err(errors) => errors
            .iter()
            .map(|e| format!("{}: {}", e.field_path, e.message))
            .collect(),
    }
}

#[test]
fn bucket_crd_is_namespaced_with_status_and_columns() {
    let crd = crate::Bucket::crd();
    assert_eq!(crd.spec.group, GROUP);
    assert_eq!(crd.spec.scope, "Namespaced");
    assert_eq!(
        crd.spec.names.short_names.as_deref(),
        Some(&["pbucket".to_owned()][..])
    );
    let version = &crd.spec.versions[0];
    assert_eq!(version.name, VERSION);
    assert!(version.subresources.as_ref().unwrap().status.is_some());
    let shown: Vec<&str> = version
        .additional_printer_columns
        .as_ref()
        .unwrap()
        .iter()
        .filter(|c| c.priority.unwrap_or(0) == 0)
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(
        shown,
        ["Bucket", "Pool", "Ready", "Reason", "Secret", "Age"]
    );
    let schema = schema_of(&crd);
    assert_eq!(schema["properties"]["spec"]["required"], json!(["pool"]));
}

#[test]
fn bucket_cel_checks_names_the_way_agents_do() {
    assert_eq!(
        bucket_errors(&bucket_object("photos", json!({"pool": "default"})), None),
        Vec::<String>::new()
    );
    assert_eq!(
        bucket_errors(
            &bucket_object(
                "x",
                json!({"pool": "default", "bucketName": "team-a.photos", "secretName": "keys"})
            ),
            None
        ),
        Vec::<String>::new()
    );
    for bad in ["Photos", "-abc", "abc-", "a..b", "a_b"] {
        let errors = bucket_errors(
            &bucket_object("x", json!({"pool": "p", "bucketName": bad})),
            None,
        );
        assert!(
            errors.iter().any(|e| e.contains("bucketName must be 3-63")),
            "{bad}: {errors:?}"
        );
    }
    // The Bucket's own name stands in for bucketName, so it must be long enough.
    let errors = bucket_errors(&bucket_object("ab", json!({"pool": "p"})), None);
    assert!(
        errors.iter().any(|e| e.contains("set spec.bucketName")),
        "{errors:?}"
    );
    let errors = bucket_errors(
        &bucket_object("x", json!({"pool": "p", "secretName": "Bad_Name"})),
        None,
    );
    assert!(
        errors.iter().any(|e| e.contains("valid Secret name")),
        "{errors:?}"
    );
}

#[test]
fn bucket_pool_and_name_are_fixed_at_creation() {
    let old = bucket_object("photos", json!({"pool": "default"}));
    let moved = bucket_object("photos", json!({"pool": "other"}));
    let errors = bucket_errors(&moved, Some(&old));
    assert!(
        errors.iter().any(|e| e.contains("pool cannot change")),
        "{errors:?}"
    );
    let renamed = bucket_object("photos", json!({"pool": "default", "bucketName": "pics"}));
    let errors = bucket_errors(&renamed, Some(&old));
    assert!(
        errors
            .iter()
            .any(|e| e.contains("bucketName cannot change")),
        "{errors:?}"
    );
    let rekeyed = bucket_object("photos", json!({"pool": "default", "secretName": "other"}));
    assert_eq!(bucket_errors(&rekeyed, Some(&old)), Vec::<String>::new());
}
