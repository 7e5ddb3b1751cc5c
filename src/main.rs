//! The `chronicle` command-line interface.

fn main() {}
