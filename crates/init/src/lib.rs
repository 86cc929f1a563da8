//! The guest side of microvm: the plan the host writes into the initrd, and (in the
//! binary) the PID 1 that carries it out.
#![forbid(unsafe_code)]

pub mod plan;
