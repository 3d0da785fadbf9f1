//! The control socket (`<state dir>/control.sock`, root only): one JSON request per line,
//! one JSON response per line. `emis reload` asks the daemon through it and prints the
//! answer; SIGHUP runs the same reload without anyone to answer.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::{fs::PermissionsExt as _, net::UnixStream},
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _},
    sync::{mpsc, oneshot},
};

use super::{error::What as _, lock::StateLock, Error};

pub const CONTROL_SOCKET: &str = "control.sock";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "lowercase")]
pub enum Request {
    Reload,
    /// The busiest denied sources and destinations of the last minute.
    Top {
        limit: usize,
    },
    /// The names learned from DNS, their addresses, rows and expiry.
    Names,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<serde_json::Value>,
}

/// A request and where its answer goes.
pub type Call = (Request, oneshot::Sender<Response>);

pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join(CONTROL_SOCKET)
}

/// Binds the socket; the caller holds the state lock, so a socket file there is stale.
pub fn bind(state_dir: &Path) -> Result<std::os::unix::net::UnixListener, Error> {
    bind_private_socket(&socket_path(state_dir), "the control socket")
}

/// Binds a unix socket only root can use, replacing a stale file (the caller holds the
/// state lock), non-blocking for tokio. The control and event sockets both come here.
pub fn bind_private_socket(
    path: &Path,
    what: &str,
) -> Result<std::os::unix::net::UnixListener, Error> {
    let _ = std::fs::remove_file(path);
    let listener = std::os::unix::net::UnixListener::bind(path)
        .what(|| format!("binding {what} {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .what(|| format!("restricting {}", path.display()))?;
    listener
        .set_nonblocking(true)
        .what(|| format!("configuring {}", path.display()))?;
    Ok(listener)
}

/// Accepts connections until dropped, passing each request to the daemon's loop.
pub async fn serve(listener: tokio::net::UnixListener, calls: mpsc::Sender<Call>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let calls = calls.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            if tokio::io::BufReader::new(read)
                .read_line(&mut line)
                .await
                .is_err()
            {
                return;
            }
            let response = match serde_json::from_str::<Request>(&line) {
                Ok(request) => {
                    let (tx, rx) = oneshot::channel();
                    if calls.send((request, tx)).await.is_err() {
                        return;
                    }
                    match rx.await {
                        Ok(response) => response,
                        Err(_) => return,
                    }
                }
                Err(e) => Response {
                    ok: false,
                    message: format!("not a request: {e}"),
                    report: None,
                },
            };
            if let Ok(mut text) = serde_json::to_string(&response) {
                text.push('\n');
                let _ = write.write_all(text.as_bytes()).await;
            }
        });
    }
}

/// Sends one request to the daemon of `state_dir` and waits for its answer.
pub fn request(state_dir: &Path, request: &Request) -> Result<Response, Error> {
    let path = socket_path(state_dir);
    let mut stream = match UnixStream::connect(&path) {
        Ok(stream) => stream,
        Err(e) if StateLock::holder(state_dir).is_none() => {
            return Err(Error::Refused(format!(
            "no emis daemon runs with state dir {} ({}: {e}); `emis status` says what is attached",
            state_dir.display(),
            path.display()
        )))
        }
        Err(e) => return Err(e).what(|| format!("connecting to {}", path.display())),
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(300)))
        .what(|| "setting a timeout".into())?;
    let mut line = serde_json::to_string(request).what(|| "encoding the request".into())?;
    line.push('\n');
    stream
        .write_all(line.as_bytes())
        .what(|| format!("writing to {}", path.display()))?;
    let mut answer = String::new();
    BufReader::new(&stream)
        .read_line(&mut answer)
        .what(|| format!("reading from {}", path.display()))?;
    if answer.is_empty() {
        return Err(Error::Refused(format!(
            "the daemon closed {} without an answer (did it exit? `emis status`)",
            path.display()
        )));
    }
    serde_json::from_str(&answer).what(|| "parsing the daemon's answer".into())
}
