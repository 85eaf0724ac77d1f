mod common;
use common::*;

#[test]
fn deploy_letsencrypt_site_is_served_on_https() {
    let w = World::new();
    let id = siteid(1);
    let host = "blog.example.test";
    let rep = w.dev.deploy(&site_json(&id, host, Some(serde_json::json!({"letsencrypt": true}))));
    assert_eq!(rep["serving"], "letsencrypt", "{rep}");
    assert_eq!(rep["pending"], false);
    let serial = w.dev.live_serial(host).expect("a live lineage");
    w.dev.apache.wait_serial(host, &serial);
    let (status, loc, _) = w.dev.apache.http_get(host, "/x");
    assert_eq!(status, 301);
    assert!(loc.unwrap().starts_with(&format!("https://{host}:")));
}
