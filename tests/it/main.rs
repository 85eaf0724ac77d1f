//! The one integration-test binary: every module drives the real
//! `site-admin` binary (or the library) against real pebble, Apache and
//! certbot, through the shared harness in `common`.

mod common;

mod accounts;
mod acme;
mod admin;
mod apache;
mod ari;
mod backoff;
mod bad_inputs;
mod certbot;
mod crash;
mod faults;
mod fleet;
mod fleet_world;
mod fuzz;
mod lifecycle;
mod migration;
mod reload;
mod renew;
mod revoke;
mod site_json;
