//! End-to-end tests of the `chronicle` binary: every command and exit
//! code, bad inputs pinned by snapshots, the log-audit example on the
//! shipped logs, and kill -9 crash recovery.

mod support;

mod bad_inputs;
mod commands;
mod crash;
mod damage;
mod examples;
mod journal;
mod server;
mod terminal;
mod ui;
mod upgrade;
mod walkthrough;
mod workers;
