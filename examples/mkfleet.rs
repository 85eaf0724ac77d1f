//! Benchmark helper: publish every live lineage of a certbot tree (as made
//! by `mklineages`) to a fleet's etcd as version 1, sealed with the fleet
//! key, so a device's `sync` has N records to read.
//!
//! `cargo run --release --example mkfleet -- <letsencrypt_dir> <etcd_url> <prefix> <fleet_key_file> <server>`

use site_admin::fleet::record::{LineageRecord, Meta};
use site_admin::fleet::{Etcd, EtcdOptions, FleetKey, FleetStore};
use site_admin::store::{Material, Place, Store};
use std::path::PathBuf;
use std::sync::Arc;

fn main() {
    let a: Vec<String> = std::env::args().collect();
    if a.len() != 6 {
        eprintln!("usage: mkfleet <letsencrypt_dir> <etcd_url> <prefix> <fleet_key_file> <server>");
        std::process::exit(2);
    }
    let store = Store::new(PathBuf::from(&a[1]));
    let etcd = Arc::new(
        Etcd::new(&EtcdOptions {
            endpoints: vec![a[2].clone()],
            timeout: std::time::Duration::from_secs(5),
            ..Default::default()
        })
        .unwrap(),
    );
    let key = FleetKey::load(std::path::Path::new(&a[4])).unwrap();
    let fleet = FleetStore::new(etcd, &a[3], key.clone(), "bench");
    let mut n = 0;
    for host in store.names_with_conf(Place::Live) {
        let Material::Present(kc) = store.material(&host, Place::Live) else { continue };
        let h = site_admin::site::Host::parse(&host).unwrap();
        let meta = Meta {
            server: a[5].clone(),
            account: None,
            profile: None,
            ari: Default::default(),
            device: "bench".into(),
            now: chrono::Utc::now(),
        };
        let rec =
            LineageRecord::seal(&key, &a[3], &h, 1, &kc.key_pem, &kc.chain_pem, meta).unwrap();
        if fleet.push_if_unchanged(&rec, 0).unwrap() {
            n += 1;
        }
    }
    println!("{n}");
}
