//! `pisa-daemon run`: signals become the loop's control messages; the
//! loop itself is `pisa_daemon::daemon`.

use anyhow::{Context, Result};
use pisa_daemon::daemon::{run_node, Control, NodeConfig};
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::mpsc,
};
use tracing::info;

pub async fn run(config: NodeConfig) -> Result<()> {
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
    let (control, commands) = mpsc::channel(4);
    tokio::spawn(async move {
        loop {
            let command = tokio::select! {
                _ = term.recv() => { info!("SIGTERM"); Control::Shutdown }
                _ = int.recv() => { info!("SIGINT"); Control::Shutdown }
                _ = hup.recv() => { info!("SIGHUP"); Control::Reload }
            };
            if control.send(command).await.is_err() || command == Control::Shutdown {
                return;
            }
        }
    });
    run_node(config, commands).await?;
    Ok(())
}
