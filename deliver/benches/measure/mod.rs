//! What the deliver benches measure beside time, in one place: CPU seconds of a process
//! and of PostgreSQL (from /proc), and the test database's transactions.

use mailpipe_common::store::Store;

/// Linux reports utime/stime in USER_HZ ticks, which is 100 on every architecture Linux
/// exposes to user space (sysconf would need libc; the workspace forbids unsafe code).
const USER_HZ: f64 = 100.0;

/// User + system CPU seconds of a process (all its threads, live and exited).
pub fn cpu_seconds_of(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state); utime is field 14, stime field 15.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / USER_HZ)
}

/// CPU seconds of every PostgreSQL process on this machine (server and backends): the
/// database's share of a run.
pub fn postgres_cpu_seconds() -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    dir.flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            (comm.trim() == "postgres")
                .then(|| cpu_seconds_of(&name))
                .flatten()
        })
        .sum()
}

/// Transactions the test database has run (committed or rolled back); deliver runs one
/// statement per transaction, so a run's difference is its statements. PostgreSQL
/// publishes the counters within about a second, hence the pause before reading.
pub async fn transactions(store: &Store) -> i64 {
    tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
    sqlx::query_scalar(
        "SELECT (xact_commit + xact_rollback)::int8 FROM pg_stat_database WHERE datname = current_database()",
    )
    .fetch_one(store.pool())
    .await
    .unwrap_or(0)
}
