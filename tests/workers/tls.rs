//! TLS to PostgreSQL (`sslmode=require`, rustls): a worker and the CLI
//! connect over TLS to a server whose certificate a private CA signed
//! (`sslrootcert=PATH`), every one of their connections is encrypted (the
//! server's `pg_stat_ssl` says so), and without the CA the connection is
//! refused with a message that names the certificate and not the password.
//!
//! The test server's certificate is replaced for the test (`ALTER SYSTEM`,
//! reloaded) and restored after: it needs the test server on this machine
//! and a superuser, as `scripts/test`'s throwaway cluster is. The other
//! tests do not ask for TLS, so they are not affected meanwhile.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::{Duration, Instant};

use super::{admin, admin_value, chronicle, fresh_postgres, wait_succeeded, worker};
use crate::support::Env;

/// The server's TLS settings as the test found them, put back on drop
/// (also when the test fails).
struct ServerCertificate {
    dir: std::path::PathBuf,
}

impl ServerCertificate {
    /// Make the test server present a certificate for `localhost` and
    /// 127.0.0.1 signed by a new CA; returns the guard and the CA's PEM.
    fn install() -> (Self, String) {
        let data = std::path::PathBuf::from(admin_value("SHOW data_directory"));
        let meta = std::fs::metadata(&data).unwrap_or_else(|e| {
            panic!(
                "the TLS test needs the test server on this machine (its data directory {} is not here: {e})",
                data.display()
            )
        });
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "chronicle test CA");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        // In the data directory, owned by the server's user, the key
        // readable by it alone (PostgreSQL refuses a key others can read).
        let dir = data.join(format!("chronicle_tls_{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir(&dir).unwrap();
        let (crt, pem) = (dir.join("server.crt"), dir.join("server.key"));
        std::fs::write(&crt, cert.pem()).unwrap();
        std::fs::write(&pem, key.serialize_pem()).unwrap();
        for p in [&dir, &crt, &pem] {
            std::os::unix::fs::chown(p, Some(meta.uid()), Some(meta.gid())).unwrap();
        }
        std::fs::set_permissions(&pem, std::fs::Permissions::from_mode(0o600)).unwrap();
        // One statement per call: ALTER SYSTEM is not allowed in the
        // implicit transaction of several.
        admin("ALTER SYSTEM SET ssl = on");
        admin(&format!(
            "ALTER SYSTEM SET ssl_cert_file = '{}'",
            crt.display()
        ));
        admin(&format!(
            "ALTER SYSTEM SET ssl_key_file = '{}'",
            pem.display()
        ));
        admin("SELECT pg_reload_conf()");
        // The reload is asynchronous: wait until the server says so.
        let t = Instant::now();
        while admin_value("SHOW ssl_cert_file") != crt.display().to_string() {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "the server did not reload"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        (Self { dir }, ca_cert.pem())
    }
}

impl Drop for ServerCertificate {
    fn drop(&mut self) {
        for setting in ["ssl", "ssl_cert_file", "ssl_key_file"] {
            admin(&format!("ALTER SYSTEM RESET {setting}"));
        }
        admin("SELECT pg_reload_conf()");
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn workers_and_the_cli_reach_postgres_over_tls_and_refuse_an_unknown_certificate() {
    let env = Env::new();
    let (_server, ca) = ServerCertificate::install();
    let ca_path = env.write("ca.pem", &ca);
    let plain = fresh_postgres();
    let db = plain.rsplit('/').next().unwrap().to_string();
    let tls = format!("{plain}?sslmode=require&sslrootcert={}", ca_path.display());

    let mut w = worker(&env, &tls, "5s", "w.log");
    let wf = env.write(
        "tls.yaml",
        "name: tls\nsteps:\n  - id: a\n    command: [sh, -c, 'sleep 1; echo over tls']\n  - id: b\n    needs: [a]\n    command: [echo, done]\n",
    );
    let run = chronicle(&env, &tls, &["run", wf.to_str().unwrap(), "--detach"]);
    assert_eq!(run.code, 0, "{run:?}");
    let run = run.stdout.trim().to_string();
    // While the worker runs: every connection of Chronicle's to this
    // database is encrypted, and there is at least the worker's.
    let t = Instant::now();
    let (encrypted, plain_conns) = loop {
        let counts = admin_value(&format!(
            "SELECT count(*) FILTER (WHERE s.ssl) || ',' || count(*) FILTER (WHERE NOT s.ssl) \
             FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
             WHERE a.datname = '{db}' AND a.application_name = 'chronicle'"
        ));
        let (e, p) = counts.split_once(',').unwrap();
        let (e, p): (u32, u32) = (e.parse().unwrap(), p.parse().unwrap());
        if e > 0 || t.elapsed() > Duration::from_secs(10) {
            break (e, p);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(encrypted > 0, "no encrypted connection of the worker");
    assert_eq!(plain_conns, 0, "a connection without TLS");
    wait_succeeded(&env, &tls, std::slice::from_ref(&run));
    let shown = chronicle(&env, &tls, &["history", &run, "--json"]);
    assert!(
        shown.stdout.contains("over tls"),
        "the step's output: {shown:?}"
    );
    let _ = w.kill();
    let _ = w.wait();

    // Without the CA: the web PKI's roots do not know the server's
    // certificate. A clear error, non-zero, and the password stays out.
    let untrusted = format!("{plain}?sslmode=require");
    let refused = chronicle(&env, &untrusted, &["list"]);
    assert_ne!(refused.code, 0, "{refused:?}");
    assert!(
        refused.stderr.to_lowercase().contains("certificate"),
        "the error does not name the certificate: {refused:?}"
    );
    let password = plain
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
        .and_then(|(auth, _)| auth.split_once(':'))
        .map(|(_, pw)| pw.to_string())
        .unwrap_or_default();
    assert!(!password.is_empty(), "the test server's URL has a password");
    assert!(
        !refused.stderr.contains(&format!(":{password}@")) && refused.stderr.contains(":***@"),
        "the password is not redacted in the error: {refused:?}"
    );
}
