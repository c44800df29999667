//! The project's local Kubernetes control plane (`scripts/control-plane.sh`):
//! a real etcd + kube-apiserver start on loopback, serve a CRD with a status
//! subresource and CEL validation, refuse what the CEL rules refuse, and stop.
//!
//! Needs the binaries from `scripts/control-plane.sh build` (run by
//! `scripts/setup.sh`) and `kubectl`; fails, never skips, without them.

use std::time::{Duration, Instant};

use potluck_e2e::control_plane::*;

const CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: gadgets.test.potluck.dev
spec:
  group: test.potluck.dev
  scope: Cluster
  names:
    plural: gadgets
    singular: gadget
    kind: Gadget
  versions:
    - name: v1alpha1
      served: true
      storage: true
      subresources:
        status: {}
      additionalPrinterColumns:
        - {name: K, type: integer, jsonPath: .spec.k}
        - {name: M, type: integer, jsonPath: .spec.m}
        - {name: Phase, type: string, jsonPath: .status.phase}
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              required: [k, m]
              properties:
                k:
                  type: integer
                  minimum: 1
                  x-kubernetes-validations:
                    - rule: "self == oldSelf"
                      message: "k is immutable"
                m:
                  type: integer
                  minimum: 1
              x-kubernetes-validations:
                - rule: "self.k + self.m <= 16"
                  message: "k + m must be at most 16"
            status:
              type: object
              properties:
                phase:
                  type: string
"#;

fn gadget(name: &str, k: u32, m: u32) -> String {
    format!(
        "apiVersion: test.potluck.dev/v1alpha1\nkind: Gadget\nmetadata:\n  name: {name}\nspec:\n  k: {k}\n  m: {m}\n"
    )
}

#[test]
fn control_plane_serves_crds_with_cel_validation_and_stops() {
    // Declared first so it is removed last, after the guard has stopped the
    // processes writing into it.
    let tmp = tempfile::Builder::new()
        .prefix("potluck-control-plane-")
        .tempdir()
        .expect("tempdir");
    let mut cp = ControlPlane::start(tmp.path());
    let pids = cp.pids();
    assert_eq!(pids.len(), 2, "etcd.pid and kube-apiserver.pid written");

    let kubeconfig = std::fs::read_to_string(&cp.kubeconfig).expect("kubeconfig");
    assert!(kubeconfig.contains("server: https://127.0.0.1:"));
    assert!(kubeconfig.contains("certificate-authority-data: "));
    assert!(!kubeconfig.contains("insecure-skip-tls-verify"));

    assert_eq!(
        cp.kubectl_ok(&["get", "--raw", "/readyz"], None).trim(),
        "ok"
    );
    let version = cp.kubectl_ok(&["get", "--raw", "/version"], None);
    assert!(
        version.contains("\"gitVersion\": \"v1."),
        "/version reports the release it was built from: {version}"
    );

    cp.kubectl_ok(&["apply", "-f", "-"], Some(CRD));
    cp.kubectl_ok(
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/gadgets.test.potluck.dev",
        ],
        None,
    );

    // kubectl may still hold discovery from before the CRD; retry briefly.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = cp.kubectl(&["apply", "-f", "-"], Some(&gadget("demo", 4, 2)));
        if out.status.success() {
            break;
        }
        let err = text(&out.stderr);
        assert!(
            err.contains("no matches for kind") && Instant::now() < deadline,
            "{}",
            describe("kubectl apply gadget demo", &out)
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // The status subresource exists and takes writes of its own.
    cp.kubectl_ok(
        &[
            "patch",
            "gadget",
            "demo",
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"phase":"Ready"}}"#,
        ],
        None,
    );
    assert_eq!(
        cp.kubectl_ok(
            &["get", "gadget", "demo", "-o", "jsonpath={.status.phase}"],
            None
        ),
        "Ready"
    );

    // Printer columns (with custom columns, AGE appears only if declared).
    let table = cp.kubectl_ok(&["get", "gadgets"], None);
    let header = table_row(&table, 0);
    assert_eq!(header, ["NAME", "K", "M", "PHASE"], "{table}");
    let row = table_row(&table, 1);
    assert_eq!(row, ["demo", "4", "2", "Ready"], "{table}");

    // CEL: a new object breaking the rule is refused, server-side dry run.
    let out = cp.kubectl(
        &["apply", "--dry-run=server", "-f", "-"],
        Some(&gadget("too-wide", 10, 10)),
    );
    let err = text(&out.stderr);
    assert!(
        !out.status.success() && err.contains("k + m must be at most 16"),
        "{}",
        describe("kubectl apply --dry-run=server (k+m=20)", &out)
    );
    // CEL transition rule: k cannot change after creation.
    let out = cp.kubectl(
        &["apply", "--dry-run=server", "-f", "-"],
        Some(&gadget("demo", 5, 2)),
    );
    assert!(
        !out.status.success() && text(&out.stderr).contains("k is immutable"),
        "{}",
        describe("kubectl apply --dry-run=server (k changed)", &out)
    );
    let out = cp.kubectl(&["get", "gadget", "too-wide"], None);
    assert!(
        !out.status.success() && text(&out.stderr).contains("NotFound"),
        "the refused object must not exist: {}",
        describe("kubectl get gadget too-wide", &out)
    );
    assert_eq!(
        cp.kubectl_ok(&["get", "gadget", "demo", "-o", "jsonpath={.spec.k}"], None),
        "4"
    );

    // Stop: both processes gone, pid files removed; stopping again is fine.
    let out = cp.stop();
    assert!(
        out.status.success(),
        "{}",
        describe("scripts/control-plane.sh stop", &out)
    );
    for pid in pids {
        assert!(!process_exists(pid), "pid {pid} still running after stop");
    }
    assert!(cp.pids().is_empty(), "pid files removed by stop");
    let out = cp.stop();
    assert!(
        out.status.success(),
        "{}",
        describe("second scripts/control-plane.sh stop", &out)
    );
}
