//! Large values on real processes: a follower paused (SIGSTOP) through a
//! burst of maximum-size values catches up once it resumes, through log
//! batches bounded in bytes and through a snapshot sent in chunks.
//!
//! Before batches were bounded in bytes, the leader's replication task
//! panicked on a 67 MB AppendEntries frame and the follower stayed behind
//! forever while every process kept running.

use std::time::{Duration, Instant};

use mesh_bins::process_cluster::{test_dir, ProcessCluster};

/// The largest value the HTTP API accepts is 512 KiB; stay just below it.
const VALUE_LEN: usize = 500 * 1024;

fn value(i: usize) -> Vec<u8> {
    let mut v = vec![b'a' + (i % 26) as u8; VALUE_LEN];
    v[..8].copy_from_slice(format!("{i:08}").as_bytes());
    v
}

/// Pauses a follower, writes `count` large values through the leader,
/// resumes the follower and waits until it holds every value.
async fn paused_follower_catches_up(
    name: &str,
    ips: &[&str; 3],
    port: u16,
    extra: &[&str],
    count: usize,
    via_snapshot: bool,
) {
    let dir = test_dir(name);
    let mut c = ProcessCluster::new(
        env!("CARGO_BIN_EXE_mesh").as_ref(),
        &dir,
        ips,
        port,
        port + 200,
    )
    .expect("cluster dir")
    .with_args(extra);
    for i in 0..3 {
        c.start(i).expect("start server");
    }
    let leader = c
        .wait_for_leader(Duration::from_secs(20))
        .await
        .expect("a leader");
    let follower = (leader + 1) % 3;

    tracing_phase("pause a follower, write a burst of maximum-size values");
    c.pause(follower);
    let t = Instant::now();
    for i in 0..count {
        let resp = c
            .request(leader, "PUT", &format!("/v1/kv/big/{i:04}"), &value(i))
            .await
            .unwrap_or_else(|e| panic!("write {i}: {e}"));
        assert_eq!(resp.status, 200, "write {i}: {}", resp.text());
        assert_eq!(resp.text().trim(), "true");
    }
    println!(
        "{count} writes of {VALUE_LEN} bytes took {} ms",
        t.elapsed().as_millis()
    );

    tracing_phase("resume the follower: it must catch up");
    c.resume(follower);
    let t = Instant::now();
    let deadline = t + Duration::from_secs(90);
    loop {
        let r = c
            .request(follower, "GET", "/v1/kv/big/?keys&stale", b"")
            .await;
        let held = r
            .as_ref()
            .ok()
            .filter(|r| r.status == 200)
            .and_then(|r| serde_json::from_slice::<Vec<String>>(&r.body).ok())
            .map_or(0, |k| k.len());
        if held == count {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the follower holds {held} of {count} values after 90 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("follower caught up in {} ms", t.elapsed().as_millis());
    for i in [0, count / 2, count - 1] {
        let r = c
            .request(
                follower,
                "GET",
                &format!("/v1/kv/big/{i:04}?raw&stale"),
                b"",
            )
            .await
            .expect("read");
        assert_eq!(r.status, 200);
        assert!(r.body == value(i), "value {i} differs on the follower");
    }
    for i in 0..3 {
        let log = std::fs::read_to_string(c.log_path(i)).unwrap_or_default();
        assert!(
            !log.contains("panicked"),
            "{} panicked:\n{log}",
            c.nodes[i].name
        );
    }
    let follower_log = std::fs::read_to_string(c.log_path(follower)).unwrap_or_default();
    assert_eq!(
        follower_log.contains("installed snapshot from leader"),
        via_snapshot,
        "the follower must catch up {}",
        if via_snapshot {
            "through a snapshot"
        } else {
            "through the log"
        }
    );
    c.stop_all();
    let _ = std::fs::remove_dir_all(&dir);
}

fn tracing_phase(what: &str) {
    println!("phase: {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_follower_catches_up_through_log_batches() {
    // 200 values of 500 KiB: 100 MB, as in the report; the default
    // snapshot threshold keeps catch-up on the log path.
    paused_follower_catches_up(
        "large-log",
        &["127.0.0.40", "127.0.0.41", "127.0.0.42"],
        18340,
        &[],
        200,
        false,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_follower_catches_up_through_a_chunked_snapshot() {
    // A snapshot every 16 entries compacts the log past the follower, so it
    // must install a ~40 MB snapshot (about 10 chunks).
    paused_follower_catches_up(
        "large-snapshot",
        &["127.0.0.43", "127.0.0.44", "127.0.0.45"],
        18341,
        &["-snapshot-threshold", "16"],
        80,
        true,
    )
    .await;
}
