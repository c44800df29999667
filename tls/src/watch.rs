//! Rotation by replacing files: whoever renews a certificate (the operator
//! through the agent, an admin, cert-manager through a mounted Secret) writes
//! new files, and the holder picks them up here.

use std::path::PathBuf;
use std::time::Duration;

use crate::{Material, TlsError};

/// Re-reads `dir` every `every` and calls `apply` with the files whenever they
/// differ from what was last applied. Half-written or broken files are logged
/// and skipped: the old certificate stays in use until good ones appear.
pub fn watch_dir<F>(
    dir: PathBuf,
    every: Duration,
    mut current: Material,
    apply: F,
) -> tokio::task::JoinHandle<()>
where
    F: Fn(&Material) -> Result<(), TlsError> + Send + 'static,
{
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let dir2 = dir.clone();
            let read = tokio::task::spawn_blocking(move || Material::read_dir(&dir2)).await;
            let fresh = match read {
                Ok(Ok(m)) => m,
                Ok(Err(e)) => {
                    tracing::warn!(
                        "TLS files in {} are unusable, keeping the old ones: {e}",
                        dir.display()
                    );
                    continue;
                }
                Err(_) => continue,
            };
            if fresh == current {
                continue;
            }
            match apply(&fresh) {
                Ok(()) => {
                    tracing::info!(
                        "TLS certificate in {} renewed; new connections use it",
                        dir.display()
                    );
                    current = fresh;
                }
                Err(e) => tracing::warn!("TLS files in {} were not applied: {e}", dir.display()),
            }
        }
    })
}
