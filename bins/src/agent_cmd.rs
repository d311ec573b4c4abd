//! `mesh agent`: the process around `mesh_net::agent::command`, which the
//! simulator runs too. Here only what is the process's own: logging, the
//! runtime, the data directory on a real disk, and OS signals.

use mesh_bins::logging::init_logging;
use std::sync::Arc;

use mesh_net::agent::command::{self, LaunchError, Signal, Storage};
use mesh_net::disk::{Disk, FileDisk, MemDisk};
use tokio::sync::mpsc;

/// Help text for `mesh agent -h`.
pub fn help() -> String {
    command::help()
}

/// Runs the agent; returns the process exit code.
pub fn run(args: &[String]) -> i32 {
    let launch = match command::parse(args) {
        Ok(l) => l,
        Err(LaunchError::Flags(e)) => {
            eprintln!("{e}\n\n{}", help());
            return 1;
        }
        Err(LaunchError::Config(e)) => {
            eprintln!("==> {e}");
            return 1;
        }
    };
    let disk: Arc<dyn Disk> = match &launch.storage {
        Storage::Memory => Arc::new(MemDisk::new()),
        Storage::Dir(dir) => match FileDisk::open(dir) {
            Ok(d) => Arc::new(d),
            Err(e) => {
                eprintln!("==> cannot use -data-dir {}: {e}", dir.display());
                return 1;
            }
        },
    };
    let set_log_level = init_logging(&launch.log_level, launch.log_json);
    // SIGHUP and `mesh reload` parse the same command line again.
    let reloader = command::Reloader::from_args(args.to_vec(), set_log_level);
    let rt = match crate::cli::process_runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{e}");
            return 1;
        }
    };
    rt.block_on(async move {
        let signals = match os_signals() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("cannot install the signal handlers: {e}");
                return 1;
            }
        };
        match command::run(launch.config, disk, signals, reloader, |_| {}).await {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("==> {e}");
                1
            }
        }
    })
}

/// SIGTERM and SIGINT (stop) and SIGHUP (reload).
fn os_signals() -> std::io::Result<mpsc::Receiver<Signal>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        loop {
            let s = tokio::select! {
                biased;
                _ = term.recv() => Signal::Terminate,
                _ = int.recv() => Signal::Interrupt,
                _ = hup.recv() => Signal::Hangup,
            };
            if tx.send(s).await.is_err() {
                return;
            }
        }
    });
    Ok(rx)
}
