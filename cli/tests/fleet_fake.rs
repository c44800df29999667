//! The fleet and the `potluck` command against real processes running the
//! fake agent (examples/fake_agent.rs): same command line, ready line and
//! services as the real agent, objects in memory.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use potluck_cli::fleet::{Fleet, FleetConfig, FleetError};
use potluck_proto::v1::agent_control_client::AgentControlClient;
use potluck_proto::v1::{GetClusterMapRequest, MemberState};

/// Built by `cargo test` next to the test executables' directory.
fn fake_agent_bin() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let profile_dir = exe.parent()?.parent()?;
    let bin = profile_dir
        .join("examples")
        .join(format!("fake_agent{}", std::env::consts::EXE_SUFFIX));
    if bin.is_file() {
        Some(bin)
    } else {
        eprintln!(
            "SKIPPED: {} is missing; run `cargo test -p potluck-cli` (which builds examples)",
            bin.display()
        );
        None
    }
}

fn config(dir: &Path, bin: PathBuf, agents: usize) -> FleetConfig {
    let mut cfg = FleetConfig::new(dir);
    cfg.agent_bin = bin;
    cfg.agents = agents;
    cfg.k = 2;
    cfg.m = 1;
    cfg.pg_count = 16;
    cfg.ready_timeout = Duration::from_secs(30);
    cfg.stop_timeout = Duration::from_secs(10);
    cfg
}

fn alive(pid: u32) -> bool {
    // A zombie still has /proc/<pid>; its state is Z.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.contains(") Z "),
        Err(_) => false,
    }
}

async fn agent_epoch(addr: std::net::SocketAddr) -> u64 {
    let mut client = AgentControlClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    client
        .get_cluster_map(GetClusterMapRequest {})
        .await
        .unwrap()
        .into_inner()
        .epoch
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_starts_pushes_maps_and_survives_kills_and_restarts() {
    let Some(bin) = fake_agent_bin() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut fleet = Fleet::start(config(dir.path(), bin, 4)).await.unwrap();
    assert_eq!(fleet.len(), 4);
    assert_eq!(fleet.endpoints().len(), 4);
    let map = fleet.map().clone();
    assert_eq!(map.epoch, 1);
    assert_eq!(map.members.len(), 4);
    assert_eq!(map.pools.len(), 1);
    assert_eq!(map.pools[0].name, "default");
    assert_eq!(map.pools[0].pgs.len(), 16);
    for i in 0..4 {
        assert_eq!(agent_epoch(fleet.grpc_addr(i)).await, 1);
        assert!(fleet.data_dir(i).is_dir());
        assert_eq!(fleet.id(i), format!("agent-{i}"));
        assert_eq!(map.members[i].endpoint, fleet.grpc_addr(i).to_string());
    }

    let client = fleet.client().await.unwrap();
    client.put_bytes("b", "k", vec![5u8; 1000]).await.unwrap();

    fleet.kill(1).await.unwrap();
    assert!(!fleet.is_running(1));
    // A client made before the kill moves on to the live gateways (each
    // fake agent stores only what it got itself, so only puts are checked).
    for i in 0..8 {
        let key = format!("after-kill-{i}");
        client
            .put_bytes("b", &key, vec![i as u8; 100])
            .await
            .unwrap();
    }
    assert_eq!(fleet.endpoints().len(), 3);
    assert_eq!(fleet.map().members[1].state, MemberState::Up as i32);

    let old = fleet.grpc_addr(1);
    fleet.restart(1).await.unwrap();
    assert!(fleet.is_running(1));
    assert_ne!(fleet.grpc_addr(1), old, "ephemeral ports change");
    assert_eq!(fleet.map().epoch, 2);
    for i in 0..4 {
        assert_eq!(agent_epoch(fleet.grpc_addr(i)).await, 2);
    }
    let member = &fleet.map().members[1];
    assert_eq!(member.endpoint, fleet.grpc_addr(1).to_string());

    fleet.set_state(2, MemberState::Down).unwrap();
    let epoch = fleet.push_map().await.unwrap().epoch;
    assert_eq!(epoch, 3);
    assert_eq!(fleet.map().members[2].state, MemberState::Down as i32);
    // Nothing changed: the operator keeps the epoch.
    assert_eq!(fleet.push_map().await.unwrap().epoch, 3);

    fleet.stop(3).await.unwrap();
    let log = std::fs::read_to_string(fleet.log_path(3)).unwrap();
    assert!(
        log.contains("fake agent agent-3 stopped"),
        "SIGTERM should stop it cleanly:\n{log}"
    );

    // Killed behind the fleet's back: noticed by try_exited.
    let pid = fleet.pid(0).unwrap();
    Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut exited = Vec::new();
    while exited.is_empty() && Instant::now() < deadline {
        exited = fleet.try_exited();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(exited.len(), 1);
    assert_eq!(exited[0].0, 0);

    let pids: Vec<u32> = (0..4).filter_map(|i| fleet.pid(i)).collect();
    assert_eq!(pids.len(), 2);
    fleet.shutdown().await.unwrap();
    for pid in pids {
        assert!(!alive(pid), "agent {pid} outlived shutdown");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_fleet_kills_every_agent() {
    let Some(bin) = fake_agent_bin() else { return };
    let dir = tempfile::tempdir().unwrap();
    let fleet = Fleet::start(config(dir.path(), bin, 3)).await.unwrap();
    let pids: Vec<u32> = (0..3).filter_map(|i| fleet.pid(i)).collect();
    assert_eq!(pids.len(), 3);
    drop(fleet);
    for pid in pids {
        assert!(!alive(pid), "agent {pid} outlived the fleet");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_agent_fails_the_start_with_its_log() {
    let Some(bin) = fake_agent_bin() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), bin, 3);
    cfg.extra_agent_args = vec!["--fail-on-start".to_string()];
    let err = Fleet::start(cfg).await.unwrap_err();
    match err {
        FleetError::AgentExited { tail, .. } => {
            assert!(tail.contains("failing on purpose"), "{tail}")
        }
        other => panic!("unexpected {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_impossible_pool_is_a_map_error_or_unplaceable() {
    let Some(bin) = fake_agent_bin() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), bin, 2);
    cfg.k = 4;
    cfg.m = 2;
    match Fleet::start(cfg).await {
        Ok(fleet) => assert!(!fleet.map().pools[0].unplaceable_reason.is_empty()),
        Err(err) => assert!(matches!(err, FleetError::Map(_)), "{err}"),
    }
}

fn potluck(endpoints: &str, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_potluck"))
        .args(args)
        .env("POTLUCK_ENDPOINT", endpoints)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(input).unwrap();
    }
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_puts_gets_lists_stats_and_removes() {
    let Some(bin) = fake_agent_bin() else { return };
    let dir = tempfile::tempdir().unwrap();
    let fleet = Fleet::start(config(dir.path(), bin, 3)).await.unwrap();
    let endpoints = fleet.endpoints().join(",");
    let run = |args: &[&str]| potluck(&endpoints, args, None);

    let data: Vec<u8> = (0..(9 << 20) + 3).map(|i| (i % 253) as u8).collect();
    let src = dir.path().join("big.bin");
    std::fs::write(&src, &data).unwrap();
    let out = run(&["put", "b/dir/big.bin", src.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("put b/dir/big.bin: 9 MiB (9437187 bytes)"),
        "{}",
        text(&out.stdout)
    );

    let dst = dir.path().join("back.bin");
    let out = run(&["get", "b/dir/big.bin", dst.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(std::fs::read(&dst).unwrap() == data);

    let out = run(&["get", "b/dir/big.bin", "--range", "10-19"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(out.stdout, &data[10..20]);
    let out = run(&["get", "b/dir/big.bin", "-"]);
    assert!(out.stdout == data);

    let out = potluck(&endpoints, &["put", "b/small"], Some(b"hello\n"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = run(&["get", "b/small"]);
    assert_eq!(text(&out.stdout), "hello\n");

    // stdin redirected from a file: the size is known.
    let small = dir.path().join("small.txt");
    std::fs::write(&small, b"from a file").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_potluck"))
        .args(["put", "b/from-file", "-"])
        .env("POTLUCK_ENDPOINT", &endpoints)
        .stdin(std::fs::File::open(&small).unwrap())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("(11 bytes)"),
        "{}",
        text(&out.stdout)
    );

    let out = run(&["ls", "b"]);
    assert_eq!(text(&out.stdout), "dir/big.bin\nfrom-file\nsmall\n");
    let out = run(&["ls", "b/dir/", "--long"]);
    let listing = text(&out.stdout);
    assert!(
        listing.contains("9 MiB") && listing.contains("dir/big.bin"),
        "{listing}"
    );
    assert!(listing.contains("2025-11-25 15:20"), "{listing}");

    let out = run(&["stat", "b/dir/big.bin"]);
    let stat = text(&out.stdout);
    assert!(stat.contains("size:       9 MiB (9437187 bytes)"), "{stat}");
    assert!(
        stat.contains(&blake3::hash(&data).to_hex().to_string()),
        "{stat}"
    );
    assert!(stat.contains("k=4 m=2"), "{stat}");

    let out = run(&["rm", "b/small"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = run(&["stat", "b/small"]);
    assert_eq!(out.status.code(), Some(3));
    let err = text(&out.stderr);
    assert!(err.starts_with("error: not found"), "{err}");
    assert!(err.contains("\nhint: "), "{err}");

    let missing = dir.path().join("missing.bin");
    let out = run(&["get", "b/nope", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3));
    assert!(!missing.exists());
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("partial"))
        .collect();
    assert!(leftovers.is_empty());

    let out = run(&["get", "b/dir/big.bin", "--range", "1000-"]);
    assert!(out.stdout == data[1000..]);
    let out = potluck("http://127.0.0.1:1", &["stat", "b/x"], None);
    assert_eq!(out.status.code(), Some(4));
    assert!(
        text(&out.stderr).contains("potluck dev up"),
        "{}",
        text(&out.stderr)
    );
    let out = run(&["put", "nokey"]);
    assert_eq!(out.status.code(), Some(2));
    let out = run(&["get", "b/k", "--range", "5-1"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn dev_up_runs_a_fleet_until_sigterm() {
    let Some(bin) = fake_agent_bin() else { return };
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let stderr_path = dir.path().join("dev-up.stderr");
    let mut child = Command::new(env!("CARGO_BIN_EXE_potluck"))
        .args([
            "dev", "up", "--agents", "3", "--k", "2", "--m", "1", "--pgs", "16",
        ])
        .args(["--base-port", "0", "--capacity", "1GiB", "--dir"])
        .arg(&data_dir)
        .env("POTLUCK_AGENT_BIN", &bin)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let mut howto = String::new();
    let endpoints = loop {
        let line = lines.next().expect("dev up ended early").unwrap();
        howto.push_str(&line);
        howto.push('\n');
        if let Some(rest) = line.strip_prefix("POTLUCK_FLEET_READY endpoints=") {
            break rest.to_string();
        }
    };
    assert_eq!(endpoints.split(',').count(), 3, "{howto}");
    assert!(howto.contains("export POTLUCK_ENDPOINT="), "{howto}");
    assert!(howto.contains("grpcurl -plaintext 127.0.0.1:"), "{howto}");
    assert!(howto.contains("/metrics"), "{howto}");

    let out = potluck(&endpoints, &["put", "demo/x"], Some(b"dev fleet"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = potluck(&endpoints, &["get", "demo/x"], None);
    assert_eq!(text(&out.stdout), "dev fleet");

    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "dev up did not stop");
        std::thread::sleep(Duration::from_millis(50));
    };
    let stderr = std::fs::read_to_string(&stderr_path).unwrap();
    assert!(status.success(), "{status}: {stderr}");
    assert!(stderr.contains("stopped"), "{stderr}");
    for i in 0..3 {
        let log = std::fs::read_to_string(data_dir.join(format!("agent-{i}.log"))).unwrap();
        assert!(
            log.contains("stopped"),
            "agent-{i} was not stopped cleanly:\n{log}"
        );
    }
}
