//! An independent client agrees with the simulator's SQS side: boto3's SQS client, which
//! builds requests and parses answers from the published service model and checks every
//! message body's MD5, runs `tests/boto3/test_sqs.py` against the real `roster-sync sim
//! --events-queue` binary: the queue operations, long polling, redelivery, the SQS errors,
//! and the meeting events and presence controls over the control endpoint.
//!
//! The Python interpreter is `ROSTER_SYNC_PYTHON` (`.ci/run` installs boto3 into `.venv`),
//! else `.venv/bin/python`, else `python3`. Without boto3 the test is skipped, and named in
//! the run's `SKIPPED` report (`common::skip`), unless `CI` is true: then it fails.

mod common;

use std::path::PathBuf;
use std::process::Command;

#[test]
fn boto3_sqs_agrees_with_the_simulator_queue_and_events() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let python = std::env::var_os("ROSTER_SYNC_PYTHON")
        .map(PathBuf::from)
        .or_else(|| Some(root.join(".venv/bin/python")).filter(|p| p.exists()))
        .unwrap_or_else(|| PathBuf::from("python3"));
    let has_boto3 = Command::new(&python)
        .args(["-c", "import boto3"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_boto3 {
        common::skip(&format!(
            "{} has no boto3 (python3 -m venv .venv && .venv/bin/pip install boto3)",
            python.display()
        ));
        return;
    }
    let out = Command::new(&python)
        .arg(root.join("tests/boto3/test_sqs.py"))
        .arg(env!("CARGO_BIN_EXE_roster-sync"))
        .output()
        .expect("run the boto3 SQS check");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "boto3 SQS check failed:\n{}\n{stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    eprintln!("{stderr}");
}
