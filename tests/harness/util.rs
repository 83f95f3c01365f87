//! Small helpers: free ports, polling waits, the `postgres` OS user, signals, temp roots.

use std::collections::BTreeSet;
use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

/// A TCP port on 127.0.0.1 that was free a moment ago and that this process has not handed
/// out before. Ports come from 10000–29999, below Linux's ephemeral range (32768+), so that an
/// outgoing connection cannot take one between this call and the server's bind.
pub fn free_port() -> u16 {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    static STATE: Mutex<u64> = Mutex::new(0);
    let mut handed = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..1000 {
        let port = {
            let mut x = STATE.lock().unwrap_or_else(|e| e.into_inner());
            if *x == 0 {
                let t = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1);
                *x = t ^ (u64::from(std::process::id()) << 32) | 1;
            }
            // xorshift64
            *x ^= *x << 13;
            *x ^= *x >> 7;
            *x ^= *x << 17;
            10_000 + (*x % 20_000) as u16
        };
        if handed.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed.insert(port);
            return port;
        }
    }
    // Fall back to a kernel-chosen port.
    loop {
        let listener =
            TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0 to pick a free port");
        let port = listener
            .local_addr()
            .expect("local_addr of a bound listener")
            .port();
        if handed.insert(port) {
            return port;
        }
    }
}

/// Polls `probe` every `interval` until it returns `Ok` or `timeout` has passed. On success
/// returns the value and the time it took; on timeout returns the last error seen.
pub fn poll<T>(
    timeout: Duration,
    interval: Duration,
    mut probe: impl FnMut() -> Result<T, String>,
) -> Result<(T, Duration), String> {
    let start = Instant::now();
    loop {
        let last = match probe() {
            Ok(v) => return Ok((v, start.elapsed())),
            Err(e) => e,
        };
        if start.elapsed() >= timeout {
            return Err(last);
        }
        thread::sleep(
            interval
                .min(timeout.saturating_sub(start.elapsed()))
                .max(Duration::from_millis(10)),
        );
    }
}

/// Like [`poll`] with a 500 ms interval, but panics on timeout with a message naming `what`
/// and the last observation.
pub fn wait_for<T>(what: &str, timeout: Duration, probe: impl FnMut() -> Result<T, String>) -> T {
    match poll(timeout, Duration::from_millis(500), probe) {
        Ok((v, _)) => v,
        Err(last) => {
            panic!("timed out after {timeout:?} waiting for {what}; last observation: {last}")
        }
    }
}

/// Seconds since the first harness call, for the notes the harness prints.
pub fn elapsed_since_start() -> f64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_secs_f64()
}

/// Prints a timestamped harness note to stderr (captured by the test runner; shown when the
/// test fails or with `--nocapture`).
pub fn note(msg: impl std::fmt::Display) {
    eprintln!("[harness +{:7.2}s] {msg}", elapsed_since_start());
}

/// A command that runs `program` as the `postgres` OS user (`setpriv`, which execs it: the
/// child's pid is the program's). It gets `--pdeathsig KILL`, so it dies with the thread that
/// spawned it, and runs in /tmp unless the caller sets another directory.
pub fn postgres_command(program: &Path) -> std::process::Command {
    let mut cmd = std::process::Command::new("setpriv");
    cmd.args([
        "--reuid=postgres",
        "--regid=postgres",
        "--init-groups",
        "--pdeathsig",
        "KILL",
    ])
    .arg(program)
    .current_dir("/tmp")
    .env("USER", "postgres")
    .env("LOGNAME", "postgres")
    .env("HOME", "/tmp");
    cmd
}

/// SIGKILLs every process (other than this one) whose command line mentions `needle`, e.g. a
/// node's private directory: the daemon, its postgres, a pg_basebackup or initdb it started.
/// Returns the pids signalled.
pub fn kill_processes_mentioning(needle: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    let mut killed = Vec::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return killed;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) && pid_alive(pid) && send_signal(pid, libc::SIGKILL) {
            killed.push(pid);
        }
    }
    killed
}

/// Runs `cmd` with stdout and stderr captured, killing it after `timeout`.
pub fn run_with_timeout(
    mut cmd: std::process::Command,
    timeout: Duration,
) -> Result<std::process::Output, String> {
    use std::io::Read;
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn {cmd:?}: {e}"))?;
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let t_out = thread::spawn(move || {
        let mut b = Vec::new();
        let _ = out.read_to_end(&mut b);
        b
    });
    let t_err = thread::spawn(move || {
        let mut b = Vec::new();
        let _ = err.read_to_end(&mut b);
        b
    });
    let waited = poll(timeout, Duration::from_millis(50), || {
        match child.try_wait() {
            Ok(Some(status)) => Ok(status),
            Ok(None) => Err("running".to_string()),
            Err(e) => Err(e.to_string()),
        }
    });
    let status = match waited {
        Ok((s, _)) => s,
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            let stdout = String::from_utf8_lossy(&t_out.join().unwrap_or_default()).into_owned();
            let stderr = String::from_utf8_lossy(&t_err.join().unwrap_or_default()).into_owned();
            return Err(format!(
                "{cmd:?} still running after {timeout:?} (killed); stdout: {stdout:?}; stderr: {stderr:?}"
            ));
        }
    };
    Ok(std::process::Output {
        status,
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
    })
}

/// uid and gid of the `postgres` OS user, from /etc/passwd.
pub fn postgres_ids() -> (u32, u32) {
    let passwd = fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    for line in passwd.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() > 3 && f[0] == "postgres" {
            let uid = f[2].parse().expect("numeric uid for postgres");
            let gid = f[3].parse().expect("numeric gid for postgres");
            return (uid, gid);
        }
    }
    panic!("there is no `postgres` OS user (install postgresql-15: scripts/install-deps.sh)");
}

/// Makes `path` owned by the `postgres` user.
pub fn chown_postgres(path: &Path) {
    let (uid, gid) = postgres_ids();
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("chown postgres {}: {e}", path.display()));
}

/// Sets the permission bits of `path`.
pub fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}

/// Sends `sig` to `pid`; false if the process does not exist (or the call failed).
pub fn send_signal(pid: i32, sig: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(pid, sig) == 0 }
}

/// True while `pid` exists and is not a zombie.
pub fn pid_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the first field after the parenthesised command name.
        Ok(stat) => match stat.rfind(')') {
            Some(i) => !matches!(
                stat[i + 1..].trim_start().chars().next(),
                Some('Z') | Some('X')
            ),
            None => true,
        },
        Err(_) => false,
    }
}

/// Waits up to `timeout` for `pid` to disappear; true if it did.
pub fn wait_pid_gone(pid: i32, timeout: Duration) -> bool {
    poll(timeout, Duration::from_millis(100), || {
        if pid_alive(pid) {
            Err(format!("pid {pid} alive"))
        } else {
            Ok(())
        }
    })
    .is_ok()
}

/// The last `n` lines of a text file (or a note that it cannot be read).
pub fn tail(path: &Path, n: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.len().saturating_sub(n);
            lines[from..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// A directory under /tmp, world-traversable (0755). It is removed when dropped, unless the
/// thread is panicking (a failed test) or `SPILO_TEST_KEEP` is set, in which case it is kept
/// and its path printed.
pub struct TempRoot {
    path: PathBuf,
}

impl TempRoot {
    /// Creates `/tmp/<prefix>XXXXXX`.
    pub fn new(prefix: &str) -> TempRoot {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in("/tmp")
            .unwrap_or_else(|e| panic!("create a temp dir under /tmp: {e}"));
        let path = dir.keep();
        chmod(&path, 0o755);
        TempRoot { path }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempRoot {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("[harness] test failed: keeping {}", self.path.display());
        } else if std::env::var_os("SPILO_TEST_KEEP").is_some() {
            eprintln!(
                "[harness] SPILO_TEST_KEEP set: keeping {}",
                self.path.display()
            );
        } else if let Err(e) = fs::remove_dir_all(&self.path) {
            eprintln!("[harness] could not remove {}: {e}", self.path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct_and_below_the_ephemeral_range() {
        let ports: BTreeSet<u16> = (0..50).map(|_| free_port()).collect();
        assert_eq!(ports.len(), 50);
        assert!(
            ports.iter().all(|p| (10_000..30_000).contains(p)),
            "{ports:?}"
        );
    }

    #[test]
    fn poll_returns_last_error_on_timeout() {
        let mut n = 0;
        let r: Result<((), Duration), String> =
            poll(Duration::from_millis(50), Duration::from_millis(10), || {
                n += 1;
                Err(format!("attempt {n}"))
            });
        let e = r.unwrap_err();
        assert!(e.starts_with("attempt "), "{e}");
    }

    #[test]
    fn own_pid_is_alive() {
        assert!(pid_alive(std::process::id() as i32));
        assert!(!pid_alive(-1));
    }
}
