//! An independent client agrees with the simulator: boto3, which builds requests and parses
//! answers from the published service model, runs `tests/boto3/test_sim.py` against the real
//! `roster-sync sim` binary.
//!
//! The Python interpreter is `ROSTER_SYNC_PYTHON` (`.ci/run` installs boto3 into `.venv`),
//! else `.venv/bin/python`, else `python3`. Without boto3 the test is skipped (and reported as
//! such, see `common::skip`), unless `CI` is set: then it fails.

mod common;

use std::path::PathBuf;
use std::process::Command;

#[test]
fn boto3_agrees_with_the_simulator() {
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
        .arg(root.join("tests/boto3/test_sim.py"))
        .arg(env!("CARGO_BIN_EXE_roster-sync"))
        .output()
        .expect("run the boto3 check");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "boto3 check failed:\n{}\n{stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    eprintln!("{stderr}");
}
