//! The tests' browser: a headless Chromium under its own chromedriver
//! (fantoccini), with the waits and screenshots the UI tests use.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder};
use serde_json::{Value, json};

use crate::support::root;

/// One browser at a time: Chromium is heavy on a 2-core machine.
pub(super) static ONE_BROWSER: Mutex<()> = Mutex::new(());

const INSTALL: &str = "the web UI tests need Chromium and chromedriver from the Debian packages: apt-get install -y --no-install-recommends chromium chromium-driver";

/// A headless Chromium under its own chromedriver.
pub(super) struct Browser {
    driver: Child,
    pub(super) c: Client,
}

impl Browser {
    pub(super) async fn start() -> Browser {
        // fantoccini's client takes the process's rustls provider (it is
        // only used for https; chromedriver is plain HTTP on loopback).
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start chromedriver ({e}): {INSTALL}"));
        let binary = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .unwrap_or_else(|| panic!("no Chromium binary: {INSTALL}"));
        let caps = json!({
            "binary": binary,
            "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", "--window-size=1280,800", "--lang=en-US"],
        });
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("goog:chromeOptions".into(), caps);
        let t = Instant::now();
        loop {
            let attempt = ClientBuilder::rustls()
                .unwrap()
                .capabilities(capabilities.clone())
                .connect(&format!("http://127.0.0.1:{port}"))
                .await;
            match attempt {
                Ok(c) => return Browser { driver, c },
                Err(e) if t.elapsed() < Duration::from_secs(30) => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("chromedriver never took a session: {e}"),
            }
        }
    }

    pub(super) async fn js(&self, script: &str) -> Value {
        self.c
            .execute(script, vec![])
            .await
            .unwrap_or_else(|e| panic!("script failed ({e}): {script}"))
    }

    /// Poll `script` until it returns something truthy (not null, false,
    /// 0 or ""); panics after `secs` seconds naming `what`.
    pub(super) async fn wait(&self, what: &str, secs: u64, script: &str) -> Value {
        let t = Instant::now();
        loop {
            let v = self.c.execute(script, vec![]).await.unwrap_or(Value::Null);
            let truthy = match &v {
                Value::Null | Value::Bool(false) => false,
                Value::String(s) => !s.is_empty(),
                Value::Number(n) => n.as_f64() != Some(0.0),
                _ => true,
            };
            if truthy {
                return v;
            }
            assert!(
                t.elapsed() < Duration::from_secs(secs),
                "{what}: not within {secs}s (last {v}); page: {}",
                self.js("return document.body.innerText.slice(0, 2000)")
                    .await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Wait until the graph's `{step: status}` equals `want` (10 s).
    pub(super) async fn wait_graph(&self, what: &str, want: &Value) {
        let t = Instant::now();
        loop {
            let shown = self.js(GRAPH).await;
            if &shown == want {
                return;
            }
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "{what}: shown {shown}, want {want}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub(super) async fn path(&self) -> String {
        let u = self.c.current_url().await.unwrap();
        match u.query() {
            Some(q) => format!("{}?{q}", u.path()),
            None => u.path().to_string(),
        }
    }

    pub(super) async fn screenshot(&self, name: &str) {
        let dir = screenshots();
        std::fs::create_dir_all(&dir).unwrap();
        let png = self.c.screenshot().await.unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        std::fs::write(dir.join(name), png).unwrap();
    }

    pub(super) async fn close(mut self) {
        let _ = self.c.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

pub(super) fn screenshots() -> PathBuf {
    root().join("target/ui-screenshots")
}

pub(super) fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The page's step statuses: `{step: status}` from the graph.
pub(super) const GRAPH: &str = "return Object.fromEntries([...document.querySelectorAll('#graph [data-step]')].map(g => [g.dataset.step, g.dataset.status]))";
