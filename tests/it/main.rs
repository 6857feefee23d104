//! Integration tests: the real binary, real agents, a real receiver, real files.

mod auth;
mod cli;
mod contract;
mod delivery;
mod demo;
mod docs;
mod fleet;
mod folder;
mod guardian;
mod helpers;
mod idempotency;
mod lifecycle;
mod links;
mod modes;
mod openapi;
mod ops;
mod pki;
mod queue;
mod reload;
mod rerun;
mod run;
mod secure;
mod store_down;
mod systemd;
mod trigger;
mod watch;
