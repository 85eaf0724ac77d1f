//! site-admin: keeps the TLS certificates of the web sites on an appliance
//! device right through each site's whole life. Its contract is docs/design.md.
//!
//! The ground floor, pure and importing no module that does I/O: [`model`]
//! (plain shared data), [`decide`] (the decision table), [`renewal`] (when a
//! lineage renews), [`backoff`] (the back-off rule). Pure logic: [`site`]
//! (Site JSON), [`certs`] (certificate material), [`renewal_conf`]. Effects,
//! each owning one thing: [`store`] (certbot's layout, accounts included),
//! [`acme`] (the ACME client), [`apache`] (vhosts and the configtest
//! transaction), [`lock`], [`hooks`], [`journal`], [`fsutil`],
//! [`backoff_file`], [`revocations`], [`state_file`]. The commands:
//! [`engine`]; the command line: [`cli`]. Only what the binary and the
//! integration tests use is `pub`; the rest is `pub(crate)`, so
//! `unreachable_pub` and `dead_code` catch what nobody calls.

#![warn(unreachable_pub)]

pub mod acme;
pub(crate) mod apache;
pub(crate) mod backoff;
pub(crate) mod backoff_file;
pub mod certs;
pub mod cli;
pub mod config;
pub(crate) mod decide;
pub mod engine;
pub mod error;
pub(crate) mod fault;
pub mod fleet;
pub(crate) mod fsutil;
pub(crate) mod hooks;
pub(crate) mod journal;
pub mod lock;
pub(crate) mod model;
pub(crate) mod renewal;
pub mod renewal_conf;
pub(crate) mod revocations;
pub mod site;
pub(crate) mod state_file;
pub mod store;
