//! The local fleet (`potluck_cli::fleet::Fleet`) and the `potluck` command
//! against real agent processes: starting, map pushes and epochs, kills,
//! restarts, clean stops; put/get/ls/stat/rm with their exit codes; and
//! `potluck dev up` running until SIGTERM.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use potluck_cli::fleet::FleetError;
use potluck_e2e::*;
use potluck_proto::v1::{GetClusterMapRequest, MemberState};

const B: &str = "cli-command";

async fn agent_epoch(addr: SocketAddr) -> u64 {
    let mut client = potluck_e2e::control_client(format!("http://{addr}"))
        .await
        .unwrap_or_else(|e| panic!("control of {addr}: {e}"));
    client
        .get_cluster_map(GetClusterMapRequest {})
        .await
        .unwrap_or_else(|e| panic!("map of {addr}: {e}"))
        .into_inner()
        .epoch
}

fn read_log(fleet: &TestFleet, index: usize) -> String {
    std::fs::read_to_string(fleet.log_path(index))
        .unwrap_or_else(|e| panic!("log of agent {index}: {e}"))
}

/// Runs `potluck` with `POTLUCK_ENDPOINT=endpoints`, feeding `stdin` if given.
async fn potluck(endpoints: &str, args: &[&str], stdin: Option<&[u8]>) -> Output {
    run_potluck(endpoints, args, &[], stdin).await
}

fn assert_exit(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout: {}\nstderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// Start, map pushes and epochs, a crash, a restart on a new port, a member
/// marked down, a clean stop, a kill behind the fleet's back, and shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_starts_pushes_maps_and_survives_kills_and_restarts() {
    let mut fleet = start_fleet(&[]).await;
    assert_eq!(fleet.len(), 6);
    assert_eq!(fleet.endpoints().len(), 6);
    let map = fleet.map().clone();
    assert_eq!(map.epoch, 1);
    assert_eq!(map.members.len(), 6);
    assert_eq!(map.pools.len(), 1);
    assert_eq!(map.pools[0].name, "default");
    assert_eq!((map.pools[0].k, map.pools[0].m), (4, 2));
    assert_eq!(map.pools[0].pgs.len(), fleet.config().pg_count as usize);
    assert!(map.pools[0].unplaceable_reason.is_empty());
    for i in 0..6 {
        assert_eq!(agent_epoch(fleet.grpc_addr(i)).await, 1);
        assert!(fleet.data_dir(i).is_dir());
        assert_eq!(fleet.id(i), format!("agent-{i}"));
        assert_eq!(map.members[i].id, fleet.id(i));
        assert_eq!(map.members[i].endpoint, fleet.grpc_addr(i).to_string());
        assert_eq!(map.members[i].state, MemberState::Up as i32);
        assert!(fleet.is_running(i));
    }

    let client = fleet.client().await.expect("client");
    let before_kill = random_bytes(1000, 1);
    client
        .put_bytes(B, "k", before_kill.clone())
        .await
        .expect("put");

    fleet.kill(1).await.expect("kill");
    assert!(!fleet.is_running(1));
    assert_eq!(fleet.endpoints().len(), 5);
    assert!(!fleet.endpoints().contains(&fleet.endpoint(1)));
    // Killed, but still Up in the map until someone marks it.
    assert_eq!(fleet.map().members[1].state, MemberState::Up as i32);
    assert_eq!(fleet.map().epoch, 1);
    // A client made before the kill moves on to the live gateways; the
    // writes miss the dead member's shards but reach the write quorum.
    let mut after_kill = Vec::new();
    for i in 0..8 {
        let key = format!("after-kill-{i}");
        let data = random_bytes(100 + i, 10 + i as u64);
        let put = client
            .put_bytes(B, &key, data.clone())
            .await
            .unwrap_or_else(|e| panic!("put {key} with agent-1 dead: {e}"));
        assert_eq!(put.degraded_stripes, 1, "{key}: agent-1 holds a shard");
        after_kill.push((key, data));
    }
    for (key, data) in &after_kill {
        let (_, back) = client.get_bytes(B, key, None).await.expect("get");
        assert_eq!(&back, data, "{key}");
    }
    assert_eq!(
        client.get_bytes(B, "k", None).await.expect("get k").1,
        before_kill
    );

    let old = fleet.grpc_addr(1);
    fleet.restart(1).await.expect("restart");
    assert!(fleet.is_running(1));
    assert_ne!(fleet.grpc_addr(1), old, "ephemeral ports change");
    assert_eq!(fleet.map().epoch, 2);
    for i in 0..6 {
        assert_eq!(agent_epoch(fleet.grpc_addr(i)).await, 2, "agent-{i}");
    }
    let member = &fleet.map().members[1];
    assert_eq!(member.endpoint, fleet.grpc_addr(1).to_string());
    assert_eq!(member.state, MemberState::Up as i32);
    // The restarted agent kept its data and serves as a gateway again.
    let restarted = potluck_e2e::cli_client(&[fleet.endpoint(1)])
        .await
        .expect("connect to the restarted agent");
    assert_eq!(
        restarted.get_bytes(B, "k", None).await.expect("get k").1,
        before_kill
    );
    for (key, data) in &after_kill {
        let (_, back) = restarted.get_bytes(B, key, None).await.expect("get");
        assert_eq!(&back, data, "{key}");
    }

    fleet.set_state(2, MemberState::Down).expect("set state");
    let epoch = fleet.push_map().await.expect("push").epoch;
    assert_eq!(epoch, 3);
    assert_eq!(fleet.map().members[2].state, MemberState::Down as i32);
    for i in 0..6 {
        assert_eq!(agent_epoch(fleet.grpc_addr(i)).await, 3, "agent-{i}");
    }
    // Nothing changed: the operator keeps the epoch.
    assert_eq!(fleet.push_map().await.expect("push").epoch, 3);
    assert_eq!(agent_epoch(fleet.grpc_addr(0)).await, 3);
    // Writes skip the member that is down in the map.
    let put = restarted
        .put_bytes(B, "while-down", vec![7u8; 10])
        .await
        .expect("put with agent-2 down");
    assert_eq!(put.degraded_stripes, 1);

    fleet.stop(3).await.expect("stop");
    assert!(!fleet.is_running(3));
    let log = read_log(&fleet, 3);
    assert!(
        log.contains("agent stopped cleanly"),
        "SIGTERM should stop it cleanly:\n{log}"
    );

    // Killed behind the fleet's back: noticed by try_exited.
    let pid = fleet.pid(0).expect("agent-0 runs");
    let killed = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("kill -9");
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut exited = Vec::new();
    while exited.is_empty() {
        assert!(Instant::now() < deadline, "agent-0's death went unnoticed");
        exited = fleet.try_exited();
        if exited.is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert_eq!(exited.len(), 1);
    assert_eq!(exited[0].0, 0);
    assert!(!exited[0].1.success());
    assert!(fleet.try_exited().is_empty(), "reported once");
    assert_eq!(fleet.pid(0), None);

    let pids: Vec<u32> = (0..6).filter_map(|i| fleet.pid(i)).collect();
    assert_eq!(pids.len(), 4, "agents 1, 2, 4 and 5 still run");
    let log5 = fleet.log_path(5).to_path_buf();
    // Only the fleet moves out; the temporary directory stays until the end.
    let running = fleet.fleet;
    running.shutdown().await.expect("shutdown");
    for pid in pids {
        assert!(!process_alive(pid), "agent {pid} outlived shutdown");
    }
    let log = std::fs::read_to_string(&log5).expect("log of agent-5");
    assert!(
        log.contains("agent stopped cleanly"),
        "shutdown should stop agents cleanly:\n{log}"
    );
}

/// An agent that cannot start fails the fleet's start, and the error carries
/// the agent's own words from its log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_agent_fails_the_start_with_its_log() {
    let err = match try_start_fleet(&["--no-such-flag"]).await {
        Ok(_) => panic!("agents must refuse an unknown flag"),
        Err(err) => err,
    };
    match err {
        FleetError::AgentExited { tail, status, .. } => {
            assert!(tail.contains("--no-such-flag"), "{tail}");
            assert!(!status.is_empty());
        }
        other => panic!("unexpected {other}"),
    }
}

/// put/get/ls/stat/rm through the `potluck` binary: files, stdin and stdout,
/// ranges, output formats and exit codes; then a fleet too far down to serve
/// (exit 4), and dropping the fleet kills every agent left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_puts_gets_lists_stats_and_removes() {
    // Without the stripe cache: the end checks what holders alone can serve.
    let mut fleet = start_fleet(&["--stripe-cache", "0"]).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let endpoints = fleet.endpoints().join(",");
    let run = |args: &'static [&'static str]| potluck(&endpoints, args, None);
    let obj = |key: &str| format!("{B}/{key}");

    let data: Vec<u8> = (0..(9 << 20) + 3).map(|i| (i % 253) as u8).collect();
    let src = dir.path().join("big.bin");
    std::fs::write(&src, &data).expect("write source");
    let big = obj("dir/big.bin");
    let out = potluck(
        &endpoints,
        &["put", &big, src.to_str().expect("utf-8 path")],
        None,
    )
    .await;
    assert_success(&out);
    assert!(
        text(&out.stdout).contains(&format!("put {big}: 9 MiB (9437187 bytes), version ")),
        "{}",
        text(&out.stdout)
    );

    let dst = dir.path().join("back.bin");
    let out = potluck(
        &endpoints,
        &["get", &big, dst.to_str().expect("utf-8 path")],
        None,
    )
    .await;
    assert_success(&out);
    assert!(
        text(&out.stdout).contains("(9437187 bytes)"),
        "{}",
        text(&out.stdout)
    );
    assert!(std::fs::read(&dst).expect("read back") == data);

    let out = potluck(&endpoints, &["get", &big, "--range", "10-19"], None).await;
    assert_success(&out);
    assert_eq!(out.stdout, &data[10..20]);
    let out = potluck(&endpoints, &["get", &big, "-"], None).await;
    assert_success(&out);
    assert!(out.stdout == data, "stdout differs");
    let out = potluck(&endpoints, &["get", &big, "--range", "1000-"], None).await;
    assert_success(&out);
    assert!(out.stdout == data[1000..], "open range differs");

    // From a pipe: the size is unknown.
    let out = potluck(&endpoints, &["put", &obj("small")], Some(b"hello\n")).await;
    assert_success(&out);
    let out = potluck(&endpoints, &["get", &obj("small")], None).await;
    assert_success(&out);
    assert_eq!(text(&out.stdout), "hello\n");

    // stdin redirected from a file: the size is known.
    let small = dir.path().join("small.txt");
    std::fs::write(&small, b"from a file").expect("write");
    let out = tokio::process::Command::new(find_potluck_bin())
        .args(["put", &obj("from-file"), "-"])
        .env("POTLUCK_ENDPOINT", &endpoints)
        .env("POTLUCK_TLS_DIR", client_tls_dir())
        .stdin(std::fs::File::open(&small).expect("open"))
        .output()
        .await
        .expect("potluck put < file");
    assert_success(&out);
    assert!(
        text(&out.stdout).contains("(11 bytes)"),
        "{}",
        text(&out.stdout)
    );
    let out = potluck(&endpoints, &["get", &obj("from-file")], None).await;
    assert_eq!(text(&out.stdout), "from a file");

    let out = potluck(&endpoints, &["ls", B], None).await;
    assert_success(&out);
    assert_eq!(text(&out.stdout), "dir/big.bin\nfrom-file\nsmall\n");
    let out = potluck(&endpoints, &["ls", &obj("dir/"), "--long"], None).await;
    assert_success(&out);
    let listing = text(&out.stdout);
    assert_eq!(listing.lines().count(), 1, "{listing}");
    assert!(
        listing.contains("9 MiB") && listing.contains("dir/big.bin"),
        "{listing}"
    );
    let info = fleet
        .client()
        .await
        .expect("client")
        .stat(B, "dir/big.bin")
        .await
        .expect("stat");
    let created = potluck_cli::human::format_unix_ms_short(info.created_unix_ms);
    assert!(listing.contains(&created), "{listing} lacks {created}");

    let out = potluck(&endpoints, &["stat", &big], None).await;
    assert_success(&out);
    let stat = text(&out.stdout);
    assert!(stat.contains(&format!("key:        {big}")), "{stat}");
    assert!(stat.contains("pool:       default"), "{stat}");
    assert!(stat.contains("size:       9 MiB (9437187 bytes)"), "{stat}");
    assert!(
        stat.contains(&format!("version:    {}", info.version)),
        "{stat}"
    );
    assert!(
        stat.contains(&blake3::hash(&data).to_hex().to_string()),
        "{stat}"
    );
    assert!(stat.contains("k=4 m=2"), "{stat}");
    assert!(stat.contains("chunk size: 1 MiB (1048576 bytes)"), "{stat}");

    let out = potluck(&endpoints, &["rm", &obj("small")], None).await;
    assert_success(&out);
    assert!(
        text(&out.stdout).starts_with(&format!("removed {}", obj("small"))),
        "{}",
        text(&out.stdout)
    );
    let out = potluck(&endpoints, &["stat", &obj("small")], None).await;
    assert_exit(&out, 3);
    let err = text(&out.stderr);
    assert!(err.starts_with("error: not found"), "{err}");
    assert!(err.contains("\nhint: "), "{err}");
    let out = potluck(&endpoints, &["rm", &obj("small")], None).await;
    assert_exit(&out, 3);
    let out = potluck(&endpoints, &["ls", B], None).await;
    assert_eq!(text(&out.stdout), "dir/big.bin\nfrom-file\n");

    // A failed download leaves neither the file nor a partial one.
    let missing = dir.path().join("missing.bin");
    let out = potluck(
        &endpoints,
        &["get", &obj("nope"), missing.to_str().expect("utf-8 path")],
        None,
    )
    .await;
    assert_exit(&out, 3);
    assert!(!missing.exists());
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .expect("read dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Refused by the server as given: exit 5.
    let out = run(&["stat", "b/x"]).await;
    assert_exit(&out, 5);
    assert!(
        text(&out.stderr).contains("bucket"),
        "{}",
        text(&out.stderr)
    );
    let out = potluck(&endpoints, &["get", &big, "--range", "99999999-"], None).await;
    assert_exit(&out, 5);
    let out = potluck(&endpoints, &["--pool", "no-such-pool", "stat", &big], None).await;
    assert_exit(&out, 5);
    assert!(
        text(&out.stderr).contains("no-such-pool"),
        "{}",
        text(&out.stderr)
    );
    // Usage errors: exit 2, before any network call.
    let out = run(&["put", "nokey"]).await;
    assert_exit(&out, 2);
    let out = run(&["get", "b/k", "--range", "5-1"]).await;
    assert_exit(&out, 2);
    // Nobody listening: exit 4 with a hint to start a fleet.
    let out = potluck("http://127.0.0.1:1", &["stat", "b/x"], None).await;
    assert_exit(&out, 4);
    assert!(
        text(&out.stderr).contains("potluck dev up"),
        "{}",
        text(&out.stderr)
    );
    // A dead endpoint in the list is skipped.
    let with_dead = format!("http://127.0.0.1:1,{endpoints}");
    let out = potluck(&with_dead, &["get", &obj("from-file")], None).await;
    assert_success(&out);
    assert_eq!(text(&out.stdout), "from a file");

    // Three of six agents gone: 4+2 stripes cannot be read any more (exit 4).
    for i in [1, 3, 5] {
        fleet.kill(i).await.expect("kill");
    }
    let out = potluck(&endpoints, &["get", &big], None).await;
    assert_exit(&out, 4);
    assert!(
        text(&out.stderr).contains("hint: too many agents may be down"),
        "{}",
        text(&out.stderr)
    );
    let out = potluck(&endpoints, &["put", &obj("no-quorum")], Some(b"x")).await;
    assert_exit(&out, 4);

    // Dropping the fleet kills every agent still running.
    let pids: Vec<u32> = (0..6).filter_map(|i| fleet.pid(i)).collect();
    assert_eq!(pids.len(), 3);
    drop(fleet);
    for pid in pids {
        assert!(!process_alive(pid), "agent {pid} outlived the fleet");
    }
}

/// `potluck dev up` starts real agents, prints how to use them and a ready
/// line, serves puts and gets, and stops every agent cleanly on SIGTERM.
#[test]
fn dev_up_runs_a_fleet_until_sigterm() {
    let agent_bin = potluck_cli::fleet::find_agent_bin().expect("potluck-agent is built");
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().join("data");
    let stderr_path = dir.path().join("dev-up.stderr");
    let mut child = std::process::Command::new(find_potluck_bin())
        .args(["dev", "up", "--agents", "6", "--k", "4", "--m", "2"])
        .args(["--base-port", "0", "--capacity", "1GiB", "--dir"])
        .arg(&data_dir)
        .env("POTLUCK_AGENT_BIN", &agent_bin)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr_path).expect("stderr file"))
        .spawn()
        .expect("spawn potluck dev up");
    // Stops dev up (and so its agents, which run in their own process
    // group) if an assertion fails before the test stops it.
    struct Reap(std::process::Child);
    impl Drop for Reap {
        fn drop(&mut self) {
            if let Ok(None) = self.0.try_wait() {
                let _ = std::process::Command::new("kill")
                    .args(["-TERM", &self.0.id().to_string()])
                    .status();
                let deadline = Instant::now() + Duration::from_secs(30);
                while Instant::now() < deadline && matches!(self.0.try_wait(), Ok(None)) {
                    std::thread::sleep(Duration::from_millis(50));
                }
                let _ = self.0.kill();
            }
            let _ = self.0.wait();
        }
    }
    let stdout = child.stdout.take().expect("stdout");
    let mut child = Reap(child);
    let mut lines = BufReader::new(stdout).lines();
    let mut howto = String::new();
    let endpoints = loop {
        let line = lines
            .next()
            .unwrap_or_else(|| {
                panic!(
                    "dev up ended early:\n{howto}\n{}",
                    std::fs::read_to_string(&stderr_path).unwrap_or_default()
                )
            })
            .expect("read stdout");
        howto.push_str(&line);
        howto.push('\n');
        if let Some(rest) = line.strip_prefix("POTLUCK_FLEET_READY endpoints=") {
            break rest.to_string();
        }
    };
    assert_eq!(endpoints.split(',').count(), 6, "{howto}");
    assert!(howto.contains("6 agents"), "{howto}");
    assert!(howto.contains("map epoch 1"), "{howto}");
    assert!(
        howto.contains(&format!("export POTLUCK_ENDPOINT={endpoints}")),
        "{howto}"
    );
    // Agents speak mutual TLS only; dev up says where its client certificate is.
    let tls_dir = data_dir.join("tls").join("client");
    assert!(
        howto.contains(&format!("export POTLUCK_TLS_DIR={}", tls_dir.display())),
        "{howto}"
    );
    assert!(howto.contains("grpcurl -cacert "), "{howto}");
    assert!(howto.contains("/metrics"), "{howto}");
    assert!(endpoints.starts_with("https://"), "{endpoints}");

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let tls = tls_dir.to_str().expect("utf-8 path");
    let with_tls = [("POTLUCK_TLS_DIR", tls)];
    let out = runtime.block_on(run_potluck(
        &endpoints,
        &["put", "demo/x"],
        &with_tls,
        Some(b"dev fleet"),
    ));
    assert_success(&out);
    let out = runtime.block_on(run_potluck(&endpoints, &["get", "demo/x"], &with_tls, None));
    assert_success(&out);
    assert_eq!(text(&out.stdout), "dev fleet");
    // Without a certificate the same command is refused, and says what to pass.
    let out = runtime.block_on(run_potluck(
        &endpoints,
        &["get", "demo/x"],
        &[("POTLUCK_TLS_DIR", "")],
        None,
    ));
    assert!(!out.status.success(), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("--tls-dir"),
        "{}",
        text(&out.stderr)
    );

    let pid = child.0.id();
    let term = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill -TERM");
    assert!(term.success());
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("try_wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "dev up did not stop");
        std::thread::sleep(Duration::from_millis(50));
    };
    let stderr = std::fs::read_to_string(&stderr_path).expect("stderr");
    assert!(status.success(), "{status}: {stderr}");
    assert!(
        stderr.contains("stopped; data and logs are kept"),
        "{stderr}"
    );
    for i in 0..6 {
        let log =
            std::fs::read_to_string(data_dir.join(format!("agent-{i}.log"))).expect("agent log");
        assert!(
            log.contains("agent stopped cleanly"),
            "agent-{i} was not stopped cleanly:\n{log}"
        );
    }
}

/// `potluck status` reads the fleet from the agents: members with their use, the pool's health
/// by the operator's rules; a dead member shows as not answering, and a pool whose write
/// quorum is gone makes the command exit 4.
#[tokio::test]
async fn status_shows_members_pools_and_what_a_lost_member_costs() {
    let mut fleet = start_fleet(&[]).await;
    let endpoints = fleet.endpoints().join(",");
    let mut c = object_client(&fleet.endpoint(0)).await;
    put(&mut c, B, "status", &random_bytes(3 * MIB, 4))
        .await
        .expect("put");

    let out = potluck(&endpoints, &["status"], None).await;
    assert_success(&out);
    let screen = text(&out.stdout);
    let epoch = fleet.map().epoch;
    assert!(
        screen.starts_with(&format!(
            "Fleet: map epoch {epoch}, 6 members (6 up), 1 pool"
        )),
        "{screen}"
    );
    for i in 0..6 {
        let row = screen
            .lines()
            .find(|l| l.starts_with(&format!("{} ", fleet.id(i))))
            .unwrap_or_else(|| panic!("no row for {}:\n{screen}", fleet.id(i)));
        assert!(row.contains(" Up "), "{row}");
    }
    let pool = screen
        .lines()
        .find(|l| l.starts_with("default "))
        .unwrap_or_else(|| panic!("no pool row:\n{screen}"));
    assert!(pool.contains("4+2") && pool.ends_with("Healthy"), "{pool}");

    // Two members die and are marked Down: every PG keeps 4 of 6, below the quorum of 5.
    fleet.kill(4).await.expect("kill");
    fleet.kill(5).await.expect("kill");
    fleet.set_state(4, MemberState::Down).expect("state");
    fleet.set_state(5, MemberState::Down).expect("state");
    fleet.push_map().await.expect("push");
    let out = potluck(&fleet.endpoints()[..4].join(","), &["status"], None).await;
    assert_exit(&out, 4);
    let screen = text(&out.stdout);
    assert!(screen.contains("(4 up, 2 not answering)"), "{screen}");
    let dead = screen
        .lines()
        .find(|l| l.starts_with(&format!("{} ", fleet.id(5))))
        .unwrap_or_else(|| panic!("no row:\n{screen}"));
    assert!(
        dead.contains("Down") && dead.contains("not answering"),
        "{dead}"
    );
    assert!(screen.contains("Unavailable"), "{screen}");
    assert!(screen.contains("fewer than 5 members up"), "{screen}");

    // Nothing answers: a clear error, exit 4.
    let out = potluck("http://127.0.0.1:1", &["status", "--timeout", "1"], None).await;
    assert_exit(&out, 4);
}
