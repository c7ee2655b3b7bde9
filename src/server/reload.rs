//! Re-reading `[auth]` and `[tls]` while serving, on SIGHUP, so a token can
//! be revoked (or a client CA rotated) without a restart.
//!
//! On SIGHUP the configuration file is loaded again, with the environment
//! the server started with. Its `[auth]` tokens and its `[tls]` acceptor
//! (certificate, key and client CAs) replace those in force, together or not
//! at all: a file that does not load, tokens that do not validate, a
//! certificate or CA that does not load, a file without tokens while tokens
//! are in force, or TLS turned on or off (which takes a restart) are logged
//! and the settings in force are kept. Nothing else in the file is applied
//! before a restart. Calls in flight and open connections are untouched;
//! the next call of every connection is checked against the new tokens, the
//! next handshake uses the new acceptor.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use super::tls::SharedAcceptor;
use crate::auth::AuthState;
use crate::config::Config;

/// What SIGHUP reloads from: the configuration file and the environment the
/// server was started with (`None` without a file: nothing to re-read).
#[derive(Debug)]
pub struct Reload {
    file: Option<PathBuf>,
    env: HashMap<String, String>,
    #[cfg(unix)]
    hangups: tokio::signal::unix::Signal,
}

impl Reload {
    /// Starts listening for SIGHUP now. Call it before anything slow at
    /// start: until a handler is registered, SIGHUP ends the process.
    /// Must be called inside a tokio runtime.
    pub fn on_hangup(file: Option<PathBuf>, env: HashMap<String, String>) -> std::io::Result<Self> {
        Ok(Self {
            file,
            env,
            #[cfg(unix)]
            hangups: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?,
        })
    }

    /// Reloads `targets` on every SIGHUP, until dropped.
    pub(super) async fn run(mut self, targets: Targets) {
        #[cfg(unix)]
        while self.hangups.recv().await.is_some() {
            self.apply(&targets);
        }
        #[cfg(not(unix))]
        {
            let _ = &mut self;
            let _ = targets;
            std::future::pending::<()>().await;
        }
    }

    fn apply(&self, targets: &Targets) {
        let Some(file) = &self.file else {
            tracing::warn!("SIGHUP: the server was started without a configuration file (--config, TIERKV_CONFIG); nothing to reload");
            return;
        };
        match reload(file, &self.env, targets) {
            Ok(done) => tracing::info!(
                config = %file.display(),
                auth_tokens = done.tokens,
                tls_reloaded = done.tls,
                "SIGHUP: reloaded [auth] and [tls]"
            ),
            Err(error) => tracing::error!(
                config = %file.display(),
                %error,
                "SIGHUP: the configuration cannot be reloaded; keeping the current tokens and TLS settings"
            ),
        }
    }
}

/// The settings a reload replaces.
#[derive(Debug, Clone)]
pub(super) struct Targets {
    /// The tokens in force.
    pub auth: Arc<AuthState>,
    /// The TLS acceptor in force, when TLS is on.
    pub tls: Option<SharedAcceptor>,
}

/// What a reload put in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Reloaded {
    tokens: usize,
    tls: bool,
}

fn reload(
    file: &std::path::Path,
    env: &HashMap<String, String>,
    targets: &Targets,
) -> Result<Reloaded, String> {
    let config = Config::load(Some(file), env).map_err(|error| error.to_string())?;
    // Everything that can fail runs before anything is replaced, so a
    // reload applies whole or not at all.
    let acceptor = match (&targets.tls, super::tls::acceptor(&config.tls)?) {
        (Some(_), Some(acceptor)) => Some(acceptor),
        (None, None) => None,
        (Some(_), None) => {
            return Err(
                "[tls] is off in the file while TLS is on: turning TLS off takes a restart".into(),
            )
        }
        (None, Some(_)) => {
            return Err(
                "[tls] is on in the file while TLS is off: turning TLS on takes a restart".into(),
            )
        }
    };
    let tokens = targets
        .auth
        .reload(&config.auth)
        .map_err(|error| format!("invalid configuration: {error}"))?;
    for name in config.auth.deprecated_admin_tokens() {
        tracing::warn!(
            token = name,
            "permission `admin` is deprecated: grant stats, migrate, backup and/or drop instead"
        );
    }
    let tls = match (&targets.tls, acceptor) {
        (Some(shared), Some(acceptor)) => {
            shared.replace(acceptor);
            true
        }
        _ => false,
    };
    Ok(Reloaded { tokens, tls })
}
