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
//! [`backoff_file`]. The commands: [`engine`]; the command line: [`cli`].

pub mod acme;
pub mod apache;
pub mod backoff;
pub mod backoff_file;
pub mod certs;
pub mod cli;
pub mod config;
pub mod decide;
pub mod engine;
pub mod error;
pub mod fault;
pub mod fleet;
pub mod fsutil;
pub mod hooks;
pub mod journal;
pub mod lock;
pub mod model;
pub mod renewal;
pub mod renewal_conf;
pub mod revocations;
pub mod site;
pub mod state_file;
pub mod store;
