//! The project's local Kubernetes control plane (`scripts/control-plane.sh`):
//! a real etcd + kube-apiserver start on loopback, serve a CRD with a status
//! subresource and CEL validation, refuse what the CEL rules refuse, and stop.
//!
//! Needs the binaries from `scripts/control-plane.sh build` (run by
//! `scripts/setup.sh`) and `kubectl`; fails, never skips, without them.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

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

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("repo root")
}

/// Where `scripts/control-plane.sh build` puts the binaries (same rules as
/// the script: POTLUCK_BIN_CACHE, else $POTLUCK_CACHE/bin, else
/// ~/.cache/potluck/bin).
fn bin_cache() -> PathBuf {
    if let Some(dir) = std::env::var_os("POTLUCK_BIN_CACHE") {
        return dir.into();
    }
    if let Some(cache) = std::env::var_os("POTLUCK_CACHE") {
        return PathBuf::from(cache).join("bin");
    }
    let home = std::env::var_os("HOME").expect("HOME is not set");
    PathBuf::from(home).join(".cache/potluck/bin")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn describe(what: &str, out: &Output) -> String {
    format!(
        "{what}: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    )
}

/// A control plane started by the script; stopped on drop, so a failing test
/// never leaves etcd or kube-apiserver running.
struct ControlPlane {
    script: PathBuf,
    dir: PathBuf,
    kubeconfig: PathBuf,
    stopped: bool,
}

impl ControlPlane {
    fn start(dir: &Path) -> ControlPlane {
        let root = repo_root();
        let script = root.join("scripts/control-plane.sh");
        let bins = bin_cache();
        for name in ["etcd", "kube-apiserver"] {
            assert!(
                bins.join(name).is_file(),
                "{} not found: run `scripts/control-plane.sh build` first \
                 (from {}; ~5 min and a few GB of RAM when cold; `scripts/setup.sh` does it too)",
                bins.join(name).display(),
                root.display()
            );
        }
        let started = Instant::now();
        let out = Command::new("bash")
            .arg(&script)
            .arg("start")
            .arg(dir)
            .stdin(Stdio::null())
            .output()
            .expect("run scripts/control-plane.sh");
        // Armed before checking the result: a half-started plane is stopped too.
        let cp = ControlPlane {
            script,
            dir: dir.to_path_buf(),
            kubeconfig: dir.join("kubeconfig"),
            stopped: false,
        };
        assert!(
            out.status.success(),
            "{}",
            describe("scripts/control-plane.sh start", &out)
        );
        eprintln!(
            "control plane started in {:.1?}\n{}",
            started.elapsed(),
            text(&out.stderr).trim_end()
        );
        let printed = text(&out.stdout);
        assert_eq!(
            printed.lines().last(),
            Some(format!("KUBECONFIG={}", cp.kubeconfig.display()).as_str()),
            "start must end by printing KUBECONFIG=DIR/kubeconfig"
        );
        cp
    }

    fn pids(&self) -> Vec<u32> {
        ["etcd", "kube-apiserver"]
            .iter()
            .filter_map(|n| std::fs::read_to_string(self.dir.join(format!("{n}.pid"))).ok())
            .map(|s| s.trim().parse().expect("pid file holds a pid"))
            .collect()
    }

    fn stop(&mut self) -> Output {
        self.stopped = true;
        Command::new("bash")
            .arg(&self.script)
            .arg("stop")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .output()
            .expect("run scripts/control-plane.sh stop")
    }

    /// Runs kubectl against this control plane, `stdin` piped in if given.
    fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = Command::new("kubectl");
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(self.dir.join("kubectl-cache"))
            .arg("--request-timeout=30s")
            .args(args)
            .env_remove("KUBECONFIG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            });
        let mut child = cmd
            .spawn()
            .expect("kubectl not found on PATH; install it (Debian/Ubuntu package `kubectl`)");
        if let Some(input) = stdin {
            // A kubectl that exits early closes its stdin; its exit status and
            // stderr then tell the story, so a failed write is not an error.
            let _ = child
                .stdin
                .take()
                .expect("stdin")
                .write_all(input.as_bytes());
        }
        child.wait_with_output().expect("kubectl")
    }

    /// kubectl that must succeed; returns its stdout.
    fn kubectl_ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.kubectl(args, stdin);
        assert!(
            out.status.success(),
            "{}",
            describe(&format!("kubectl {}", args.join(" ")), &out)
        );
        text(&out.stdout)
    }

    fn log_tail(&self, name: &str, lines: usize) -> String {
        let log = std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if self.stopped {
            return;
        }
        if std::thread::panicking() {
            for name in ["etcd", "kube-apiserver"] {
                eprintln!(
                    "---- last lines of {name}.log ----\n{}",
                    self.log_tail(name, 40)
                );
            }
        }
        let out = self.stop();
        if !out.status.success() {
            eprintln!("{}", describe("scripts/control-plane.sh stop", &out));
        }
    }
}

fn process_exists(pid: u32) -> bool {
    // A zombie (exited, not yet reaped) counts as gone.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_none_or(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
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
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(header, ["NAME", "K", "M", "PHASE"], "{table}");
    let row: Vec<&str> = table
        .lines()
        .nth(1)
        .unwrap_or("")
        .split_whitespace()
        .collect();
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
