//! Test-only fault injection, named by `ROSTER_SYNC_FAULT`:
//! - `crash_before_commit` makes the process exit at once, with [`CRASH_EXIT_CODE`], in the
//!   middle of recording a poll that changed something: after its events are inserted and
//!   before its transaction commits. The crash tests use it to prove that a poll is recorded
//!   whole or not at all, without hoping that a `kill -9` lands inside a transaction.
//! - `stop_before_write` makes the process send itself SIGSTOP once, when the first poll that
//!   changed something is about to open its write transaction: the poll is in flight, its
//!   roster fetched and diffed. The cluster tests resume it with SIGCONT after its lease was
//!   taken over, to prove that a replica paused past its lease cannot write.
//! - `stop_in_heartbeat` makes the process send itself SIGSTOP once, inside the first cluster
//!   heartbeat transaction that renewed a lease, before it commits: the replica is frozen
//!   holding row locks (its heartbeat row, its leases). The cluster tests leave it stopped to
//!   prove that the server ends such a session and the other replicas carry on.
//! - `stop_before_commit` makes the process send itself SIGSTOP once, inside the first write
//!   transaction of a poll that changed something, before it commits: frozen holding the lock
//!   that orders event commits. The cluster tests leave it stopped, as above.
//!
//! A stop fault goes on only once the test allows it: with `ROSTER_SYNC_FAULT_RESUME_FILE`
//! set, a process resumed before that file exists stops itself again. A SIGCONT the test did
//! not send (the cluster tests saw one arrive within a second, once in several full runs on a
//! loaded machine) would otherwise let a replica write while the test means it frozen.
//!
//! Compiled into every build but inert unless the variable is set: it is read once, when the
//! daemon starts (in `Daemon::build`), and a process that never armed it never
//! crashes here. It must never be set in production (see ARCHITECTURE.md, "Test hooks").

use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

/// The environment variable naming the fault to inject.
pub const FAULT_ENV: &str = "ROSTER_SYNC_FAULT";

/// The environment variable naming the file whose existence lets a stopped process go on.
pub const RESUME_FILE_ENV: &str = "ROSTER_SYNC_FAULT_RESUME_FILE";

/// The exit status of a process stopped by an injected fault, so a test can tell it from any
/// other failure.
pub const CRASH_EXIT_CODE: i32 = 99;

/// A fault the process can be asked to inject.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Abort after a changed poll's events are inserted, before its commit.
    CrashBeforeCommit,
    /// Stop (SIGSTOP) once, before the first changed poll's write transaction.
    StopBeforeWrite,
    /// Stop (SIGSTOP) once, inside the first heartbeat transaction that renewed a lease.
    StopInHeartbeat,
    /// Stop (SIGSTOP) once, inside the first changed poll's write transaction.
    StopBeforeCommit,
}

/// Every fault, for parsing and for the error that lists them.
const ALL: [Fault; 4] = [
    Fault::CrashBeforeCommit,
    Fault::StopBeforeWrite,
    Fault::StopInHeartbeat,
    Fault::StopBeforeCommit,
];

impl Fault {
    pub fn as_str(self) -> &'static str {
        match self {
            Fault::CrashBeforeCommit => "crash_before_commit",
            Fault::StopBeforeWrite => "stop_before_write",
            Fault::StopInHeartbeat => "stop_in_heartbeat",
            Fault::StopBeforeCommit => "stop_before_commit",
        }
    }
}

static ARMED: OnceLock<Option<Fault>> = OnceLock::new();

/// [`RESUME_FILE_ENV`] as read when the fault was armed.
static RESUME_FILE: OnceLock<Option<PathBuf>> = OnceLock::new();

/// Reads [`FAULT_ENV`] once; later calls return what the first one found.
///
/// # Errors
/// The variable is set to something that names no fault (a typo must not leave a crash test
/// quietly testing nothing).
pub fn arm_from_env() -> anyhow::Result<Option<Fault>> {
    if let Some(armed) = ARMED.get() {
        return Ok(*armed);
    }
    RESUME_FILE.get_or_init(|| std::env::var_os(RESUME_FILE_ENV).map(PathBuf::from));
    let fault = match std::env::var(FAULT_ENV) {
        Err(_) => None,
        Ok(v) if v.is_empty() => None,
        Ok(v) => match ALL.into_iter().find(|f| f.as_str() == v) {
            Some(fault) => Some(fault),
            None => {
                let known: Vec<&str> = ALL.iter().map(|f| f.as_str()).collect();
                anyhow::bail!(
                    "{FAULT_ENV}={v:?} names no fault (known: {})",
                    known.join(", ")
                )
            }
        },
    };
    Ok(*ARMED.get_or_init(|| fault))
}

/// Whether the armed stop fault has fired: each stops the process once.
static STOPPED: AtomicBool = AtomicBool::new(false);

/// Injects `fault` when it is armed.
///
/// [`Fault::CrashBeforeCommit`] ends the process at once, with [`CRASH_EXIT_CODE`], without
/// unwinding, running destructors or finishing anything in flight (an open transaction is
/// rolled back by the database, as after a `kill -9`). Not `abort`, which could leave a core
/// file in the working directory.
///
/// The stop faults stop the whole process with SIGSTOP (sent by `kill`, so the library needs
/// no `unsafe`) the first time only, and return once something sends SIGCONT and, with
/// [`RESUME_FILE_ENV`] set, its file exists (before that, they stop again).
pub fn inject(fault: Fault) {
    if ARMED.get().copied().flatten() != Some(fault) {
        return;
    }
    match fault {
        Fault::CrashBeforeCommit => {
            eprintln!("{FAULT_ENV}={}: exiting on purpose", fault.as_str());
            std::process::exit(CRASH_EXIT_CODE);
        }
        Fault::StopBeforeWrite | Fault::StopInHeartbeat | Fault::StopBeforeCommit => {
            if STOPPED.swap(true, Ordering::SeqCst) {
                return;
            }
            eprintln!("{FAULT_ENV}={}: stopping on purpose", fault.as_str());
            let resume_file = RESUME_FILE.get().cloned().flatten();
            loop {
                let stopped = std::process::Command::new("kill")
                    .args(["-STOP", &std::process::id().to_string()])
                    .status();
                match &resume_file {
                    Some(file) if !file.exists() => eprintln!(
                        "{FAULT_ENV}={}: resumed before {} exists; stopping again",
                        fault.as_str(),
                        file.display()
                    ),
                    _ => {
                        eprintln!("{FAULT_ENV}={}: resumed ({stopped:?})", fault.as_str());
                        return;
                    }
                }
            }
        }
    }
}
