//! Connecting to PostgreSQL: the database URL (recognized, redacted for
//! messages, parsed with its TLS settings), the connection timeout and its
//! errors, and creating a fresh database for tests and set-up scripts.

use std::sync::Arc;

use super::pg_error;
use crate::error::StoreError;

/// True when `location` names a PostgreSQL database (`postgres://` or
/// `postgresql://`) rather than a redb file path.
pub fn is_postgres_url(location: &str) -> bool {
    location.starts_with("postgres://") || location.starts_with("postgresql://")
}

/// `url` with any password replaced by `***`, for messages and
/// [`crate::Store::path`].
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (auth, host) = match rest.split_once('@') {
        Some((a, h)) => (Some(a), h),
        None => (None, rest),
    };
    match auth {
        Some(a) => match a.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
            None => format!("{scheme}://{a}@{host}"),
        },
        None => url.to_string(),
    }
}

/// How long a connection to the server may take, start-up included, when
/// the URL gives no `connect_timeout`: 10 s (libpq waits forever by
/// default; a CLI command or a worker should rather say that the server
/// does not answer).
pub(crate) const DEFAULT_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The connection timeout of `config` (set by `connect_config`).
pub(crate) fn connect_timeout(config: &tokio_postgres::Config) -> std::time::Duration {
    config
        .get_connect_timeout()
        .copied()
        .unwrap_or(DEFAULT_CONNECT_TIMEOUT)
}

/// The error of a connection that did not complete within `timeout`.
pub(crate) fn pg_timeout_error(target: &str, timeout: std::time::Duration) -> StoreError {
    pg_error(
        target,
        format!(
            "the server did not answer within {} s (connect_timeout); check that the server is running and reachable, and the URL",
            timeout.as_secs_f64()
        ),
    )
}

/// [`pg_error`] for a connection that could not be made: the message says
/// what to check.
pub(crate) fn pg_connect_error(target: &str, e: impl std::error::Error) -> StoreError {
    // With its causes: "error performing TLS handshake" alone does not say
    // that the server's certificate is not trusted.
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message = format!("{message}: {text}");
        }
        source = cause.source();
    }
    pg_error(
        target,
        format!("{message}; check that the server is running, the URL and the credentials"),
    )
}

/// The connection settings of `url`, and a rustls connector when the URL
/// asks for TLS (`sslmode=require`; `sslrootcert=PATH` names the CA to
/// trust, which tokio-postgres does not parse itself).
pub(super) fn connect_config(
    url: &str,
    target: &str,
) -> Result<
    (
        tokio_postgres::Config,
        Option<tokio_postgres_rustls::MakeRustlsConnect>,
    ),
    StoreError,
> {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, q),
        None => (url, ""),
    };
    let mut root_cert = None;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .filter(|kv| match kv.strip_prefix("sslrootcert=") {
            Some(path) => {
                root_cert = Some(path.to_string());
                false
            }
            None => true,
        })
        .collect();
    let url = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    let mut config: tokio_postgres::Config = url
        .parse()
        .map_err(|e| pg_error(target, format!("a malformed database URL: {e}")))?;
    if config.get_application_name().is_none() {
        config.application_name("chronicle");
    }
    // A server that accepts a connection and never answers (wedged, or a
    // proxy whose backend is gone) must not hang the caller: each
    // connection, its start-up included, has this long (the URL's
    // `connect_timeout`, seconds, when it gives one).
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(DEFAULT_CONNECT_TIMEOUT);
    }
    // Acknowledged means committed: whatever the server's default, every
    // commit of this client waits for its WAL to be flushed. Generic plans:
    // every statement of this client looks rows up by key (`= ANY($1)`,
    // `unnest`), which a generic plan does as well as a custom one, without
    // planning each execution again (about a tenth of the server's CPU per
    // run in `chronicle bench workers`, 2026-11-30).
    let ours = "-c synchronous_commit=on -c plan_cache_mode=force_generic_plan";
    let options = match config.get_options() {
        Some(o) => format!("{o} {ours}"),
        None => ours.to_string(),
    };
    config.options(&options);
    let tls = match config.get_ssl_mode() {
        tokio_postgres::config::SslMode::Require => {
            let mut roots = rustls::RootCertStore::empty();
            match &root_cert {
                Some(path) => {
                    let pem = std::fs::read(path).map_err(|e| {
                        pg_error(target, format!("cannot read sslrootcert {path}: {e}"))
                    })?;
                    use rustls::pki_types::pem::PemObject;
                    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
                        let cert = cert.map_err(|e| {
                            pg_error(target, format!("sslrootcert {path} is not PEM: {e}"))
                        })?;
                        roots
                            .add(cert)
                            .map_err(|e| pg_error(target, format!("sslrootcert {path}: {e}")))?;
                    }
                }
                None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            }
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            let client = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| pg_error(target, e))?
                .with_root_certificates(roots)
                .with_no_client_auth();
            Some(tokio_postgres_rustls::MakeRustlsConnect::new(client))
        }
        _ => None,
    };
    Ok((config, tls))
}

/// Create the database `name` on the server `url` points to (connecting to
/// the URL's own database), and return `url` naming `name` instead: for
/// test suites and set-up scripts that want a fresh database.
///
/// Errors: [`StoreError::Postgres`] when the server cannot be reached or
/// refuses (a taken name, no `CREATEDB` right).
pub fn create_postgres_database(url: &str, name: &str) -> Result<String, StoreError> {
    let target = redact_url(url);
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(pg_error(
            &target,
            format!("{name:?} is not a plain database name"),
        ));
    }
    let (config, tls) = connect_config(url, &target)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| pg_error(&target, e))?;
    let timeout = connect_timeout(&config);
    rt.block_on(async {
        let connecting = async {
            Ok::<_, StoreError>(match tls {
                Some(tls) => {
                    let (c, conn) = config
                        .connect(tls)
                        .await
                        .map_err(|e| pg_connect_error(&target, e))?;
                    tokio::spawn(conn);
                    c
                }
                None => {
                    let (c, conn) = config
                        .connect(tokio_postgres::NoTls)
                        .await
                        .map_err(|e| pg_connect_error(&target, e))?;
                    tokio::spawn(conn);
                    c
                }
            })
        };
        let client = tokio::time::timeout(timeout, connecting)
            .await
            .map_err(|_| pg_timeout_error(&target, timeout))??;
        client
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .map_err(|e| pg_error(&target, e))
    })?;
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let (scheme, rest) = base.split_once("://").unwrap_or(("postgres", base));
    let authority = rest.split('/').next().unwrap_or(rest);
    Ok(match query {
        Some(q) => format!("{scheme}://{authority}/{name}?{q}"),
        None => format!("{scheme}://{authority}/{name}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_recognized_and_redacted() {
        assert!(is_postgres_url("postgres://u@h/db"));
        assert!(is_postgres_url("postgresql://u@h/db"));
        assert!(!is_postgres_url("chronicle.redb"));
        assert_eq!(
            redact_url("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact_url("postgres://h/db"), "postgres://h/db");
    }
}
