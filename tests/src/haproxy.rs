//! A real HAProxy in front of servers, for the tests of the PROXY protocol
//! (docs/PROTOCOL.md, "Behind a load balancer"): TCP mode on 127.0.0.1 and
//! a free port, connections spread round-robin over the backends, each
//! opened with a version 2 header (`send-proxy-v2`). Debian's `haproxy`
//! package is installed by `tests/support/haproxy.sh` when missing.
//!
//! It runs in the foreground (`-db`) as a child of the test, and is killed
//! when the value is dropped (a panicking test unwinds through it).

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running HAProxy.
pub struct Haproxy {
    child: Child,
    /// Where clients connect.
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

/// The haproxy program: on `PATH`, in `/usr/sbin`, or installed.
fn program() -> PathBuf {
    for dir in std::env::var("PATH").unwrap_or_default().split(':').chain(["/usr/sbin", "/sbin"]) {
        let path = PathBuf::from(dir).join("haproxy");
        if path.is_file() {
            return path;
        }
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("support/haproxy.sh");
    let out = Command::new("bash").arg(&script).stderr(Stdio::inherit()).output().expect("run haproxy.sh");
    assert!(out.status.success(), "tests/support/haproxy.sh failed");
    PathBuf::from(String::from_utf8(out.stdout).expect("a path").trim())
}

impl Haproxy {
    /// Starts HAProxy in front of `backends`, and waits until it takes
    /// connections.
    pub fn start(backends: &[SocketAddr]) -> Haproxy {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let port = {
            let probe = TcpListener::bind("127.0.0.1:0").expect("a free port");
            probe.local_addr().expect("its address").port()
        };
        let mut config = format!(
            "global\n    maxconn 2000\n\
             defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 60s\n    timeout server 60s\n\
             frontend tokenizer\n    bind 127.0.0.1:{port}\n    default_backend servers\n\
             backend servers\n    balance roundrobin\n"
        );
        for (i, backend) in backends.iter().enumerate() {
            let _ = writeln!(config, "    server s{i} {backend} send-proxy-v2");
        }
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, config).expect("write haproxy.cfg");
        let log = std::fs::File::create(dir.path().join("haproxy.log")).expect("a log file");
        let child = Command::new(program())
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("the log"))
            .stderr(log)
            .spawn()
            .expect("start haproxy");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut proxy = Haproxy { child, addr, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(addr).is_err() {
            if Instant::now() > deadline || proxy.child.try_wait().ok().flatten().is_some() {
                let log = std::fs::read_to_string(proxy._dir.path().join("haproxy.log")).unwrap_or_default();
                panic!("haproxy did not start:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        proxy
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
