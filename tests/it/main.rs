//! Integration tests: the real binary, real agents, a real receiver, real files.

mod cli;
mod delivery;
mod demo;
mod helpers;
mod run;
mod trigger;
