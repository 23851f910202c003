//! The simulator as a child process (`roster-sync sim`, the binary next to this one), so
//! that its CPU and memory are not counted as the daemon's. Killed when dropped.

use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use anyhow::{Context, bail};

use crate::args::BenchArgs;

/// The simulator's burst for a quota of `quota` requests/s, as the real service's (2 × rate).
pub fn sim_burst(quota: f64) -> u32 {
    (2.0 * quota).ceil().max(1.0) as u32
}

/// The `roster-sync` binary: `--sim-binary`, else the one next to this binary. It serves the
/// simulator and, with `--replicas`, runs the replicas.
pub fn roster_sync_binary(args: &BenchArgs) -> anyhow::Result<PathBuf> {
    let binary = match &args.sim_binary {
        Some(b) => b.clone(),
        None => std::env::current_exe()
            .context("locating roster-bench")?
            .with_file_name("roster-sync"),
    };
    if !binary.is_file() {
        bail!(
            "the roster-sync binary {} does not exist: build it first with `cargo build --release` \
             (roster-bench runs `roster-sync sim` as a separate process so its CPU is not counted)",
            binary.display()
        );
    }
    Ok(binary)
}

/// The `roster-sync sim` child.
pub struct SimProcess {
    child: Child,
    pub url: String,
}

impl SimProcess {
    /// Starts the simulator with the run's quota and waits for the URL it prints.
    pub fn start(args: &BenchArgs) -> anyhow::Result<Self> {
        let binary = roster_sync_binary(args)?;
        let mut child = Command::new(&binary)
            .args(["sim", "--listen", "127.0.0.1:0", "--exempt-control"])
            .args(["--rate", &args.quota_rps.to_string()])
            .args(["--burst", &sim_burst(args.quota_rps).to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {} sim", binary.display()))?;
        let stdout = child.stdout.take().context("the simulator's stdout")?;
        let mut line = String::new();
        let read = BufReader::new(stdout).read_line(&mut line);
        let mut sim = Self {
            child,
            url: line.trim().to_owned(),
        };
        match read {
            Ok(n) if n > 0 && sim.url.starts_with("http://") => Ok(sim),
            Ok(_) => {
                let status = sim.child.try_wait().ok().flatten();
                bail!("the simulator printed no URL (exit status {status:?})")
            }
            Err(e) => Err(e).context("reading the simulator's URL"),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for SimProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
