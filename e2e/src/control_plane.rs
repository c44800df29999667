//! The project's local Kubernetes control plane, driven from tests:
//! `scripts/control-plane.sh` starts a real etcd + kube-apiserver on loopback
//! and this guard stops them again, even when a test fails.
//!
//! Needs the binaries from `scripts/control-plane.sh build` (run by
//! `scripts/setup.sh`) and `kubectl`; fails, never skips, without them.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Instant;

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("repo root")
}

/// Where `scripts/control-plane.sh build` puts the binaries (same rules as
/// the script: POTLUCK_BIN_CACHE, else $POTLUCK_CACHE/bin, else
/// ~/.cache/potluck/bin).
pub fn bin_cache() -> PathBuf {
    if let Some(dir) = std::env::var_os("POTLUCK_BIN_CACHE") {
        return dir.into();
    }
    if let Some(cache) = std::env::var_os("POTLUCK_CACHE") {
        return PathBuf::from(cache).join("bin");
    }
    let home = std::env::var_os("HOME").expect("HOME is not set");
    PathBuf::from(home).join(".cache/potluck/bin")
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub fn describe(what: &str, out: &Output) -> String {
    format!(
        "{what}: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    )
}

/// A control plane started by the script; stopped on drop, so a failing test
/// never leaves etcd or kube-apiserver running.
pub struct ControlPlane {
    script: PathBuf,
    pub dir: PathBuf,
    pub kubeconfig: PathBuf,
    stopped: bool,
}

impl ControlPlane {
    pub fn start(dir: &Path) -> ControlPlane {
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

    /// Applies `deploy/crds.yaml` (server-side, as `kubectl apply -f deploy/` would) and
    /// waits until the pool and member kinds are served.
    pub fn install_crds(&self) {
        let crds = repo_root().join("deploy/crds.yaml");
        let crds = crds.to_str().expect("utf-8 path");
        self.kubectl_ok(&["apply", "--server-side", "-f", crds], None);
        self.kubectl_ok(
            &[
                "wait",
                "--for=condition=Established",
                "crd/storagepools.potluck.dev",
                "crd/storagenodes.potluck.dev",
                "--timeout=60s",
            ],
            None,
        );
    }

    /// A control plane with the CRDs established and `deploy/`'s namespace and RBAC
    /// applied: what agents and the operator need before they start.
    pub fn start_with_potluck_rbac(dir: &Path) -> ControlPlane {
        let cp = Self::start(dir);
        cp.install_crds();
        for file in ["deploy/00-namespace.yaml", "deploy/10-rbac.yaml"] {
            let path = repo_root().join(file);
            cp.kubectl_ok(&["apply", "-f", path.to_str().expect("utf-8 path")], None);
        }
        cp
    }

    /// A kubeconfig that impersonates `user` (e.g. a ServiceAccount), so a process using
    /// it gets no more than RBAC grants that user.
    pub fn kubeconfig_as(&self, user: &str) -> PathBuf {
        let admin = std::fs::read_to_string(&self.kubeconfig).expect("read kubeconfig");
        let mut out = String::new();
        for line in admin.lines() {
            out.push_str(line);
            out.push('\n');
            if line.trim_start().starts_with("token:") {
                let indent = &line[..line.len() - line.trim_start().len()];
                out.push_str(&format!("{indent}as: {user}\n"));
            }
        }
        assert!(
            out.contains(user),
            "no token in {}",
            self.kubeconfig.display()
        );
        let name: String = user
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let path = self.dir.join(format!("kubeconfig-{name}"));
        std::fs::write(&path, out).expect("write kubeconfig");
        path
    }

    pub fn pids(&self) -> Vec<u32> {
        ["etcd", "kube-apiserver"]
            .iter()
            .filter_map(|n| std::fs::read_to_string(self.dir.join(format!("{n}.pid"))).ok())
            .map(|s| s.trim().parse().expect("pid file holds a pid"))
            .collect()
    }

    pub fn stop(&mut self) -> Output {
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
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Output {
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
    pub fn kubectl_ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.kubectl(args, stdin);
        assert!(
            out.status.success(),
            "{}",
            describe(&format!("kubectl {}", args.join(" ")), &out)
        );
        text(&out.stdout)
    }

    pub fn log_tail(&self, name: &str, lines: usize) -> String {
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

pub fn process_exists(pid: u32) -> bool {
    // A zombie (exited, not yet reaped) counts as gone.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_none_or(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

/// Whitespace-separated cells of line `n` of a `kubectl get` table (0 is the header).
pub fn table_row(table: &str, n: usize) -> Vec<&str> {
    table
        .lines()
        .nth(n)
        .unwrap_or("")
        .split_whitespace()
        .collect()
}
