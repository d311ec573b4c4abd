//! A real consumer of Consul, unchanged: Patroni (PostgreSQL high
//! availability, Debian's `patroni` with `python3-consul`) keeps its leader
//! lock, member keys and service registrations in the mesh through its
//! Consul DCS. Three servers, and two client agents, one per PostgreSQL
//! host, as Consul users deploy Patroni.
//!
//! What Patroni relies on, and what is checked here:
//! - sessions with a TTL and `behavior=delete`, `?acquire=` on the leader
//!   key, `?cas=` updates, recursive reads;
//! - a blocking read of the leader key with `?index=<its ModifyIndex>`
//!   between its loops (Consul answers a single key's blocking read with
//!   the key's own index; with the KV table's index the replica was woken
//!   at once, and looped about 300 times a second instead of every
//!   `loop_wait`);
//! - services registered with HTTP checks, re-tagged on a role change.
//!
//! The run: pg0 bootstraps and leads, pg1 replicates; the mesh's leader is
//! killed (-9) and Patroni keeps its leader; then pg0's Patroni and its
//! PostgreSQL are killed (-9) and pg1 takes the lock once pg0's session
//! expires, with every committed row.
//!
//! Skipped when Patroni or PostgreSQL is not installed, unless
//! `MESH_REQUIRE_PATRONI` is set (`.ci/run` installs them and sets it).

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mesh_bins::process_cluster::{eventually, test_dir, ProcessCluster};
use serde_json::Value;

const IPS: [&str; 5] = [
    "127.0.0.110",
    "127.0.0.111",
    "127.0.0.112",
    "127.0.0.113",
    "127.0.0.114",
];
const RPC_PORT: u16 = 18370;
const HTTP_PORT: u16 = 18570;
const PG_PORT: u16 = 15432;
const REST_PORT: u16 = 18008;
/// Patroni's `loop_wait`: a replica asks the DCS about this often.
const LOOP_WAIT_S: u64 = 2;
/// Patroni's `ttl` (its Consul session's TTL is half of it; a session is
/// invalidated 2 TTLs after its last renewal, as in Consul).
const TTL_S: u64 = 20;

/// Where PostgreSQL's server binaries are (`/usr/lib/postgresql/<v>/bin`).
fn postgres_bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<PathBuf> = fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|bin| bin.join("postgres").exists())
        .collect();
    versions.sort();
    versions.pop()
}

fn installed(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The `postgres` user's uid and gid, when this test runs as root
/// (PostgreSQL refuses to run as root).
fn postgres_ids() -> Option<(u32, u32)> {
    if !Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
    {
        return None;
    }
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .expect("id postgres");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("running as root needs a postgres user")
    };
    Some((id("-u"), id("-g")))
}

/// One Patroni member: its config, its process, and its PostgreSQL.
struct Member {
    ip: String,
    dir: PathBuf,
    child: Option<Child>,
}

impl Member {
    fn new(dir: &Path, name: &str, ip: &str, agent_http: &str, bin_dir: &Path) -> Self {
        let dir = dir.join(name);
        fs::create_dir_all(&dir).expect("member dir");
        let data = dir.join("data");
        let config = format!(
            "scope: pgmesh
namespace: /service/
name: {name}
restapi:
  listen: {ip}:{REST_PORT}
  connect_address: {ip}:{REST_PORT}
consul:
  host: {agent_http}
  register_service: true
bootstrap:
  dcs:
    ttl: {TTL_S}
    loop_wait: {LOOP_WAIT_S}
    retry_timeout: 5
  initdb:
    - encoding: UTF8
  pg_hba:
    - host replication replicator 127.0.0.0/8 trust
    - host all all 127.0.0.0/8 trust
    - local all all trust
postgresql:
  listen: {ip}:{PG_PORT}
  connect_address: {ip}:{PG_PORT}
  data_dir: {data}
  bin_dir: {bin}
  authentication:
    replication: {{username: replicator, password: rep}}
    superuser: {{username: postgres, password: pg}}
  parameters:
    unix_socket_directories: {sock}
",
            data = data.display(),
            bin = bin_dir.display(),
            sock = dir.display(),
        );
        fs::write(dir.join("patroni.yml"), config).expect("patroni.yml");
        if let Some((uid, gid)) = postgres_ids() {
            let status = Command::new("chown")
                .arg("-R")
                .arg(format!("{uid}:{gid}"))
                .arg(&dir)
                .status()
                .expect("chown");
            assert!(status.success(), "chown {}", dir.display());
        }
        Member {
            ip: ip.to_string(),
            dir,
            child: None,
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("patroni.log")
    }

    fn start(&mut self) {
        let log = fs::File::create(self.log_path()).expect("patroni log");
        let mut cmd = Command::new("patroni");
        cmd.arg(self.dir.join("patroni.yml"))
            .env("HOME", &self.dir)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        if let Some((uid, gid)) = postgres_ids() {
            cmd.uid(uid).gid(gid);
        }
        self.child = Some(cmd.spawn().expect("start patroni"));
    }

    /// kill -9 Patroni and its PostgreSQL: the host is gone, and so is
    /// every renewal of its session.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.signal_postmaster("-KILL");
    }

    /// Signals this member's postmaster, if it still runs: the PID file
    /// outlives a killed postmaster, and its PID may since belong to
    /// another process (checked by name before signalling).
    fn signal_postmaster(&self, sig: &str) {
        let pid_file = self.dir.join("data/postmaster.pid");
        let Some(pid) = fs::read_to_string(pid_file)
            .ok()
            .and_then(|s| s.lines().next().map(|l| l.trim().to_string()))
        else {
            return;
        };
        let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() == "postgres" {
            let _ = Command::new("kill")
                .args([sig, &pid])
                .stderr(Stdio::null())
                .status();
        }
    }

    /// One SQL statement through psql; its output, or why it failed.
    fn sql(&self, statement: &str) -> Result<String, String> {
        let out = Command::new("psql")
            .args(["-h", &self.ip, "-p", &PG_PORT.to_string()])
            .args(["-U", "postgres", "-d", "postgres", "-Atq"])
            .args(["-v", "ON_ERROR_STOP=1", "-c", statement])
            .env("PGCONNECT_TIMEOUT", "3")
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }

    fn is_primary(&self) -> bool {
        self.sql("select pg_is_in_recovery()").as_deref() == Ok("f")
    }

    fn is_replica(&self) -> bool {
        self.sql("select pg_is_in_recovery()").as_deref() == Ok("t")
    }

    fn rows(&self) -> Vec<String> {
        self.sql("select note from ha order by id")
            .map(|s| s.lines().map(str::to_string).collect())
            .unwrap_or_default()
    }

    fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Immediate shutdown: nothing of a test's PostgreSQL outlives it.
        self.signal_postmaster("-QUIT");
    }
}

async fn leader_key(c: &ProcessCluster, via: usize) -> Option<String> {
    let r = c
        .request(via, "GET", "/v1/kv/service/pgmesh/leader?raw", b"")
        .await
        .ok()?;
    (r.status == 200).then(|| String::from_utf8_lossy(&r.body).to_string())
}

/// Patroni's service instances as the health endpoint lists them: id,
/// tags, and whether every check passes.
async fn instances(c: &ProcessCluster, via: usize) -> Vec<(String, Vec<String>, bool)> {
    let Ok(r) = c
        .request(via, "GET", "/v1/health/service/pgmesh", b"")
        .await
    else {
        return Vec::new();
    };
    let entries: Vec<Value> = serde_json::from_slice(&r.body).unwrap_or_default();
    entries
        .iter()
        .map(|e| {
            let tags = e["Service"]["Tags"]
                .as_array()
                .map(|t| {
                    t.iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            let passing = e["Checks"]
                .as_array()
                .is_some_and(|cs| cs.iter().all(|c| c["Status"] == "passing"));
            (
                e["Service"]["ID"].as_str().unwrap_or("").to_string(),
                tags,
                passing,
            )
        })
        .collect()
}

fn has_instance(list: &[(String, Vec<String>, bool)], id: &str, tag: &str) -> bool {
    list.iter()
        .any(|(i, tags, passing)| i == id && *passing && tags.iter().any(|t| t == tag))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patroni_fails_over_postgresql_through_the_mesh() {
    let required = std::env::var_os("MESH_REQUIRE_PATRONI").is_some();
    let bin_dir = postgres_bin_dir();
    if !installed("patroni") || !installed("psql") || bin_dir.is_none() {
        assert!(
            !required,
            "MESH_REQUIRE_PATRONI is set but patroni, psql or PostgreSQL is missing \
             (apt-get install patroni python3-consul postgresql)"
        );
        eprintln!("skipped: install patroni, python3-consul and postgresql to run it");
        return;
    }
    let bin_dir = bin_dir.unwrap();
    let dir = test_dir("patroni");
    let mut c = ProcessCluster::new(
        Path::new(env!("CARGO_BIN_EXE_mesh")),
        &dir,
        &IPS[..3],
        RPC_PORT,
        HTTP_PORT,
    )
    .expect("cluster dir");
    // Each PostgreSQL host runs a client agent and points Patroni at it.
    let agents = [
        c.add_client("pg0-host", IPS[3], &["-dns-port=-1"]),
        c.add_client("pg1-host", IPS[4], &["-dns-port=-1"]),
    ];
    for i in 0..5 {
        c.start(i).expect("start agent");
    }
    c.wait_for_leader(Duration::from_secs(30))
        .await
        .expect("the servers elect a leader");
    let mut pg = [0, 1].map(|n| {
        Member::new(
            &dir,
            &format!("pg{n}"),
            IPS[3 + n],
            &c.http_addr(agents[n]),
            &bin_dir,
        )
    });

    // pg0 bootstraps the PostgreSQL cluster and takes the leader lock.
    pg[0].start();
    let took = eventually("pg0 leads", Duration::from_secs(90), || async {
        leader_key(&c, 0).await.as_deref() == Some("pg0") && pg[0].is_primary()
    })
    .await;
    eprintln!("pg0 leads after {took:?}");
    pg[0]
        .sql("create table ha (id serial primary key, note text); insert into ha (note) values ('before')")
        .expect("write through pg0");

    // pg1 clones it and follows.
    pg[1].start();
    eventually("pg1 replicates", Duration::from_secs(90), || async {
        pg[1].is_replica() && pg[1].rows() == ["before"]
    })
    .await;
    eventually(
        "both registered, tagged by role, checks passing",
        Duration::from_secs(30),
        || async {
            let list = instances(&c, 1).await;
            has_instance(&list, "pgmesh/pg0", "primary")
                && has_instance(&list, "pgmesh/pg1", "replica")
        },
    )
    .await;

    // A follower's loop waits on the leader key: it must wake every
    // loop_wait, not spin.
    let loops = |m: &Member| m.log().matches("no action.").count();
    let (before, watch) = (loops(&pg[1]), Duration::from_secs(4 * LOOP_WAIT_S));
    tokio::time::sleep(watch).await;
    let looped = loops(&pg[1]) - before;
    eprintln!("pg1 looped {looped} times in {watch:?}");
    assert!(
        (1..=8).contains(&looped),
        "pg1 looped {looped} times in {watch:?} (loop_wait {LOOP_WAIT_S} s): \
         its blocking read of the leader key does not block"
    );

    // The mesh loses its leader: Patroni keeps its own.
    let mesh_leader = c.wait_for_leader(Duration::from_secs(10)).await.unwrap();
    c.kill(mesh_leader);
    let survivor = (0..3).find(|&i| i != mesh_leader).unwrap();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3 * LOOP_WAIT_S) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(pg[0].is_primary(), "pg0 stopped being primary");
    }
    pg[0]
        .sql("insert into ha (note) values ('during')")
        .expect("write through pg0 after the mesh's failover");
    assert_eq!(leader_key(&c, survivor).await.as_deref(), Some("pg0"));
    assert!(
        !pg[0].log().contains("demot"),
        "pg0 demoted itself while the mesh failed over:\n{}",
        pg[0].log()
    );

    // pg0's host dies: pg1 takes the lock once pg0's session expires.
    // (Replication is asynchronous, so wait for the row first: a commit
    // not yet streamed may be lost in any PostgreSQL failover.)
    eventually("pg1 has every row", Duration::from_secs(30), || async {
        pg[1].rows() == ["before", "during"]
    })
    .await;
    let killed = Instant::now();
    pg[0].kill();
    let bound = Duration::from_secs(2 * TTL_S + 20);
    eventually("pg1 takes over", bound, || async {
        leader_key(&c, survivor).await.as_deref() == Some("pg1") && pg[1].is_primary()
    })
    .await;
    eprintln!("pg1 primary {:?} after pg0 died", killed.elapsed());
    assert_eq!(
        pg[1].rows(),
        ["before", "during"],
        "every row committed through pg0 is on pg1"
    );
    pg[1]
        .sql("insert into ha (note) values ('after')")
        .expect("write through pg1");
    eventually(
        "pg1 registered as primary",
        Duration::from_secs(30),
        || async { has_instance(&instances(&c, survivor).await, "pgmesh/pg1", "primary") },
    )
    .await;
    drop(pg);
    c.stop_all();
}
