//! Local S3 servers for the S3 storage backend's tests, both real S3 APIs over HTTP:
//! - moto in server mode (`moto_server`, Python, from PyPI in a virtualenv): closest to AWS's
//!   behaviour;
//! - s3s-fs (`cargo install s3s-fs --features binary`): an S3 server over a directory,
//!   checking SigV4 signatures with one access key.
//!
//! Each server runs on a free loopback port with its files in a temp directory, and is killed
//! on drop (and with the test thread, by `setpriv --pdeathsig`). Both are installed by
//! scripts/install-deps.sh.

use std::fs::OpenOptions;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::Duration;

use crate::util::{free_port, note, poll, tail, TempRoot};

/// Where scripts/install-deps.sh puts moto (override: `SPILO_MOTO_VENV`).
pub const MOTO_VENV: &str = "/opt/spilo-moto-venv";
/// Where scripts/install-deps.sh puts s3s-fs (override: `SPILO_S3S_FS`).
pub const S3S_FS: &str = "/opt/spilo-s3s-fs/bin/s3s-fs";
/// The smallest multipart part moto accepts in these tests (its default is AWS's 5 MiB).
pub const MOTO_MIN_PART_SIZE: usize = 1024;
/// How long a server may take to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Which server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum S3Kind {
    /// moto in server mode.
    Moto,
    /// s3s-fs.
    S3sFs,
}

/// The moto_server executable; panics with the install hint when it is missing.
pub fn moto_server_bin() -> PathBuf {
    let venv = std::env::var_os("SPILO_MOTO_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(MOTO_VENV));
    let bin = venv.join("bin").join("moto_server");
    assert!(
        bin.is_file(),
        "{} not found: run scripts/install-deps.sh (installs moto[server] from PyPI into {})",
        bin.display(),
        venv.display()
    );
    bin
}

/// The s3s-fs executable; panics with the install hint when it is missing.
pub fn s3s_fs_bin() -> PathBuf {
    let bin = std::env::var_os("SPILO_S3S_FS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(S3S_FS));
    assert!(
        bin.is_file(),
        "{} not found: run scripts/install-deps.sh (cargo install s3s-fs --features binary)",
        bin.display()
    );
    bin
}

/// One S3 server; killed on drop.
pub struct S3Server {
    /// Which server.
    pub kind: S3Kind,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// The access key it accepts (moto accepts any).
    pub access_key: String,
    /// The secret of `access_key`.
    pub secret_key: String,
    /// stdout and stderr.
    pub log_path: PathBuf,
    child: Option<Child>,
    // Declared last: removed after the process is gone.
    root: TempRoot,
}

impl S3Server {
    /// Starts a server of `kind` and waits until it accepts connections.
    pub fn start(kind: S3Kind) -> S3Server {
        let root = TempRoot::new(match kind {
            S3Kind::Moto => "spilo-moto-",
            S3Kind::S3sFs => "spilo-s3s-",
        });
        let port = free_port();
        let log_path = root.path().join("server.log");
        let (access_key, secret_key) = ("spilotestkey".to_string(), "spilotestsecret".to_string());
        let mut s = S3Server {
            kind,
            port,
            access_key,
            secret_key,
            log_path,
            child: None,
            root,
        };
        s.spawn();
        s
    }

    /// Kills the server (its files stay).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            note(format!(
                "{:?} S3 server on {} stopped",
                self.kind, self.port
            ));
        }
    }

    /// Starts it again on the same port over the same files (s3s-fs keeps them on disk; moto
    /// starts empty).
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    fn spawn(&mut self) {
        let (kind, port) = (self.kind, self.port);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .unwrap_or_else(|e| panic!("open {}: {e}", self.log_path.display()));
        let log2 = log.try_clone().expect("clone log file handle");
        // setpriv --pdeathsig: the server dies with the test thread even if the harness is
        // killed.
        let mut cmd = Command::new("setpriv");
        cmd.args(["--pdeathsig", "KILL"]);
        match kind {
            S3Kind::Moto => {
                cmd.arg(moto_server_bin())
                    .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                    .env("S3_UPLOAD_PART_MIN_SIZE", MOTO_MIN_PART_SIZE.to_string())
                    .env("PYTHONUNBUFFERED", "1");
            }
            S3Kind::S3sFs => {
                let data = self.root.path().join("data");
                std::fs::create_dir_all(&data)
                    .unwrap_or_else(|e| panic!("create {}: {e}", data.display()));
                cmd.arg(s3s_fs_bin())
                    .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                    .args([
                        "--access-key",
                        &self.access_key,
                        "--secret-key",
                        &self.secret_key,
                    ])
                    .arg(&data);
            }
        }
        let child = cmd
            .current_dir(self.root.path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {kind:?} server: {e}"));
        note(format!(
            "{kind:?} S3 server (pid {}) on 127.0.0.1:{port}",
            child.id()
        ));
        self.child = Some(child);
        let r = poll(READY_TIMEOUT, Duration::from_millis(50), || {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                return Err(format!("exited with {status}"));
            }
            TcpStream::connect(("127.0.0.1", port))
                .map(|_| ())
                .map_err(|e| format!("connect 127.0.0.1:{port}: {e}"))
        });
        if let Err(e) = r {
            panic!(
                "{kind:?} S3 server not listening on {port}: {e}; log:\n{}",
                tail(&self.log_path, 30)
            );
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The server's own directory (s3s-fs keeps its buckets in `data/` under it).
    pub fn dir(&self) -> &std::path::Path {
        self.root.path()
    }

    /// The last `n` lines of the server's output.
    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.log_path, n)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if thread::panicking() {
            eprintln!(
                "[harness] {:?} S3 server log ({}):\n{}",
                self.kind,
                self.log_path.display(),
                self.log_tail(30)
            );
        }
    }
}
