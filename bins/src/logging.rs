//! Logging of the long-running commands (`mesh agent`, the sidecar):
//! `-log-level` in Consul's spellings, `-log-json`, `MESH_LOG` for a
//! filter of one's own, and a hook `mesh reload` uses to change the level.

use mesh_net::agent::command::{tracing_level, LogLevelHook};
use tracing_subscriber::EnvFilter;

/// Sets up logging: `-log-level` (Consul spellings) and `-log-json`.
/// Returns the hook `mesh reload` uses to change the level.
pub fn init_logging(level: &str, json: bool) -> LogLevelHook {
    // openraft's replication tasks log every failed attempt to reach a peer
    // (five lines per peer every 500 ms while it is down); the mesh's
    // network layer logs a peer going down once and its return once, so
    // those two targets are off unless MESH_LOG asks for them.
    let filter_for = |level: &str| {
        EnvFilter::new(format!(
            "{},openraft=warn,openraft::replication=off,\
             openraft::engine::handler::replication_handler=off,hyper=warn",
            level_name(level)
        ))
    };
    let from_env = EnvFilter::try_from_env("MESH_LOG").ok();
    let env_wins = from_env.is_some();
    let filter = from_env.unwrap_or_else(|| filter_for(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let current = std::sync::Mutex::new(level_name(level));
    // The handle's type names the formatter, so each branch makes its own hook.
    macro_rules! hook {
        ($handle:expr) => {{
            let handle = $handle;
            let hook: LogLevelHook = Box::new(move |level: &str| {
                let wanted = level_name(level);
                let mut now = current
                    .lock()
                    .map_err(|_| "logging lock poisoned".to_string())?;
                // MESH_LOG chose the filter at start and keeps it.
                if env_wins || *now == wanted {
                    return Ok(false);
                }
                handle
                    .reload(filter_for(level))
                    .map_err(|e| format!("cannot change the log level: {e}"))?;
                *now = wanted;
                Ok(true)
            });
            hook
        }};
    }
    if json {
        let builder = builder.json().with_filter_reloading();
        let h = builder.reload_handle();
        builder.init();
        hook!(h)
    } else {
        let builder = builder.with_filter_reloading();
        let h = builder.reload_handle();
        builder.init();
        hook!(h)
    }
}

/// A `-log-level` in tracing's spelling. `mesh agent` refuses unknown
/// levels when it parses its configuration; the sidecar's flag falls
/// back to `info`.
fn level_name(level: &str) -> &'static str {
    tracing_level(level).unwrap_or("info")
}
