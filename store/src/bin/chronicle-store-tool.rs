//! Internal tool of the store crate: the benchmark (until it is reached
//! through `chronicle bench store`), the quick-repair study, and the child
//! process of the crash tests.
//!
//! ```text
//! chronicle-store-tool bench [--json] [--dir DIR]
//! chronicle-store-tool quick-repair [--dir DIR]
//! chronicle-store-tool crash-child DB WRITERS
//! ```

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use chronicle_store::{NewEvent, Seq, Store, StoreOptions, StreamId, bench};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = args
        .iter()
        .position(|a| a == "--dir")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    let json = args.iter().any(|a| a == "--json");
    let result = match args.first().map(String::as_str) {
        Some("bench") => bench::run(&dir).map(|b| {
            if json {
                println!(
                    "{}",
                    serde_json::to_string(&b).expect("plain struct serializes")
                );
            } else {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&b).expect("plain struct serializes")
                );
            }
        }),
        Some("quick-repair") => bench::quick_repair_study(&dir).map(|s| {
            println!(
                "{}",
                serde_json::to_string_pretty(&s).expect("plain struct serializes")
            )
        }),
        Some("crash-child") => crash_child(&args[1..]),
        _ => {
            eprintln!(
                "usage: chronicle-store-tool bench [--json] [--dir DIR] | quick-repair [--dir DIR] | crash-child DB WRITERS"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(3)
        }
    }
}

/// Append forever from WRITERS concurrent tasks (stream `crash:W`), and
/// print `STREAM SEQ HASH` for every acknowledged event, flushed, so the
/// parent knows exactly what was acknowledged before it kills us.
fn crash_child(args: &[String]) -> Result<(), chronicle_store::StoreError> {
    let db = PathBuf::from(args.first().map(String::as_str).unwrap_or("crash.redb"));
    let writers: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(4);
    let store = Store::open(&db, StoreOptions::default())?;
    let rt = tokio::runtime::Runtime::new().map_err(|source| chronicle_store::StoreError::Io {
        path: db.clone(),
        source,
    })?;
    rt.block_on(async move {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        for w in 0..writers {
            let store = store.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let stream = StreamId::named(format!("crash:{w}"))?;
                let mut seq = store.head(&stream)?.map(|h| h.last_seq).unwrap_or(Seq(0));
                let mut i = 0u64;
                loop {
                    let n = 1 + (i % 3) as usize;
                    let events = (0..n)
                        .map(|k| NewEvent::new(1, bench::sample_payload(i + k as u64)))
                        .collect();
                    let done = store.append(stream.clone(), seq, events).await?;
                    for env in &done {
                        let _ = tx.send(format!("{} {} {}", env.stream, env.seq, env.hash_hex()));
                    }
                    seq = done.last().map(|e| e.seq).unwrap_or(seq);
                    i += n as u64;
                }
                #[allow(unreachable_code)]
                Ok::<(), chronicle_store::StoreError>(())
            });
        }
        drop(tx);
        let mut out = std::io::stdout().lock();
        while let Some(line) = rx.recv().await {
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
    });
    Ok(())
}
