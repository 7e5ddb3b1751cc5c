//! Rebuild when the web UI's files change: they are embedded with
//! `include_dir!`, which cargo does not track by itself on stable Rust.
fn main() {
    println!("cargo:rerun-if-changed=ui");
}
