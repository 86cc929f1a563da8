//! The guest side of microvm: the plan the host writes into the initrd, and (in the
//! binary) the PID 1 that carries it out. The library holds what is pure and testable
//! on the host: the plan, superblock label probing, rtnetlink message encoding.
#![forbid(unsafe_code)]

pub mod dhcp;
pub mod label;
pub mod plan;
pub mod rtnl;
