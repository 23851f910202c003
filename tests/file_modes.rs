//! The SQLite database, its `-wal` and `-shm` files and the writer's lock file hold attendance
//! (personal data): they are created readable by their owner only, whatever the umask.

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn mode(path: &Path) -> Option<u32> {
    std::fs::metadata(path)
        .ok()
        .map(|m| m.permissions().mode() & 0o777)
}

#[tokio::test]
async fn sqlite_files_are_created_owner_only_under_umask_022() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("roster.db");
    let files = [
        "roster.db",
        "roster.db-wal",
        "roster.db-shm",
        "roster.db.lock",
    ]
    .map(|name| dir.path().join(name));
    let mut child = common::Reaped(
        Command::new("sh")
            .arg("-c")
            .arg("umask 022 && exec \"$0\" run")
            .arg(common::BIN)
            .env_clear()
            .envs(common::binary_env())
            .env("DATABASE_URL", format!("sqlite://{}", db.display()))
            .env("ROSTER_SYNC__HTTP__LISTEN", "")
            .env("ROSTER_SYNC__CHIME__ENDPOINT_URL", "http://127.0.0.1:9")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the daemon"),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while files.iter().any(|f| !f.exists()) {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the daemon exited early: {status}");
        }
        assert!(Instant::now() < deadline, "not all of {files:?} appeared");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let modes: Vec<_> = files.iter().map(|f| (f.clone(), mode(f))).collect();
    let _ = child.kill();
    let _ = child.wait();
    for (file, mode) in modes {
        assert_eq!(
            mode,
            Some(0o600),
            "{} has mode {:o}",
            file.display(),
            mode.unwrap_or(0)
        );
    }
}

#[test]
fn an_existing_world_readable_database_is_tightened() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("roster.db");
    std::fs::write(&db, b"").unwrap();
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = Command::new(common::BIN)
        .arg("migrate")
        .env_clear()
        .envs(common::binary_env())
        .env("DATABASE_URL", format!("sqlite://{}", db.display()))
        .output()
        .expect("run roster-sync migrate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(mode(&db), Some(0o600));
}
