//! CLI verbs as real processes against a real three-server cluster and a
//! client agent on loopback: `mesh kv export|import`, autopilot health,
//! and `mesh lock` (mutual exclusion of a mutex while the leader is
//! killed, at most N holders of a semaphore, a child stopped when its
//! lock is taken away; the children record what they saw in files, so
//! the verdict comes from the processes themselves).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mesh_bins::process_cluster::{test_dir, ProcessCluster};
use mesh_net::http_client::HttpClient;

const IPS: [&str; 4] = ["127.0.0.90", "127.0.0.91", "127.0.0.92", "127.0.0.93"];

fn mesh_lock(agent: &str, args: &[&str], prefix: &str, child: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_mesh"))
        .arg("lock")
        .arg(format!("-http-addr={agent}"))
        .args(args)
        .arg(prefix)
        .arg(child)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mesh lock")
}

/// Waits for every process (bounded); their exit codes.
fn wait_all(children: Vec<Child>, limit: Duration) -> Vec<i32> {
    let deadline = Instant::now() + limit;
    children
        .into_iter()
        .map(|mut c| loop {
            if let Some(status) = c.try_wait().expect("wait") {
                return status.code().unwrap_or(-1);
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let out = c.wait_with_output().expect("output");
                panic!(
                    "mesh lock did not finish within {limit:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        })
        .collect()
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// The largest number of children inside at once, from `in`/`out` lines.
fn max_inside(log: &[String]) -> usize {
    let (mut inside, mut max) = (0i64, 0i64);
    for l in log {
        match l.split_whitespace().next() {
            Some("in") => inside += 1,
            Some("out") => inside -= 1,
            _ => {}
        }
        max = max.max(inside);
    }
    max as usize
}

/// A child that appends `in`, works for `secs`, appends `out`, under a
/// file lock of its own so the two lines and the count stay exact.
fn worker(log: &Path, secs: &str) -> String {
    let log = log.display();
    format!(
        "echo in $$ >> {log}; [ \"$CONSUL_LOCK_HELD\" = true ] || echo no-env >> {log}; sleep {secs}; echo out $$ >> {log}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_lock_excludes_through_a_failover_and_counts_semaphore_slots() {
    let dir: PathBuf = test_dir("lock-cli");
    let mut c = ProcessCluster::new(
        Path::new(env!("CARGO_BIN_EXE_mesh")),
        &dir,
        &IPS[..3],
        18390,
        18590,
    )
    .expect("cluster dir");
    let client = c.add_client("lockhost", IPS[3], &[]);
    for i in 0..4 {
        c.start(i).expect("start");
    }
    let leader = c
        .wait_for_leader(Duration::from_secs(20))
        .await
        .expect("a leader");
    let agent = c.http_addr(client);
    // The client agent answers once it joined.
    let t = Instant::now();
    while !matches!(HttpClient::new(agent.clone(), Duration::from_secs(1))
        .request("PUT", "/v1/session/create", Vec::new()).await, Ok(r) if r.status == 200)
    {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the client agent never served sessions"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Autopilot health as the leader sees it: three healthy voters.
    let health = HttpClient::new(c.http_addr(leader), Duration::from_secs(5))
        .request("GET", "/v1/operator/autopilot/health", Vec::new())
        .await
        .expect("health");
    let v: serde_json::Value = serde_json::from_slice(&health.body).expect("health JSON");
    assert_eq!(health.status, 200, "{v}");
    assert_eq!(
        (v["Healthy"].as_bool(), v["FailureTolerance"].as_u64()),
        (Some(true), Some(1))
    );
    assert_eq!(v["Servers"].as_array().map(Vec::len), Some(3));

    // kv export and import round-trip through the CLI, flags and all.
    let mesh = |args: &[&str], stdin: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mesh"));
        cmd.args(args).arg(format!("-http-addr={agent}"));
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn mesh");
        if let Some(input) = stdin {
            use std::io::Write;
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(input.as_bytes())
                .expect("write stdin");
        }
        child.wait_with_output().expect("mesh output")
    };
    assert!(mesh(&["kv", "put", "-flags=9", "cfg/a", "one"], None)
        .status
        .success());
    assert!(mesh(&["kv", "put", "cfg/b/c", "two words"], None)
        .status
        .success());
    let export = mesh(&["kv", "export", "cfg/"], None);
    assert!(export.status.success());
    let dump = String::from_utf8(export.stdout).expect("utf-8");
    let imported = mesh(&["kv", "import", "-prefix", "copy/", "-"], Some(&dump));
    assert!(
        imported.status.success(),
        "{}",
        String::from_utf8_lossy(&imported.stderr)
    );
    let copy = mesh(&["kv", "get", "-recurse", "copy/"], None);
    assert_eq!(
        String::from_utf8_lossy(&copy.stdout),
        "copy/cfg/a:one\ncopy/cfg/b/c:two words\n"
    );
    let r = HttpClient::new(agent.clone(), Duration::from_secs(5))
        .request("GET", "/v1/kv/copy/cfg/a", Vec::new())
        .await
        .expect("kv");
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("kv JSON");
    assert_eq!(v[0]["Flags"], 9, "flags survive export and import");
    let bad = mesh(
        &["kv", "import", "-"],
        Some(r#"[{"key":"ok","value":"b2s="},{"key":"x","value":"!"}]"#),
    );
    assert!(!bad.status.success(), "bad base64 is refused");
    let ok_written = HttpClient::new(agent.clone(), Duration::from_secs(5))
        .request("GET", "/v1/kv/ok", Vec::new())
        .await
        .expect("kv");
    assert_eq!(ok_written.status, 404, "a refused import writes nothing");

    // Mutex: five contenders, one at a time, while the leader dies.
    let log = dir.join("mutex.log");
    let contenders: Vec<Child> = (0..5)
        .map(|_| mesh_lock(&agent, &[], "svc/mutex", &worker(&log, "0.4")))
        .collect();
    tokio::time::sleep(Duration::from_millis(600)).await;
    c.kill(leader);
    let codes = tokio::task::spawn_blocking(move || wait_all(contenders, Duration::from_secs(60)))
        .await
        .expect("join");
    assert_eq!(codes, [0; 5], "every mesh lock exits 0");
    let seen = lines(&log);
    assert_eq!(
        seen.iter().filter(|l| l.starts_with("in")).count(),
        5,
        "{seen:?}"
    );
    assert!(
        !seen.iter().any(|l| l == "no-env"),
        "CONSUL_LOCK_HELD set: {seen:?}"
    );
    assert_eq!(
        max_inside(&seen),
        1,
        "two holders of the mutex at once: {seen:?}"
    );
    // With the old leader dead, autopilot health turns unhealthy (429)
    // and names it failed.
    let other = (0..3).find(|i| *i != leader).expect("a survivor");
    let mut last = String::new();
    let t_dead = Instant::now();
    loop {
        let r = HttpClient::new(c.http_addr(other), Duration::from_secs(5))
            .request("GET", "/v1/operator/autopilot/health", Vec::new())
            .await;
        if let Ok(r) = r {
            last = r.text();
            let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
            let failed =
                v["Servers"].as_array().into_iter().flatten().any(|s| {
                    s["Name"] == format!("consul{leader:02}") && s["SerfStatus"] == "failed"
                });
            if r.status == 429 && v["Healthy"] == false && failed {
                break;
            }
        }
        assert!(
            t_dead.elapsed() < Duration::from_secs(15),
            "autopilot health never reported the dead server: {last}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    c.start(leader).expect("restart the old leader");

    // Semaphore: six contenders for two slots.
    let log = dir.join("semaphore.log");
    let contenders: Vec<Child> = (0..6)
        .map(|_| mesh_lock(&agent, &["-n", "2"], "svc/pool", &worker(&log, "0.5")))
        .collect();
    let codes = tokio::task::spawn_blocking(move || wait_all(contenders, Duration::from_secs(60)))
        .await
        .expect("join");
    assert_eq!(codes, [0; 6]);
    let seen = lines(&log);
    assert_eq!(
        seen.iter().filter(|l| l.starts_with("in")).count(),
        6,
        "{seen:?}"
    );
    assert_eq!(
        max_inside(&seen),
        2,
        "the semaphore holds exactly two: {seen:?}"
    );

    // A lock taken away: destroying the holder's session stops the child.
    let marker = dir.join("stopped");
    let holder = mesh_lock(
        &agent,
        &[],
        "svc/taken",
        &format!(
            "trap 'echo term > {}; exit 0' TERM; sleep 30 & echo $! > {}; wait",
            marker.display(),
            dir.join("grandchild").display()
        ),
    );
    let sessions = loop {
        let r = HttpClient::new(agent.clone(), Duration::from_secs(5))
            .request("GET", "/v1/kv/?recurse", Vec::new())
            .await
            .expect("kv");
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
        let held: Vec<String> = v
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["Session"].as_str().map(String::from))
            .collect();
        if !held.is_empty() {
            break held;
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "the lock was never taken"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let destroyed = HttpClient::new(agent.clone(), Duration::from_secs(5))
        .request(
            "PUT",
            &format!("/v1/session/destroy/{}", sessions[0]),
            Vec::new(),
        )
        .await
        .expect("destroy");
    assert_eq!(destroyed.status, 200);
    let codes =
        tokio::task::spawn_blocking(move || wait_all(vec![holder], Duration::from_secs(20)))
            .await
            .expect("join");
    assert_eq!(codes, [0]);
    assert_eq!(
        lines(&marker),
        ["term"],
        "the child got SIGTERM when the lock was lost"
    );
    let grandchild = lines(&dir.join("grandchild"));
    let pid = grandchild.first().expect("the grandchild's pid");
    let t_gone = Instant::now();
    while Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
    {
        assert!(
            t_gone.elapsed() < Duration::from_secs(10),
            "the child's own child (sleep, pid {pid}) outlived the lost lock"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    c.stop_all();
}
