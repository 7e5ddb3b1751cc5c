//! The store's benchmark and the quick-repair study, without the CLI
//! (`chronicle bench store` runs the same benchmark).
//!
//! ```text
//! chronicle-store-tool bench [--json] [--dir DIR]
//! chronicle-store-tool quick-repair [--dir DIR]
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use chronicle_bench::store as bench;

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
        _ => {
            eprintln!(
                "usage: chronicle-store-tool bench [--json] [--dir DIR] | quick-repair [--dir DIR]"
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
