//! site-admin: keeps the TLS certificates of the web sites on an appliance
//! device right through each site's whole life. See `SPEC.md` and the README.

pub mod accounts;
pub mod acme;
pub mod certs;
pub mod config;
pub mod decide;
pub mod error;
pub mod fault;
pub mod fsutil;
pub mod renewal_conf;
pub mod site;
pub mod store;
