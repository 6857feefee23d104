//! Tools built into the binary beside the daemon: they use the core, the core never uses them.

pub mod consumer_check;
pub mod demo;
