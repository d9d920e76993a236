//! vpnlab: rebuilds documented VPN troubleshooting recipes as real labs on Linux network
//! namespaces, with real daemons, and compares each scenario's transcript with a snapshot.
//!
//! Data flows one way: lab file -> [`model`] (validated) -> [`topology`] + [`process`] (built lab)
//! -> [`runner`] (steps) -> [`transcript`] -> [`snapshot`]. See ARCHITECTURE.md.

pub mod backend;
pub mod bench;
pub mod capture;
pub mod completions;
pub mod config;
pub mod counters;
pub mod diagram;
pub mod doctor;
pub mod drops;
pub mod env;
pub mod error;
pub mod facts;
pub mod html;
pub mod impair;
pub mod judge;
pub mod junit;
pub mod matrix;
/// The lab model (its own crate, `model/`): everything a lab file can say, validated.
pub use vpnlab_model as model;
pub mod narrate;
pub mod newlab;
pub mod ns;
pub mod pki;
pub mod probe;
pub mod process;
pub mod pty;
pub mod reexec;
pub mod report;
pub mod runner;
pub mod session;
pub mod shard;
pub mod snapshot;
pub mod suite;
pub mod topology;
pub mod trace;
pub mod transcript;
pub mod versions;
pub mod with;
pub mod workdir;
