//! `deploy/` on a real kube-apiserver: `kubectl apply -f deploy/` installs
//! Potluck in one go on a fresh cluster, a server-side dry run of it is then
//! clean and a second apply changes nothing; the example pool applies once the
//! CRDs are established; the ServiceAccounts hold exactly the permissions
//! they need (checked with `kubectl auth can-i` and by acting as them); and
//! every workload container has requests, limits, probes and a locked-down
//! securityContext, with the flags, env and ports the binaries expect.
//!
//! No kubelet or controllers run: the workloads are accepted and stored, not
//! started.

use std::time::{Duration, Instant};

use potluck_e2e::control_plane::{describe, repo_root, text, ControlPlane};

const NS: &str = "potluck-system";
const AGENT: &str = "system:serviceaccount:potluck-system:potluck-agent";
const OPERATOR: &str = "system:serviceaccount:potluck-system:potluck-operator";

/// Everything `deploy/` holds, in the order `kubectl apply -f deploy/`
/// creates it (files in lexical order, objects in file order).
const OBJECTS: &[&str] = &[
    "namespace/potluck-system",
    "serviceaccount/potluck-operator",
    "clusterrole.rbac.authorization.k8s.io/potluck-operator",
    "clusterrolebinding.rbac.authorization.k8s.io/potluck-operator",
    "role.rbac.authorization.k8s.io/potluck-operator",
    "rolebinding.rbac.authorization.k8s.io/potluck-operator",
    "serviceaccount/potluck-agent",
    "clusterrole.rbac.authorization.k8s.io/potluck-agent",
    "clusterrolebinding.rbac.authorization.k8s.io/potluck-agent",
    "role.rbac.authorization.k8s.io/potluck-agent",
    "rolebinding.rbac.authorization.k8s.io/potluck-agent",
    "deployment.apps/potluck-operator",
    "service/potluck-operator-metrics",
    "daemonset.apps/potluck-agent",
    "service/potluck-agent",
    "service/potluck-gateway",
    "service/potluck-share",
    "customresourcedefinition.apiextensions.k8s.io/storagepools.potluck.dev",
    "customresourcedefinition.apiextensions.k8s.io/storagenodes.potluck.dev",
    "customresourcedefinition.apiextensions.k8s.io/buckets.potluck.dev",
    "customresourcedefinition.apiextensions.k8s.io/shares.potluck.dev",
];

fn path(rel: &str) -> String {
    repo_root()
        .join(rel)
        .to_str()
        .expect("utf-8 path")
        .to_owned()
}

/// `kubectl apply` output lines as (object, what happened).
fn outcomes(stdout: &str) -> Vec<(String, String)> {
    stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (obj, rest) = l.split_once(' ').unwrap_or((l, ""));
            (obj.to_owned(), rest.trim().to_owned())
        })
        .collect()
}

fn assert_all(stdout: &str, want: &str, what: &str) {
    let got = outcomes(stdout);
    let objects: Vec<&str> = got.iter().map(|(o, _)| o.as_str()).collect();
    assert_eq!(objects, OBJECTS, "{what}: objects\n{stdout}");
    for (obj, outcome) in &got {
        assert_eq!(outcome, want, "{what}: {obj}\n{stdout}");
    }
}

/// A fresh control plane with `kubectl apply -f deploy/` done and checked.
fn installed(dir: &std::path::Path) -> ControlPlane {
    let cp = ControlPlane::start(dir);
    let out = cp.kubectl(&["apply", "-f", &path("deploy")], None);
    assert!(
        out.status.success(),
        "{}",
        describe("apply -f deploy/", &out)
    );
    let err = text(&out.stderr);
    assert!(
        err.trim().is_empty(),
        "a fresh install must apply without warnings or errors:\n{err}"
    );
    assert_all(&text(&out.stdout), "created", "first apply");
    cp
}

fn wait_established(cp: &ControlPlane) {
    cp.kubectl_ok(
        &[
            "wait",
            "--for=condition=Established",
            "crd/storagepools.potluck.dev",
            "crd/storagenodes.potluck.dev",
            "crd/buckets.potluck.dev",
            "crd/shares.potluck.dev",
            "--timeout=60s",
        ],
        None,
    );
}

/// `kubectl apply` of something using the CRDs, retried while kubectl's
/// discovery has not caught up with them yet.
fn apply_custom(cp: &ControlPlane, args: &[&str], stdin: Option<&str>) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = cp.kubectl(args, stdin);
        if out.status.success() {
            return text(&out.stdout);
        }
        let err = text(&out.stderr);
        assert!(
            (err.contains("no matches for kind") || err.contains("ensure CRDs are installed"))
                && Instant::now() < deadline,
            "{}",
            describe(&format!("kubectl {}", args.join(" ")), &out)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn jsonpath(cp: &ControlPlane, what: &[&str], path: &str) -> String {
    let mut args = vec!["get"];
    args.extend_from_slice(what);
    let expr = format!("jsonpath={path}");
    args.extend_from_slice(&["-o", &expr]);
    cp.kubectl_ok(&args, None)
}

#[test]
fn deploy_dir_installs_in_one_apply_then_dry_runs_clean_and_reapplies_unchanged() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cp = installed(dir.path());

    // Server-side dry run of the same directory: accepted by admission and
    // validation, every object reported, nothing to change.
    let out = cp.kubectl(&["apply", "--dry-run=server", "-f", &path("deploy")], None);
    assert!(
        out.status.success() && text(&out.stderr).trim().is_empty(),
        "{}",
        describe("apply --dry-run=server -f deploy/", &out)
    );
    assert_all(
        &text(&out.stdout),
        "unchanged (server dry run)",
        "server dry run",
    );

    // A second real apply is idempotent.
    let out = cp.kubectl(&["apply", "-f", &path("deploy")], None);
    assert!(
        out.status.success() && text(&out.stderr).trim().is_empty(),
        "{}",
        describe("second apply -f deploy/", &out)
    );
    assert_all(&text(&out.stdout), "unchanged", "second apply");

    // Namespaced objects all landed in potluck-system (none in the kubeconfig's
    // default namespace), and everything but the generated CRDs carries
    // app.kubernetes.io/part-of=potluck.
    let listed = jsonpath(
        &cp,
        &["-f", &path("deploy")],
        r#"{range .items[*]}{.kind} {.metadata.namespace} {.metadata.name} {.metadata.labels.app\.kubernetes\.io/part-of}{"\n"}{end}"#,
    );
    let rows: Vec<Vec<&str>> = listed.lines().map(|l| l.split(' ').collect()).collect();
    assert_eq!(rows.len(), OBJECTS.len(), "{listed}");
    for row in &rows {
        let [kind, ns, name, part_of] = row[..] else {
            panic!("bad row {row:?} in\n{listed}")
        };
        let cluster_scoped = matches!(
            kind,
            "Namespace" | "ClusterRole" | "ClusterRoleBinding" | "CustomResourceDefinition"
        );
        assert_eq!(
            ns,
            if cluster_scoped { "" } else { NS },
            "{kind}/{name} namespace"
        );
        if kind != "CustomResourceDefinition" {
            assert_eq!(part_of, "potluck", "{kind}/{name} part-of label");
        }
    }
    let stray = cp.kubectl_ok(
        &[
            "get",
            "serviceaccounts,services,deployments,daemonsets,roles,rolebindings",
            "-n",
            "default",
            "-l",
            "app.kubernetes.io/part-of=potluck",
            "-o",
            "name",
        ],
        None,
    );
    assert!(stray.trim().is_empty(), "objects outside {NS}: {stray}");
}

#[test]
fn example_pool_applies_after_the_crds_are_established() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cp = installed(dir.path());
    // The example is not part of `apply -f deploy/` (non-recursive).
    let out = cp.kubectl(&["get", "storagepools", "-o", "name"], None);
    assert!(
        out.status.success() && text(&out.stdout).trim().is_empty(),
        "{}",
        describe("get storagepools right after install", &out)
    );

    wait_established(&cp);
    let created = apply_custom(&cp, &["apply", "-f", &path("deploy/examples")], None);
    assert_eq!(
        created.trim(),
        "storagepool.potluck.dev/default created",
        "deploy/examples/ holds exactly the pool"
    );
    let spec = jsonpath(
        &cp,
        &["storagepool", "default"],
        "{.spec.k} {.spec.m} {.spec.chunkSize} {.spec.pgCount} {.spec.failureDomainKey} \
         {.spec.downAfter} {.spec.outAfter} {.metadata.namespace}",
    );
    assert_eq!(
        spec.trim_end(),
        "4 2 1048576 128 kubernetes.io/hostname 30s 5m",
        "the pool as applied (cluster-scoped: no namespace)"
    );
    let again = cp.kubectl_ok(&["apply", "-f", &path("deploy/examples")], None);
    assert_eq!(again.trim(), "storagepool.potluck.dev/default unchanged");
    // The optional Ingress for share links is valid against this API server.
    let ingress = cp.kubectl_ok(
        &["apply", "--dry-run=server", "-f", &path("deploy/optional")],
        None,
    );
    assert_eq!(
        ingress.trim(),
        "ingress.networking.k8s.io/potluck-share created (server dry run)"
    );
}

/// `kubectl auth can-i` as `who`: true for "yes", false for "no".
fn can_i(cp: &ControlPlane, who: &str, args: &[&str]) -> bool {
    let mut all = vec!["auth", "can-i", "--as", who];
    all.extend_from_slice(args);
    let out = cp.kubectl(&all, None);
    match text(&out.stdout).trim() {
        "yes" => true,
        "no" => false,
        _ => panic!("{}", describe(&format!("kubectl {}", all.join(" ")), &out)),
    }
}

fn check_permissions(cp: &ControlPlane, who: &str, allowed: &[&[&str]], denied: &[&[&str]]) {
    let mut wrong = Vec::new();
    for args in allowed {
        if !can_i(cp, who, args) {
            wrong.push(format!("cannot but must: {}", args.join(" ")));
        }
    }
    for args in denied {
        if can_i(cp, who, args) {
            wrong.push(format!("can but must not: {}", args.join(" ")));
        }
    }
    assert!(wrong.is_empty(), "{who}:\n{}", wrong.join("\n"));
}

/// Runs kubectl as `who` and returns whether it succeeded; a refusal must be
/// RBAC's (Forbidden), not some other failure.
fn act_as(cp: &ControlPlane, who: &str, args: &[&str], stdin: Option<&str>) -> bool {
    let mut all = vec!["--as", who];
    all.extend_from_slice(args);
    let out = cp.kubectl(&all, stdin);
    if out.status.success() {
        return true;
    }
    assert!(
        text(&out.stderr).contains("Forbidden") || text(&out.stderr).contains("forbidden"),
        "{}",
        describe(&format!("kubectl {}", all.join(" ")), &out)
    );
    false
}

const MEMBER: &str = "apiVersion: potluck.dev/v1alpha1
kind: StorageNode
metadata:
  name: node-a
spec:
  endpoint: 10.0.0.5:7100
  capacityBytes: 107374182400
  failureDomain: node-a
";

const MEMBER_LEASE: &str = "apiVersion: coordination.k8s.io/v1
kind: Lease
metadata:
  name: potluck-agent-node-a
  namespace: potluck-system
spec:
  holderIdentity: node-a
  leaseDurationSeconds: 10
";

const CLUSTER_MAP: &str = "apiVersion: v1
kind: ConfigMap
metadata:
  name: potluck-cluster-map
  namespace: potluck-system
data:
  epoch: \"1\"
";

const EVENT: &str = "apiVersion: events.k8s.io/v1
kind: Event
metadata:
  name: default.potluck-1
  namespace: default
regarding:
  apiVersion: potluck.dev/v1alpha1
  kind: StoragePool
  name: default
reason: MapPublished
note: cluster map epoch 1 published
type: Normal
action: Publish
reportingController: potluck.dev/operator
reportingInstance: potluck-operator-0
eventTime: \"2025-01-01T00:00:00.000000Z\"
";

#[test]
fn service_accounts_hold_least_privilege_that_suffices() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cp = installed(dir.path());
    wait_established(&cp);

    // `-A` on cluster-scoped resources: no namespace, no warning about one.
    check_permissions(
        &cp,
        AGENT,
        &[
            &["get", "storagenodes.potluck.dev", "-A"],
            &["create", "storagenodes.potluck.dev", "-A"],
            &["patch", "storagenodes.potluck.dev", "-A"],
            &["get", "nodes", "-A"],
            &["get", "leases.coordination.k8s.io", "-n", NS],
            &["create", "leases.coordination.k8s.io", "-n", NS],
            &["update", "leases.coordination.k8s.io", "-n", NS],
            &["patch", "leases.coordination.k8s.io", "-n", NS],
            &["get", "shares.potluck.dev", "-n", NS],
            &["list", "shares.potluck.dev", "-n", NS],
            &["create", "shares.potluck.dev", "-n", NS],
            &["patch", "shares.potluck.dev", "-n", NS],
            // --tls-bootstrap: its CSR in status.tls.csr.
            &[
                "patch",
                "storagenodes.potluck.dev",
                "--subresource=status",
                "-A",
            ],
        ],
        &[
            &["delete", "shares.potluck.dev", "-n", NS],
            &["create", "shares.potluck.dev", "-n", "team-a"],
            &["create", "buckets.potluck.dev", "-n", "team-a"],
            &[
                "update",
                "storagenodes.potluck.dev",
                "--subresource=status",
                "-A",
            ],
            &["list", "storagenodes.potluck.dev", "-A"],
            &["delete", "storagenodes.potluck.dev", "-A"],
            &["get", "storagepools.potluck.dev", "-A"],
            &["update", "storagepools.potluck.dev", "-A"],
            &["list", "nodes", "-A"],
            &["patch", "nodes", "-A"],
            &["get", "secrets", "-n", NS],
            &["get", "secrets", "-A"],
            &["get", "configmaps", "-n", NS],
            &["update", "leases.coordination.k8s.io", "-n", "default"],
            &["update", "leases.coordination.k8s.io", "-n", "kube-system"],
            &["delete", "leases.coordination.k8s.io", "-n", NS],
            &["create", "pods", "-n", NS],
        ],
    );
    check_permissions(
        &cp,
        OPERATOR,
        &[
            &["get", "storagepools.potluck.dev", "-A"],
            &["list", "storagepools.potluck.dev", "-A"],
            &["watch", "storagepools.potluck.dev", "-A"],
            &["patch", "storagepools.potluck.dev", "-A"],
            &["update", "storagepools.potluck.dev", "-A"],
            &["list", "storagenodes.potluck.dev", "-A"],
            &["watch", "storagenodes.potluck.dev", "-A"],
            &["list", "buckets.potluck.dev", "-A"],
            &["watch", "buckets.potluck.dev", "-A"],
            &["get", "buckets.potluck.dev", "-n", "team-a"],
            // Its finalizer: a deleted Bucket is emptied before its name is free.
            &["patch", "buckets.potluck.dev", "-n", "team-a"],
            &[
                "patch",
                "buckets.potluck.dev",
                "--subresource=status",
                "-n",
                "team-a",
            ],
            &["get", "secrets", "-n", "team-a"],
            &["create", "secrets", "-n", "team-a"],
            // Renews a Bucket's client certificate.
            &["patch", "secrets", "-n", "team-a"],
            &[
                "patch",
                "storagepools.potluck.dev",
                "--subresource=status",
                "-A",
            ],
            &[
                "update",
                "storagepools.potluck.dev",
                "--subresource=status",
                "-A",
            ],
            &[
                "patch",
                "storagenodes.potluck.dev",
                "--subresource=status",
                "-A",
            ],
            &[
                "update",
                "storagepools.potluck.dev",
                "--subresource=finalizers",
                "-A",
            ],
            &["create", "events.events.k8s.io", "-n", "default"],
            &["patch", "events.events.k8s.io", "-n", NS],
            &["create", "events", "-n", "default"],
            &["patch", "events", "-n", NS],
            &["get", "configmaps", "-n", NS],
            &["create", "configmaps", "-n", NS],
            &["update", "configmaps", "-n", NS],
            &["watch", "configmaps", "-n", NS],
            &["list", "leases.coordination.k8s.io", "-n", NS],
            &["watch", "leases.coordination.k8s.io", "-n", NS],
            &["create", "leases.coordination.k8s.io", "-n", NS],
            &["update", "leases.coordination.k8s.io", "-n", NS],
            &["list", "shares.potluck.dev", "-n", NS],
            &["delete", "shares.potluck.dev", "-n", NS],
        ],
        &[
            &["create", "shares.potluck.dev", "-n", NS],
            &["patch", "shares.potluck.dev", "-n", NS],
            &["list", "shares.potluck.dev", "-A"],
            &["list", "secrets", "-A"],
            &["watch", "secrets", "-A"],
            &["update", "secrets", "-n", "team-a"],
            &["delete", "secrets", "-n", "team-a"],
            &["create", "buckets.potluck.dev", "-n", "team-a"],
            &["delete", "buckets.potluck.dev", "-n", "team-a"],
            &["delete", "nodes", "-A"],
            &["get", "nodes", "-A"],
            &["create", "storagepools.potluck.dev", "-A"],
            &["delete", "storagepools.potluck.dev", "-A"],
            &["delete", "storagenodes.potluck.dev", "-A"],
            &["update", "configmaps", "-n", "default"],
            &["update", "leases.coordination.k8s.io", "-n", "default"],
            &["delete", "configmaps", "-n", NS],
            &["create", "pods", "-n", NS],
            &[
                "update",
                "customresourcedefinitions.apiextensions.k8s.io",
                "-A",
            ],
            &[
                "create",
                "clusterrolebindings.rbac.authorization.k8s.io",
                "-A",
            ],
        ],
    );

    // And by acting as them: the agent registers and heartbeats, the
    // operator publishes a map and reports status.
    apply_custom(&cp, &["apply", "-f", &path("deploy/examples")], None);
    let file = ["create", "-f", "-"];
    // The agent registers by server-side apply (a patch that creates).
    assert!(act_as(
        &cp,
        AGENT,
        &[
            "apply",
            "--server-side",
            "--field-manager=potluck-agent",
            "-f",
            "-"
        ],
        Some(MEMBER)
    ));
    assert!(act_as(
        &cp,
        AGENT,
        &[
            "patch",
            "storagenode",
            "node-a",
            "--type=merge",
            "-p",
            r#"{"spec":{"endpoint":"10.0.0.6:7100"}}"#,
        ],
        None,
    ));
    assert!(act_as(&cp, AGENT, &["get", "storagenode", "node-a"], None));
    assert!(act_as(&cp, AGENT, &file, Some(MEMBER_LEASE)));
    assert!(act_as(
        &cp,
        AGENT,
        &[
            "patch",
            "lease",
            "potluck-agent-node-a",
            "-n",
            NS,
            "--type=merge",
            "-p",
            r#"{"spec":{"leaseDurationSeconds":15}}"#,
        ],
        None,
    ));
    let phase = r#"{"status":{"phase":"Up"}}"#;
    let status_patch = [
        "patch",
        "storagenode",
        "node-a",
        "--subresource=status",
        "--type=merge",
        "-p",
        phase,
    ];
    assert!(!act_as(&cp, AGENT, &status_patch, None));
    assert!(!act_as(&cp, AGENT, &["get", "storagenodes"], None));
    assert!(!act_as(&cp, AGENT, &["get", "secrets", "-n", NS], None));

    assert!(act_as(&cp, OPERATOR, &status_patch, None));
    assert!(act_as(
        &cp,
        OPERATOR,
        &[
            "patch",
            "storagepool",
            "default",
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"members":1,"health":"Pending","mapEpoch":1}}"#,
        ],
        None,
    ));
    assert!(act_as(&cp, OPERATOR, &file, Some(CLUSTER_MAP)));
    assert!(act_as(&cp, OPERATOR, &file, Some(EVENT)));
    assert!(act_as(
        &cp,
        OPERATOR,
        &["get", "leases", "-n", NS, "-o", "name"],
        None
    ));
    assert!(!act_as(&cp, OPERATOR, &["delete", "node", "node-a"], None));
    // A list: the operator reads Secrets only by name.
    assert!(!act_as(&cp, OPERATOR, &["get", "secrets", "-n", NS], None));
    assert_eq!(
        jsonpath(
            &cp,
            &["storagenode", "node-a"],
            "{.spec.endpoint} {.status.phase}"
        ),
        "10.0.0.6:7100 Up"
    );
}

/// One container of a workload, as the API server stored it.
struct Container {
    workload: String,
    init: bool,
    fields: Vec<String>,
}

const CONTAINER_FIELDS: &[&str] = &[
    "name",
    "resources.requests.cpu",
    "resources.requests.memory",
    "resources.limits.memory",
    "livenessProbe",
    "readinessProbe",
    "securityContext.runAsNonRoot",
    "securityContext.runAsUser",
    "securityContext.readOnlyRootFilesystem",
    "securityContext.allowPrivilegeEscalation",
    "securityContext.capabilities.drop",
    "securityContext.capabilities.add",
    "securityContext.seccompProfile.type",
    "securityContext.privileged",
];

impl Container {
    fn get(&self, field: &str) -> &str {
        let i = CONTAINER_FIELDS
            .iter()
            .position(|f| *f == field)
            .expect("known field");
        &self.fields[i]
    }
}

fn containers(cp: &ControlPlane) -> Vec<Container> {
    let workloads = cp.kubectl_ok(
        &[
            "get",
            "deployments,daemonsets,statefulsets",
            "-A",
            "-o",
            r#"jsonpath={range .items[*]}{.kind}/{.metadata.namespace}/{.metadata.name}{"\n"}{end}"#,
        ],
        None,
    );
    let row: String = CONTAINER_FIELDS
        .iter()
        .map(|f| format!("{{.{f}}}"))
        .collect::<Vec<_>>()
        .join("{\"\\t\"}");
    let mut all = Vec::new();
    for workload in workloads.lines() {
        let [kind, ns, name] = workload.split('/').collect::<Vec<_>>()[..] else {
            panic!("bad workload {workload:?}")
        };
        let what = [kind, name, "-n", ns];
        let pod_seccomp = jsonpath(
            cp,
            &what,
            "{.spec.template.spec.securityContext.seccompProfile.type}",
        );
        assert_eq!(pod_seccomp, "RuntimeDefault", "{workload}: pod seccomp");
        for (list, init) in [("containers", false), ("initContainers", true)] {
            let rows = jsonpath(
                cp,
                &what,
                &format!("{{range .spec.template.spec.{list}[*]}}{row}{{\"\\n\"}}{{end}}"),
            );
            for line in rows.lines() {
                let fields: Vec<String> = line.split('\t').map(str::to_owned).collect();
                assert_eq!(fields.len(), CONTAINER_FIELDS.len(), "{workload}: {line:?}");
                all.push(Container {
                    workload: workload.to_owned(),
                    init,
                    fields,
                });
            }
        }
    }
    all
}

#[test]
fn every_workload_container_has_requests_limits_probes_and_a_locked_down_security_context() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cp = installed(dir.path());
    let all = containers(&cp);
    let mut names: Vec<String> = all
        .iter()
        .map(|c| format!("{}:{}", c.workload, c.get("name")))
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "DaemonSet/potluck-system/potluck-agent:agent",
            "DaemonSet/potluck-system/potluck-agent:data-dir-owner",
            "Deployment/potluck-system/potluck-operator:operator",
        ]
    );
    for c in &all {
        let who = format!("{} container {}", c.workload, c.get("name"));
        for field in [
            "resources.requests.cpu",
            "resources.requests.memory",
            "resources.limits.memory",
        ] {
            assert!(!c.get(field).is_empty(), "{who}: no {field}");
        }
        assert_eq!(
            c.get("securityContext.readOnlyRootFilesystem"),
            "true",
            "{who}"
        );
        assert_eq!(
            c.get("securityContext.allowPrivilegeEscalation"),
            "false",
            "{who}"
        );
        assert_eq!(
            c.get("securityContext.capabilities.drop"),
            r#"["ALL"]"#,
            "{who}"
        );
        assert_eq!(
            c.get("securityContext.seccompProfile.type"),
            "RuntimeDefault",
            "{who}"
        );
        assert_eq!(c.get("securityContext.privileged"), "", "{who}: privileged");
        if c.init {
            // The one root container: hands the hostPath data directory to the
            // agent's user, with CAP_CHOWN and nothing else.
            assert_eq!(c.get("name"), "data-dir-owner", "{who}");
            assert_eq!(c.get("securityContext.runAsUser"), "0", "{who}");
            assert_eq!(
                c.get("securityContext.capabilities.add"),
                r#"["CHOWN"]"#,
                "{who}"
            );
        } else {
            assert!(
                !c.get("livenessProbe").is_empty(),
                "{who}: no liveness probe"
            );
            assert!(
                !c.get("readinessProbe").is_empty(),
                "{who}: no readiness probe"
            );
            assert_eq!(c.get("securityContext.runAsNonRoot"), "true", "{who}");
            assert_ne!(c.get("securityContext.runAsUser"), "0", "{who}");
            assert_eq!(c.get("securityContext.capabilities.add"), "", "{who}");
        }
    }
}

#[test]
fn workloads_carry_the_names_flags_env_and_ports_the_binaries_expect() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cp = installed(dir.path());
    let operator = ["deployment", "potluck-operator", "-n", NS];
    let agent = ["daemonset", "potluck-agent", "-n", NS];
    let c = |kind: &[&str], container: &str, path: &str| {
        jsonpath(
            &cp,
            kind,
            &format!("{{.spec.template.spec.containers[?(@.name==\"{container}\")]{path}}}"),
        )
    };

    // Operator: two replicas behind a leader-election Lease, HTTP probes on
    // the metrics port.
    assert_eq!(
        jsonpath(
            &cp,
            &operator,
            "{.spec.replicas} {.spec.template.spec.serviceAccountName}"
        ),
        "2 potluck-operator"
    );
    assert_eq!(
        c(&operator, "operator", ".image"),
        "ghcr.io/potluck-dev/potluck-operator:0.1.0"
    );
    assert_eq!(
        c(&operator, "operator", ".command"),
        r#"["potluck-operator"]"#
    );
    assert_eq!(
        c(&operator, "operator", ".args"),
        r#"["--metrics-listen=0.0.0.0:9200","--require-auth=true","--agent-tls=true"]"#
    );
    assert_eq!(
        c(
            &operator,
            "operator",
            ".env[*].valueFrom.fieldRef.fieldPath"
        ),
        "metadata.namespace metadata.name"
    );
    assert_eq!(
        c(&operator, "operator", ".env[*].name"),
        "POD_NAMESPACE POD_NAME"
    );
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        assert_eq!(
            c(
                &operator,
                "operator",
                &format!(".{probe}.httpGet['path', 'port']")
            ),
            format!("{path} metrics"),
            "{probe}: HTTP on the metrics port (9200)"
        );
    }
    assert_eq!(c(&operator, "operator", ".ports[*].containerPort"), "9200");

    // Agent: one per node, member id = node name, advertised at the pod IP.
    assert_eq!(
        jsonpath(
            &cp,
            &agent,
            "{.spec.template.spec.serviceAccountName} {.spec.template.spec.terminationGracePeriodSeconds} \
             {.spec.updateStrategy.type} {.spec.updateStrategy.rollingUpdate.maxUnavailable} \
             {.spec.template.spec.tolerations}"
        )
        .trim_end(),
        "potluck-agent 30 RollingUpdate 1"
    );
    assert_eq!(
        c(&agent, "agent", ".image"),
        "ghcr.io/potluck-dev/potluck-agent:0.1.0"
    );
    assert_eq!(c(&agent, "agent", ".command"), r#"["potluck-agent"]"#);
    assert_eq!(
        c(&agent, "agent", ".args"),
        r#"["--kubernetes","--listen=0.0.0.0:7100","--metrics-listen=0.0.0.0:9100","--data-dir=/var/lib/potluck","--capacity=$(POTLUCK_CAPACITY)","--advertise=$(POD_IP):7100","--tls-bootstrap","--http-listen=0.0.0.0:8080"]"#
    );
    let env: Vec<String> = [
        "NODE_NAME",
        "POTLUCK_MEMBER_ID",
        "POD_NAMESPACE",
        "POD_IP",
        "POTLUCK_CAPACITY",
    ]
    .iter()
    .map(|n| {
        c(
            &agent,
            "agent",
            &format!(".env[?(@.name==\"{n}\")]['value', 'valueFrom']"),
        )
    })
    .collect();
    assert_eq!(
        env,
        [
            r#"{"fieldRef":{"apiVersion":"v1","fieldPath":"spec.nodeName"}}"#,
            r#"{"fieldRef":{"apiVersion":"v1","fieldPath":"spec.nodeName"}}"#,
            r#"{"fieldRef":{"apiVersion":"v1","fieldPath":"metadata.namespace"}}"#,
            r#"{"fieldRef":{"apiVersion":"v1","fieldPath":"status.podIP"}}"#,
            "100GiB",
        ]
    );
    assert_eq!(
        c(&agent, "agent", ".ports[*]['name', 'containerPort']"),
        "grpc metrics share-http 7100 9100 8080"
    );
    // The gRPC port speaks mutual TLS only; the kubelet has no client certificate.
    for (probe, path) in [
        ("startupProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
        ("livenessProbe", "/healthz"),
    ] {
        assert_eq!(
            c(
                &agent,
                "agent",
                &format!(".{probe}.httpGet['path', 'port']")
            ),
            format!("{path} metrics"),
            "{probe}: HTTP on the metrics port (9100)"
        );
    }
    assert_eq!(
        c(&agent, "agent", ".volumeMounts[0]['name', 'mountPath']"),
        "data /var/lib/potluck"
    );
    assert_eq!(
        jsonpath(
            &cp,
            &agent,
            "{.spec.template.spec.volumes[?(@.name==\"data\")].hostPath['path', 'type']}"
        ),
        "/var/lib/potluck DirectoryOrCreate"
    );

    // Services: metrics scraped by annotation, the agents headless, one
    // ClusterIP gateway in front of any agent.
    let svc = |name: &str| {
        jsonpath(
            &cp,
            &["service", name, "-n", NS],
            r#"{.spec.clusterIP} {.spec.selector.app\.kubernetes\.io/name} {range .spec.ports[*]}{.name}:{.port}->{.targetPort} {end}{.metadata.annotations.prometheus\.io/scrape} {.metadata.annotations.prometheus\.io/port}"#,
        )
    };
    let metrics = svc("potluck-operator-metrics");
    assert!(
        metrics.ends_with("potluck-operator metrics:9200->metrics true 9200"),
        "{metrics}"
    );
    assert_eq!(
        svc("potluck-agent"),
        "None potluck-agent grpc:7100->grpc metrics:9100->metrics true 9100"
    );
    let gateway = svc("potluck-gateway");
    assert!(
        gateway.ends_with(" potluck-agent grpc:7100->grpc  ") && !gateway.starts_with("None"),
        "{gateway:?}"
    );
    let share = svc("potluck-share");
    assert!(
        share.ends_with(" potluck-agent http:80->share-http  ") && !share.starts_with("None"),
        "{share:?}"
    );
}
