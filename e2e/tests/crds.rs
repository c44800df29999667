//! `deploy/crds.yaml`, generated from the Rust types in `api/`, on a real
//! kube-apiserver: it applies, the API server enforces its validation (k ≥ 1,
//! power-of-two PG counts, immutable k and m, endpoint shape), and
//! `kubectl get` shows the printer columns and short names.

use potluck_e2e::control_plane::{repo_root, table_row, text, ControlPlane};

fn pool(name: &str, k: u32, m: u32, pgs: u32) -> String {
    format!(
        "apiVersion: potluck.dev/v1alpha1\nkind: StoragePool\nmetadata:\n  name: {name}\nspec:\n  k: {k}\n  m: {m}\n  pgCount: {pgs}\n"
    )
}

fn node(name: &str, endpoint: &str) -> String {
    format!(
        "apiVersion: potluck.dev/v1alpha1\nkind: StorageNode\nmetadata:\n  name: {name}\nspec:\n  endpoint: \"{endpoint}\"\n  capacityBytes: 1073741824\n  failureDomain: host-a\n"
    )
}

#[test]
fn generated_crds_apply_and_the_api_server_enforces_their_rules() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cp = ControlPlane::start(dir.path());
    cp.install_crds();
    let crds = repo_root().join("deploy/crds.yaml");
    let crds = crds.to_str().expect("utf-8 path");
    // Server-side dry run of the same file is clean too.
    cp.kubectl_ok(&["apply", "--dry-run=server", "-f", crds], None);

    // A valid pool lands, with its defaults filled in by the API server.
    cp.kubectl_ok(&["apply", "-f", "-"], Some(&pool("photos", 4, 2, 128)));
    let chunk = cp.kubectl_ok(
        &[
            "get",
            "storagepool",
            "photos",
            "-o",
            "jsonpath={.spec.chunkSize} {.spec.outAfter}",
        ],
        None,
    );
    assert_eq!(chunk.trim(), "1048576 5m", "defaults from the Rust types");

    // Refused by the schema or by CEL, each with a message that says what to do.
    let refused = |yaml: &str, says: &str| {
        let out = cp.kubectl(&["apply", "-f", "-"], Some(yaml));
        let err = text(&out.stderr);
        assert!(!out.status.success(), "must be refused: {yaml}");
        assert!(err.contains(says), "error {err:?} should mention {says:?}");
    };
    refused(&pool("zero", 0, 2, 128), "greater than or equal to 1");
    refused(&pool("odd-pgs", 4, 2, 100), "power of two");
    refused(&pool("too-wide", 30, 3, 128), "at most 32");
    refused(&pool("photos", 5, 2, 128), "k cannot change");
    refused(&pool("photos", 4, 3, 128), "m cannot change");
    refused(&node("bad-endpoint", "no port here"), "host:port");
    cp.kubectl_ok(
        &["apply", "-f", "-"],
        Some(&node("member-a", "127.0.0.1:7100")),
    );

    // The status subresource takes what the operator will write, and the
    // printer columns and short names show it.
    cp.kubectl_ok(
        &[
            "patch",
            "storagepool",
            "photos",
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"members":6,"usedBytes":1000,"capacityBytes":60000,"health":"Healthy","mapEpoch":7,"healEtaSeconds":42}}"#,
        ],
        None,
    );
    let table = cp.kubectl_ok(&["get", "spool"], None);
    let header = table_row(&table, 0);
    assert_eq!(
        header,
        ["NAME", "K", "M", "MEMBERS", "USED", "CAPACITY", "HEALTH", "ETA", "EPOCH", "AGE"],
        "{table}"
    );
    let row = table_row(&table, 1);
    assert_eq!(
        &row[..9],
        ["photos", "4", "2", "6", "1000", "60000", "Healthy", "42", "7"],
        "{table}"
    );
    let nodes = cp.kubectl_ok(&["get", "snode"], None);
    assert!(
        nodes.contains("member-a") && nodes.contains("127.0.0.1:7100"),
        "{nodes}"
    );
}
