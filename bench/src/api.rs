//! `chronicle bench api`: the HTTP API against the engine it serves.
//!
//! A server runs in this process on 127.0.0.1 (a fresh database, three
//! registered no-op functions), with the 3-step workflow `a → b → c`
//! registered as `bench`. Each API run is `POST /v1/runs` then
//! `GET /v1/runs/{id}?wait=60s` until it has ended, over real HTTP/1.1
//! connections. The baseline is the same workload on the same engine in
//! process (`Engine::start` then `Engine::wait`), measured in the same
//! run: the ratio is the figure to read.

use std::path::Path;
use std::time::{Duration, Instant};

use chronicle_engine::model::parse_definition;
use chronicle_engine::runtime::{EngineBuilder, EngineError};
use chronicle_server::client::Client;
use chronicle_server::{Method, ServeOptions};
use serde::Serialize;
use serde_json::json;

/// The figures; `--json` prints exactly these keys.
#[derive(Clone, Debug, Serialize)]
pub struct ApiBench {
    /// One run at a time through the API: median latency, milliseconds.
    pub api_run_p50_ms: f64,
    /// One run at a time through the API: 99th percentile, milliseconds.
    pub api_run_p99_ms: f64,
    /// One run at a time in process: median latency, milliseconds.
    pub run_p50_ms: f64,
    /// Runs per second through the API, 32 concurrent clients.
    pub api_runs_per_s_32: f64,
    /// Runs per second in process, 32 concurrent callers (the baseline).
    pub runs_per_s_32: f64,
    /// `api_runs_per_s_32 / runs_per_s_32` (target ≥ 0.5).
    pub api_over_in_process: f64,
    /// `GET /healthz` per second, 32 concurrent clients: what the HTTP
    /// layer alone (client and server in this process) can carry.
    pub healthz_per_s_32: f64,
    /// Runs in each throughput measurement.
    pub runs: usize,
}

const DEFINITION: &str = "name: bench\nsteps:\n  - id: a\n    function: noop_a\n  - id: b\n    needs: [a]\n    function: noop_b\n  - id: c\n    needs: [b]\n    function: noop_c\n";
const RUNS: usize = 4000;
const CLIENTS: usize = 32;
const SEQUENTIAL: usize = 200;

fn io(dir: &Path, e: impl std::fmt::Display) -> EngineError {
    EngineError::Store(chronicle_store::StoreError::Io {
        path: dir.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    })
}

async fn api_run(c: &Client) -> Result<(), String> {
    let (_, v) = c
        .send_json(
            Method::POST,
            "/v1/runs",
            &json!({"workflow_name": "bench"}),
            &[],
        )
        .await
        .map_err(|p| p.detail)?;
    let run = v["run_id"].as_str().ok_or("no run_id")?.to_string();
    loop {
        let s = c
            .get_json(&format!("/v1/runs/{run}?wait=60s"))
            .await
            .map_err(|p| p.detail)?;
        match s["status"].as_str() {
            Some("succeeded") => return Ok(()),
            Some("running" | "pending") => continue,
            other => return Err(format!("a bench run ended {other:?}")),
        }
    }
}

/// Run the benchmark in `dir`.
pub fn run(dir: &Path) -> Result<ApiBench, EngineError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| io(dir, e))?;
    rt.block_on(async {
        let path = dir.join("bench-api.redb");
        chronicle_store::remove_database(&path);
        let _ = std::fs::remove_file(chronicle_store::token_path(&path));
        let mut builder = EngineBuilder::new()
            .db(&path)
            .workdir(dir)
            .max_parallel(4096)
            .snapshot_every(0);
        for f in ["noop_a", "noop_b", "noop_c"] {
            builder = builder.function(f, |_c| async { Ok(json!(null)) });
        }
        let engine = builder.build()?;
        let wf = parse_definition("bench.yaml", DEFINITION).expect("the bench workflow is valid");
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (url_tx, url_rx) = tokio::sync::oneshot::channel::<String>();
        let server = {
            let (engine, path) = (engine.clone(), path.clone());
            tokio::spawn(async move {
                let options = ServeOptions {
                    listen: "127.0.0.1:0".parse().expect("an address"),
                    grace: Duration::from_secs(5),
                    ..Default::default()
                };
                chronicle_server::serve(
                    engine,
                    &path,
                    options,
                    move |url| {
                        let _ = url_tx.send(url.to_string());
                    },
                    async move {
                        let _ = stop_rx.await;
                        "the end of the benchmark".to_string()
                    },
                )
                .await
            })
        };
        let url = url_rx.await.map_err(|e| io(dir, e))?;
        let token =
            chronicle_server::auth::client_token(&path).ok_or_else(|| io(dir, "no token"))?;
        let client = Client::new(&url, &token, None).map_err(|p| io(dir, p.detail))?;
        let put = client
            .send(
                Method::PUT,
                "/v1/workflows/bench",
                Some(("application/yaml", DEFINITION.as_bytes().to_vec())),
                &[],
            )
            .await
            .map_err(|p| io(dir, p.detail))?;
        drop(put);
        // Warm-up, then one run at a time, alternating API and in-process.
        for _ in 0..50 {
            api_run(&client).await.map_err(|e| io(dir, e))?;
        }
        let (mut api_lat, mut lat) = (Vec::new(), Vec::new());
        for _ in 0..SEQUENTIAL {
            let t = Instant::now();
            api_run(&client).await.map_err(|e| io(dir, e))?;
            api_lat.push(t.elapsed().as_secs_f64() * 1e3);
            let t = Instant::now();
            let run = engine.start(wf.clone(), json!({}), None).await?;
            engine.wait(run).await?;
            lat.push(t.elapsed().as_secs_f64() * 1e3);
        }
        // Throughput: in process, then through the API, then in process
        // again (the baseline is the mean of the two).
        let in_process = |engine: chronicle_engine::runtime::Engine| {
            let wf = wf.clone();
            async move {
                let t = Instant::now();
                let mut tasks = tokio::task::JoinSet::new();
                for i in 0..CLIENTS {
                    let (engine, wf) = (engine.clone(), wf.clone());
                    tasks.spawn(async move {
                        for _ in (i..RUNS).step_by(CLIENTS) {
                            let run = engine.start(wf.clone(), json!({}), None).await?;
                            engine.wait(run).await?;
                        }
                        Ok::<_, EngineError>(())
                    });
                }
                while let Some(r) = tasks.join_next().await {
                    r.map_err(|e| io(Path::new("."), e))??;
                }
                Ok::<_, EngineError>(RUNS as f64 / t.elapsed().as_secs_f64())
            }
        };
        let base1 = in_process(engine.clone()).await?;
        let t = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..CLIENTS {
            let c = client.clone();
            tasks.spawn(async move {
                for _ in (i..RUNS).step_by(CLIENTS) {
                    api_run(&c).await?;
                }
                Ok::<_, String>(())
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.map_err(|e| io(dir, e))?.map_err(|e| io(dir, e))?;
        }
        let api_rate = RUNS as f64 / t.elapsed().as_secs_f64();
        // The HTTP layer alone: the same clients on a route that does
        // nothing (`/healthz`), for the reading of the ratio above.
        let t = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..CLIENTS {
            let c = client.clone();
            tasks.spawn(async move {
                for _ in (i..RUNS * 4).step_by(CLIENTS) {
                    c.get_json("/healthz").await.map_err(|p| p.detail)?;
                }
                Ok::<_, String>(())
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.map_err(|e| io(dir, e))?.map_err(|e| io(dir, e))?;
        }
        let healthz_rate = (RUNS * 4) as f64 / t.elapsed().as_secs_f64();
        let base2 = in_process(engine.clone()).await?;
        let _ = stop_tx.send(());
        server
            .await
            .map_err(|e| io(dir, e))?
            .map_err(|e| io(dir, e))?;
        drop(engine);
        chronicle_store::remove_database(&path);
        let base = (base1 + base2) / 2.0;
        Ok(ApiBench {
            api_run_p50_ms: crate::store::percentile(&mut api_lat, 0.5),
            api_run_p99_ms: crate::store::percentile(&mut api_lat, 0.99),
            run_p50_ms: crate::store::percentile(&mut lat, 0.5),
            api_runs_per_s_32: api_rate,
            runs_per_s_32: base,
            api_over_in_process: api_rate / base,
            healthz_per_s_32: healthz_rate,
            runs: RUNS,
        })
    })
}
