//! airlock's core: domain types, the closed set of actions, authorization, and the engine that
//! executes actions through narrow ports (store, runtime, clock). It does no I/O of its own.

pub mod access;
pub mod action;
pub mod admission;
pub mod audit;
pub mod authz;
pub mod engine;
pub mod error;
pub mod ids;
pub mod model;
pub mod policy;
pub mod ports;
pub mod rate_limit;
pub mod secret;
pub mod session;

pub use action::{Action, Reply};
pub use engine::{
    Engine, ExternalIdentity, Origin, PoolReport, ReapReport, ReconcileReport, SweepReport,
};
pub use error::{Error, Invalid};
