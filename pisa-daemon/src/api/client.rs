//! A client of the API for the CLI (`status`, `tag`, `untag`): over the
//! Unix socket, or over TCP when given an address.

use std::path::PathBuf;

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

use super::pb::pisa_daemon_client::PisaDaemonClient;

/// Where the daemon's API is.
#[derive(Clone, Debug)]
pub enum ApiTarget {
    Unix(PathBuf),
    /// `http://127.0.0.1:50051`.
    Tcp(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the daemon's API at {target}: {source}")]
    Connect {
        target: String,
        #[source]
        source: tonic::transport::Error,
    },
}

impl std::fmt::Display for ApiTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
            Self::Tcp(addr) => write!(f, "{addr}"),
        }
    }
}

pub async fn connect(target: &ApiTarget) -> Result<PisaDaemonClient<Channel>, ClientError> {
    let connect_err = |source| ClientError::Connect {
        target: target.to_string(),
        source,
    };
    let channel = match target {
        ApiTarget::Tcp(addr) => Endpoint::from_shared(addr.clone())
            .map_err(connect_err)?
            .connect()
            .await
            .map_err(connect_err)?,
        ApiTarget::Unix(path) => {
            let path = path.clone();
            // The URI is required by the API but unused: the connector
            // ignores it and dials the socket.
            Endpoint::from_static("http://localhost")
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        let stream = tokio::net::UnixStream::connect(path).await?;
                        Ok::<_, std::io::Error>(TokioIo::new(stream))
                    }
                }))
                .await
                .map_err(connect_err)?
        }
    };
    Ok(PisaDaemonClient::new(channel))
}
