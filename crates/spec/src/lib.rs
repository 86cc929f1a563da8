//! The MicroVM definition: what a user writes (`schema`), how it is read (`load`:
//! TOML or JSON, imports merged), and what it resolves to (`config`: defaults filled,
//! paths absolute, every check of microvm.nix passed), with compiler-style diagnostics.
#![forbid(unsafe_code)]

pub mod config;
pub mod de;
pub mod diag;
pub mod forward;
pub mod load;
pub mod node;
pub mod ranges;
pub mod resolve;
pub mod schema;
pub mod source;
pub mod ssh_key;
pub mod types;

pub use load::{load_file, load_with, LoadFailure, LoadOptions, Loaded};
