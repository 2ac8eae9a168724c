//! Serving the API: a Unix socket (mode 0600, or 0660 with a group) and,
//! only when asked, TCP (loopback unless configured otherwise), both with
//! server reflection.

use std::{
    future::Future,
    net::SocketAddr,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    time::Duration,
};

use tokio::net::{TcpListener, UnixListener};
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tonic::transport::{server::Router, Server};

use super::{pb, service::PisaApi, service::SAMPLE_INTERVAL};
use crate::kernel::Dataplane;

/// How often expired tags are removed from the kernel. The program already
/// ignores them; the sweep frees their slots.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(
        "another process serves the API socket `{path}` (is another pisa-daemon running?); \
         stop it or pass a different --api-socket"
    )]
    InUse { path: PathBuf },
    #[error("binding the API socket `{path}` failed: {source}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("binding the API address {addr} failed: {source}")]
    BindTcp {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("--api-socket-group `{group}`: no such group in /etc/group")]
    UnknownGroup { group: String },
    #[error("setting owner or mode of the API socket `{path}` failed: {source}")]
    Permissions {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("building server reflection failed: {source}")]
    Reflection {
        #[source]
        source: tonic_reflection::server::Error,
    },
}

/// Binds `path` race-free with the right mode: the socket is created under
/// a temporary name, given its owner and mode, then renamed into place, so
/// it is never reachable with looser permissions. A stale socket from a
/// dead daemon is replaced; a live one is an error.
pub fn bind_unix(path: &Path, group: Option<&str>) -> Result<UnixListener, ApiError> {
    let bind_err = |source| ApiError::Bind {
        path: path.to_owned(),
        source,
    };
    let perm_err = |source| ApiError::Permissions {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(bind_err)?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ApiError::InUse {
                path: path.to_owned(),
            });
        }
        std::fs::remove_file(path).map_err(bind_err)?;
    }
    let gid = match group {
        None => None,
        Some(name) => Some(
            nix::unistd::Group::from_name(name)
                .ok()
                .flatten()
                .ok_or_else(|| ApiError::UnknownGroup { group: name.into() })?
                .gid,
        ),
    };
    let staging = path.with_file_name(format!(
        ".{}.{}",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&staging);
    let listener = UnixListener::bind(&staging).map_err(bind_err)?;
    let mode = if gid.is_some() { 0o660 } else { 0o600 };
    std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(mode)).map_err(perm_err)?;
    if let Some(gid) = gid {
        nix::unistd::chown(&staging, None, Some(gid))
            .map_err(|e| perm_err(std::io::Error::from(e)))?;
    }
    std::fs::rename(&staging, path).map_err(bind_err)?;
    Ok(listener)
}

pub async fn bind_tcp(addr: SocketAddr) -> Result<TcpListener, ApiError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ApiError::BindTcp { addr, source })
}

fn router<D: Dataplane + Send + 'static>(api: PisaApi<D>) -> Result<Router, ApiError> {
    // Both reflection versions: grpcurl and grpc-python's helpers still
    // speak v1alpha, newer tools v1.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection()
        .build_v1()
        .map_err(|source| ApiError::Reflection { source })?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .map_err(|source| ApiError::Reflection { source })?;
    Ok(Server::builder()
        .add_service(pb::pisa_daemon_server::PisaDaemonServer::new(api))
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha))
}

/// Serves the API on a Unix listener until `shutdown` resolves.
pub fn serve_unix<D: Dataplane + Send + 'static>(
    api: PisaApi<D>,
    listener: UnixListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<impl Future<Output = Result<(), tonic::transport::Error>>, ApiError> {
    Ok(router(api)?.serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown))
}

/// Serves the API on a TCP listener until `shutdown` resolves.
pub fn serve_tcp<D: Dataplane + Send + 'static>(
    api: PisaApi<D>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<impl Future<Output = Result<(), tonic::transport::Error>>, ApiError> {
    Ok(router(api)?.serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown))
}

/// The background work the API needs: rate samples for GetStats and the
/// sweep of expired tags. Runs until the runtime stops.
pub async fn housekeeping<D: Dataplane + Send + 'static>(api: PisaApi<D>) {
    let mut sample = tokio::time::interval(SAMPLE_INTERVAL);
    let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
    loop {
        tokio::select! {
            _ = sample.tick() => api.sample_rates(),
            _ = sweep.tick() => {
                let removed = api.sweep_tags();
                if removed > 0 {
                    tracing::debug!(removed, "expired flow tags removed");
                }
            }
        }
    }
}
