//! Integration tests: the real binary, real agents, a real receiver, real files.

mod auth;
mod cli;
mod contract;
mod delivery;
mod demo;
mod fleet;
mod folder;
mod helpers;
mod lifecycle;
mod links;
mod modes;
mod ops;
mod pki;
mod run;
mod secure;
mod systemd;
mod trigger;
mod watch;
