//! Benchmark helper: write N lineages in certbot's layout (through
//! site-admin's own store), each with an ECDSA certificate from a throwaway
//! CA (so it has the AKI an ARI CertID needs), valid from yesterday for 90
//! days (so not due), plus an account for `server`.
//!
//! `cargo run --release --example mklineages -- <letsencrypt_dir> <count> <server> <webroot>`

use site_admin::store::{NewVersion, RenewalParams, Store};
use std::path::PathBuf;

fn main() {
    let a: Vec<String> = std::env::args().collect();
    if a.len() != 5 {
        eprintln!("usage: mklineages <letsencrypt_dir> <count> <server> <webroot>");
        std::process::exit(2);
    }
    let le = PathBuf::from(&a[1]);
    let n: usize = a[2].parse().expect("count");
    let server = &a[3];
    let key = site_admin::acme::AccountKey::generate().unwrap();
    let account =
        site_admin::store::accounts::save(&le, server, &key, &format!("{server}/acct/bench"), None)
            .unwrap();
    let store = Store::new(&le);
    let now = time::OffsetDateTime::now_utc();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name.push(rcgen::DnType::CommonName, "bench CA");
    let ca = ca.self_signed(&ca_key).unwrap();
    for i in 0..n {
        let host = format!("l{i}.bench.test");
        let mut p = rcgen::CertificateParams::new(vec![host.clone()]).unwrap();
        p.not_before = now - time::Duration::days(1);
        p.not_after = now + time::Duration::days(89);
        p.use_authority_key_identifier_extension = true;
        let k = rcgen::KeyPair::generate().unwrap();
        let c = p.signed_by(&k, &ca, &ca_key).unwrap();
        let v = NewVersion::from_key_and_fullchain(&k.serialize_pem(), &c.pem()).unwrap();
        let params = RenewalParams {
            account: Some(account.clone()),
            server: server.clone(),
            webroot: PathBuf::from(&a[4]),
            key_type: site_admin::config::KeyType::Ecdsa,
            profile: None,
        };
        store.add_version(&host, &v, &params).unwrap();
    }
}
