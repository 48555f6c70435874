//! Test support, for this crate's tests and the platform's: a real S3-compatible server
//! (s3rver, installed by `bash scripts/setup-s3.sh`) on a free loopback port with a temporary
//! data folder and one bucket, stopped and removed on drop (also when a test panics). When it is
//! missing, starting it fails and says how to install it, so no S3 test passes without S3.

use crate::S3Config;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// s3rver's fixed credentials: it checks request signatures against them.
pub const S3RVER_KEY: &str = "S3RVER";

pub struct S3rver {
    child: Child,
    pub endpoint: String,
    pub bucket: String,
    data: PathBuf,
}

impl Drop for S3rver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

/// `ZEROFLOW_S3RVER`, else the copy scripts/setup-s3.sh installs in the workspace.
fn binary() -> PathBuf {
    std::env::var_os("ZEROFLOW_S3RVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.s3rver/node_modules/.bin/s3rver")
        })
}

impl S3rver {
    /// Starts one with `bucket` created; panics with what to do when it cannot.
    pub fn start(bucket: &str) -> S3rver {
        let bin = binary();
        assert!(
            bin.exists(),
            "s3rver is not installed at {}: run `bash scripts/setup-s3.sh` (CI runs it), \
             or set ZEROFLOW_S3RVER to an s3rver binary",
            bin.display()
        );
        static N: AtomicUsize = AtomicUsize::new(0);
        let data = std::env::temp_dir().join(format!(
            "zeroflow-s3rver-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&data).expect("s3rver data folder");
        // Port 0: s3rver binds a free port and prints it, so there is no race for a port.
        let mut child = Command::new(&bin)
            .args(["--silent", "--address", "127.0.0.1", "--port", "0"])
            .arg("--directory")
            .arg(&data)
            .args(["--configure-bucket", bucket])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        // Keeps draining stdout after the first line, so the server never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.trim().strip_prefix("S3rver listening on ") {
                    let _ = tx.send(addr.to_string());
                }
            }
        });
        let mut server = S3rver {
            child,
            endpoint: String::new(),
            bucket: bucket.to_string(),
            data,
        };
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(addr) => server.endpoint = format!("http://{addr}"),
            Err(_) => {
                let status = server.child.try_wait().ok().flatten();
                panic!("s3rver did not report its port within 30 s (exit status: {status:?})");
            }
        }
        server
    }

    /// The store configuration for this server's bucket under `prefix`.
    pub fn config(&self, prefix: &str) -> S3Config {
        S3Config {
            endpoint: Some(self.endpoint.clone()),
            bucket: self.bucket.clone(),
            prefix: prefix.to_string(),
            region: "us-east-1".to_string(),
            access_key: S3RVER_KEY.to_string(),
            secret_key: S3RVER_KEY.to_string(),
        }
    }

    /// The environment `jc server` reads to use this server (`S3Config::from_env`).
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("ZEROFLOW_S3_ENDPOINT", self.endpoint.as_str()),
            ("ZEROFLOW_S3_BUCKET", self.bucket.as_str()),
            ("AWS_ACCESS_KEY_ID", S3RVER_KEY),
            ("AWS_SECRET_ACCESS_KEY", S3RVER_KEY),
            ("AWS_REGION", "us-east-1"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }
}
