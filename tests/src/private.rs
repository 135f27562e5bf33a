//! Private store servers for the stop-and-restart fault tests: a server of
//! the test stack's kind started on a free loopback port with its own data
//! directory, so stopping it leaves the shared stack untouched.
//!
//! - Redis: `redis-server`, no persistence.
//! - PostgreSQL: a fresh cluster (`initdb`, trust auth, as the `postgres`
//!   user when run as root) from the installed PostgreSQL binaries; stopped
//!   with a fast shutdown (SIGINT), so its data survives the restart.
//! - MongoDB: SecantusDB's `secantusd-rs` with its own storage path.
//! - ScyllaDB: the CQL test server (in memory: a restart loses the data).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Which server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `redis-server`.
    Redis,
    /// PostgreSQL's `postgres`.
    Postgres,
    /// SecantusDB's `secantusd-rs`.
    Mongo,
    /// The CQL test server (`cql-test-server`, this crate's binary).
    Cql(&'static str),
}

/// A running (or stopped) private server; dropped, it stops and its data
/// directory is removed.
#[derive(Debug)]
pub struct PrivateServer {
    kind: Kind,
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    tls: bool,
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
    l.local_addr().expect("addr").port()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// The newest installed PostgreSQL's binaries (Debian layout), else `PATH`.
fn pg_bin(name: &str) -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            Some((v, e.path().join("bin").join(name)))
        })
        .filter(|(_, p)| p.exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .map_or_else(|| PathBuf::from(name), |(_, p)| p)
}

/// A command for a PostgreSQL binary: as the `postgres` user when we are
/// root (PostgreSQL refuses to run as root).
fn pg_command(name: &str) -> Command {
    let bin = pg_bin(name);
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin);
        c
    } else {
        Command::new(bin)
    }
}

fn secantus() -> PathBuf {
    let home = std::env::var_os("CARGO_HOME").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cargo"),
        PathBuf::from,
    );
    let installed = home.join("bin").join("secantusd-rs");
    if installed.exists() {
        installed
    } else {
        PathBuf::from("secantusd-rs")
    }
}

impl PrivateServer {
    /// Prepares (PostgreSQL: `initdb`) and starts a server, and waits until
    /// its port accepts connections.
    ///
    /// # Panics
    /// When the server's binary is missing or it does not come up in 60 s.
    pub async fn start(kind: Kind) -> Self {
        Self::start_with(kind, false).await
    }

    /// Like [`PrivateServer::start`], serving only TLS (PostgreSQL) with a
    /// certificate for `127.0.0.1` signed by a throwaway CA whose
    /// certificate is at [`PrivateServer::ca_file`].
    ///
    /// # Panics
    /// As `start`, or when `openssl` cannot make the certificates.
    pub async fn start_tls(kind: Kind) -> Self {
        assert_eq!(kind, Kind::Postgres, "TLS is set up for PostgreSQL only");
        Self::start_with(kind, true).await
    }

    /// The throwaway CA's certificate (PEM) of a TLS server.
    #[must_use]
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    async fn start_with(kind: Kind, tls: bool) -> Self {
        let dir = tempfile::tempdir().expect("a data directory");
        if tls {
            make_certificates(dir.path());
        }
        if kind == Kind::Postgres {
            let data = dir.path().join("pgdata");
            std::fs::create_dir(&data).expect("pgdata");
            if is_root() {
                let ok = Command::new("chown")
                    .args(["-R", "postgres:postgres"])
                    .arg(dir.path())
                    .status()
                    .is_ok_and(|s| s.success());
                assert!(ok, "chown the private cluster's directory to postgres");
            }
            let out = pg_command("initdb")
                .args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"])
                .arg("-D")
                .arg(&data)
                .output()
                .expect("initdb (from the PostgreSQL server package)");
            assert!(
                out.status.success(),
                "initdb failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mut server = PrivateServer {
            kind,
            port: free_port(),
            dir,
            child: None,
            tls,
        };
        server.resume().await;
        server
    }

    /// The server's loopback port.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A client URL (Redis, PostgreSQL, MongoDB) or contact point (CQL).
    #[must_use]
    pub fn url(&self) -> String {
        let port = self.port;
        match self.kind {
            Kind::Redis => format!("redis://127.0.0.1:{port}/0"),
            Kind::Postgres => format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            Kind::Mongo => format!("mongodb://127.0.0.1:{port}/?directConnection=true"),
            Kind::Cql(_) => format!("127.0.0.1:{port}"),
        }
    }

    fn spawn(&self) -> Child {
        let port = self.port.to_string();
        let dir: &Path = self.dir.path();
        let mut cmd = match self.kind {
            Kind::Redis => {
                let mut c = Command::new("redis-server");
                c.args([
                    "--bind",
                    "127.0.0.1",
                    "--port",
                    &port,
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .current_dir(dir);
                c
            }
            Kind::Postgres => {
                let mut c = pg_command("postgres");
                c.arg("-D")
                    .arg(dir.join("pgdata"))
                    .args(["-p", &port, "-c", "listen_addresses=127.0.0.1", "-k"])
                    .arg(dir)
                    .args(["-c", "fsync=off"]);
                if self.tls {
                    c.args(["-c", "ssl=on", "-c"])
                        .arg(format!(
                            "ssl_cert_file={}",
                            dir.join("server.crt").display()
                        ))
                        .arg("-c")
                        .arg(format!("ssl_key_file={}", dir.join("server.key").display()));
                    // TLS only: plaintext TCP sessions are refused.
                    let hba = dir.join("pgdata/pg_hba.conf");
                    std::fs::write(
                        &hba,
                        "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostnossl all all 127.0.0.1/32 reject\n",
                    )
                    .expect("pg_hba.conf");
                }
                c
            }
            Kind::Mongo => {
                let mut c = Command::new(secantus());
                c.args(["--port", &port, "--storage-path"])
                    .arg(dir.join("mongo"));
                c
            }
            Kind::Cql(bin) => {
                let mut c = Command::new(bin);
                c.args(["--port", &port]);
                c
            }
        };
        cmd.stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start the private {:?} server: {e}", self.kind))
    }

    /// Whether the port accepts connections.
    #[must_use]
    pub fn answers(&self) -> bool {
        std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
    }

    /// Stops the server: SIGINT (a fast shutdown) for PostgreSQL, SIGKILL
    /// for the others; waits until it has exited.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if self.kind == Kind::Postgres {
            // The child may be `runuser`: signal the postmaster itself.
            let pid = std::fs::read_to_string(self.dir.path().join("pgdata/postmaster.pid"))
                .ok()
                .and_then(|s| s.lines().next().map(str::to_owned))
                .unwrap_or_else(|| child.id().to_string());
            let _ = Command::new("kill").args(["-INT", &pid]).status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if child.try_wait().is_ok_and(|s| s.is_some()) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Starts the server again on the same port and data directory and
    /// waits until its port accepts connections.
    ///
    /// # Panics
    /// When it does not come up in 60 s.
    pub async fn resume(&mut self) {
        assert!(self.child.is_none(), "already running");
        self.child = Some(self.spawn());
        let started = Instant::now();
        while !self.answers() {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("the private {:?} server exited: {status}", self.kind);
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the private {:?} server did not come up",
                self.kind
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A throwaway CA and a server certificate for `127.0.0.1`/`localhost`,
/// made with the `openssl` command line tool.
fn make_certificates(dir: &Path) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    std::fs::write(
        dir.join("server.ext"),
        "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .expect("ext");
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=data-layer test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "server.ext",
        "-out",
        "server.crt",
    ]);
    let _ = Command::new("chmod")
        .args(["0600"])
        .arg(dir.join("server.key"))
        .status();
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        self.stop();
    }
}
