//! The administrator's side: errors a script can read (`--json`), a root
//! that does not exist, and expiry monitoring through the Prometheus hook.
use crate::common::*;
use serde_json::{json, Value};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

fn error_object(o: &std::process::Output) -> Value {
    let v: Value = serde_json::from_str(stdout(o).trim()).unwrap_or_else(|e| {
        panic!("no JSON error object on stdout ({e}): {:?}\n{}", stdout(o), stderr(o))
    });
    v["error"].clone()
}

#[test]
fn with_json_every_failure_prints_one_error_object() {
    let d = Device::new();
    // Exit 2: invalid input.
    let o = d.run(&["--json", "undeploy", "--siteid", "s0000000000000000000000000000000000000042"]);
    assert_eq!(o.status.code(), Some(2));
    let e = error_object(&o);
    assert_eq!((e["kind"].as_str(), e["exit"].as_i64()), (Some("invalid"), Some(2)), "{e}");
    assert!(e["message"].as_str().unwrap().contains("is not deployed"), "{e}");
    // Exit 2: a usage error clap finds.
    let o = d.run(&["--json", "deploy"]);
    assert_eq!(o.status.code(), Some(2));
    let e = error_object(&o);
    assert_eq!((e["kind"].as_str(), e["exit"].as_i64()), (Some("usage"), Some(2)), "{e}");
    assert!(e["message"].as_str().unwrap().contains("--file"), "{e}");
    // Exit 1: the operation failed (a damaged journal stops locked commands).
    let journal = d.root.join("var/lib/site-admin/journal/apache");
    std::fs::create_dir_all(&journal).unwrap();
    std::fs::write(journal.join("index.json"), "{").unwrap();
    let f = d.tmp.path().join("s.json");
    std::fs::write(&f, site_json(&siteid(1), "j.example.test", None)).unwrap();
    let o = d.run(&["--json", "deploy", "--file", f.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let e = error_object(&o);
    assert_eq!((e["kind"].as_str(), e["exit"].as_i64()), (Some("failed"), Some(1)), "{e}");
    std::fs::remove_dir_all(&journal).unwrap();
    // Exit 3: the lock is held.
    let lock = d.root.join("run/site-admin/site-admin.lock");
    let held =
        site_admin::lock::GlobalLock::acquire(&lock, &d.le(), Duration::from_secs(5), "a test")
            .unwrap();
    let o = d.run(&["--json", "--lock-timeout", "1", "deploy", "--file", f.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(3));
    let e = error_object(&o);
    assert_eq!((e["kind"].as_str(), e["exit"].as_i64()), (Some("lock"), Some(3)), "{e}");
    drop(held);
}

#[test]
fn a_root_that_does_not_exist_is_refused_by_every_command() {
    let missing = "/nonexistent/site-admin-root";
    for args in [
        vec!["certificates"],
        vec!["listsites"],
        vec!["renew"],
        vec!["renew", "--dry-run"],
        vec!["doctor"],
        vec!["deploy", "--file", "/dev/null"],
        vec!["undeploy", "--siteid", "s0000000000000000000000000000000000000042"],
        vec!["backup", "--all", "--out", "-"],
    ] {
        let mut a = vec!["--root", missing];
        a.extend(args.iter().copied());
        let o = run(&a, &[], None);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("--root /nonexistent/site-admin-root: no such directory"),
            "{args:?}: {}",
            stderr(&o)
        );
    }
    assert!(!std::path::Path::new(missing).exists());
}

#[test]
fn the_prometheus_hook_writes_a_textfile_promtool_accepts() {
    require("promtool");
    let w = World::new();
    let d = &w.dev;
    let (ok, bad) = ("fine.example.test", "broken.example.test");
    d.deploy(&site_json(&siteid(1), ok, Some(json!({"letsencrypt": true}))));
    d.deploy(&site_json(&siteid(2), bad, Some(json!({"letsencrypt": true}))));
    let hooks = d.root.join("etc/site-admin/hooks.d");
    std::fs::create_dir_all(&hooks).unwrap();
    let hook = hooks.join("60-prometheus");
    std::fs::copy(concat!(env!("CARGO_MANIFEST_DIR"), "/hooks/60-prometheus"), &hook).unwrap();
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    w.pebble.set_a(bad, "127.0.0.3");
    let o = d.run(&["--json", "renew", "--force"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let rep: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert!(rep["hooks"].as_array().unwrap().iter().all(|h| h["ok"] == true), "{rep}");
    let prom = d.root.join("var/lib/prometheus/node-exporter/site-admin.prom");
    let text = std::fs::read_to_string(&prom).unwrap();
    let mut c = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = c.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        format!("site_admin_certificate_not_after_seconds{{host=\"{ok}\",kind=\"live\"}}"),
        format!("site_admin_certificate_not_after_seconds{{host=\"{bad}\",kind=\"live\"}}"),
        format!("site_admin_renewal_failures{{host=\"{bad}\"}} 1"),
        format!("site_admin_renewal_failures{{host=\"{ok}\"}} 0"),
    ] {
        assert!(text.contains(&want), "{want} missing from:\n{text}");
    }
    assert!(
        !text.contains("site_admin_renewal_last_success_timestamp_seconds"),
        "nothing succeeded completely yet:\n{text}"
    );
    // certificates warns about the failing renewal on stderr.
    let o = d.run(&["certificates"]);
    assert!(o.status.success());
    assert!(
        stderr(&o).contains(&format!("{bad}: its last 1 renewal attempt(s) failed")),
        "{}",
        stderr(&o)
    );
    // Fixed: the next pass succeeds and says when.
    w.pebble.set_a(bad, "127.0.0.1");
    d.ok(&["renew", "--force"]);
    let text = std::fs::read_to_string(&prom).unwrap();
    assert!(text.contains("site_admin_renewal_last_success_timestamp_seconds "), "{text}");
    assert!(text.contains(&format!("site_admin_renewal_failures{{host=\"{bad}\"}} 0")), "{text}");
}

/// Kills the hook if the test fails while it runs.
struct Killed(std::process::Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Run hooks/60-prometheus as `renew` does (as root, the report on stdin)
/// with `dir` as its textfile directory; None if it was still running after
/// 30 s (the renew would have waited its 60 s hook limit).
fn prometheus_hook(d: &Device, dir: &std::path::Path) -> Option<std::process::Output> {
    let mut c = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/hooks/60-prometheus"));
    c.env("SITE_ADMIN_ROOT", &d.root)
        .env("SITE_ADMIN_BIN", bin())
        .env("SITE_ADMIN_CONFIG", &d.config)
        .env("SITE_ADMIN_PROMETHEUS_DIR", dir);
    let mut k = Killed(
        c.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap(),
    );
    k.0.stdin.take().unwrap().write_all(b"{}").unwrap();
    let t0 = std::time::Instant::now();
    while k.0.try_wait().unwrap().is_none() {
        if t0.elapsed() > Duration::from_secs(30) {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let (mut out, mut err) = (Vec::new(), Vec::new());
    std::io::Read::read_to_end(k.0.stdout.as_mut().unwrap(), &mut out).unwrap();
    std::io::Read::read_to_end(k.0.stderr.as_mut().unwrap(), &mut err).unwrap();
    Some(std::process::Output {
        status: k.0.try_wait().unwrap().unwrap(),
        stdout: out,
        stderr: err,
    })
}

#[test]
fn the_prometheus_hook_writes_as_the_owner_of_the_textfile_directory_and_opens_no_fifo() {
    use std::os::unix::fs::MetadataExt;
    require("python3");
    // Debian's layout: /var/lib/prometheus/node-exporter belongs to the
    // exporter's user (here nobody, 65534), which left a FIFO for the file.
    let d = Device::new();
    let dir = d.root.join("var/lib/prometheus/node-exporter");
    std::fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
    let prom = dir.join("site-admin.prom");
    assert!(Command::new("mkfifo").arg(&prom).status().unwrap().success());
    std::os::unix::fs::lchown(&prom, Some(65534), Some(65534)).unwrap();
    let o = prometheus_hook(&d, &dir).expect("the hook opened the FIFO and hung");
    assert!(o.status.success(), "{}", stderr(&o));
    let md = std::fs::symlink_metadata(&prom).unwrap();
    assert!(md.is_file(), "the FIFO was replaced by the textfile");
    assert_eq!(
        (md.uid(), md.gid()),
        (65534, 65534),
        "written as the directory's owner, not as root"
    );
    assert_eq!(md.mode() & 0o7777, 0o644);
    assert!(std::fs::read_to_string(&prom)
        .unwrap()
        .contains("# TYPE site_admin_certificate_not_after_seconds gauge"));
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["site-admin.prom".to_string()], "no temp file left");
}

#[test]
fn the_prometheus_hook_refuses_a_textfile_directory_others_can_write_or_a_planted_link() {
    use std::os::unix::fs::MetadataExt;
    require("python3");
    let d = Device::new();
    let lib = d.root.join("var/lib/prometheus");
    let dir = lib.join("node-exporter");
    std::fs::create_dir_all(&dir).unwrap();
    let mode = |p: &std::path::Path, m: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
    };
    // A root-only file the attacker would like to read.
    let secret = d.root.join("etc/secret.key");
    std::fs::write(&secret, "k").unwrap();
    mode(&secret, 0o600);
    for (what, path, bad) in [
        ("world-writable textfile directory", &dir, 0o777),
        ("sticky world-writable textfile directory", &dir, 0o1777),
        ("group-writable parent", &lib, 0o775),
    ] {
        mode(path, bad);
        let o = prometheus_hook(&d, &dir).expect("the hook hung");
        assert_eq!(o.status.code(), Some(1), "{what}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("can be written by users other than its owner"),
            "{what}: {}",
            stderr(&o)
        );
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "{what}: something was written");
        mode(path, 0o755);
    }
    // node-exporter swapped for a link (owned by the exporter's user) to a root directory.
    std::fs::remove_dir(&dir).unwrap();
    std::os::unix::fs::symlink(d.root.join("etc"), &dir).unwrap();
    std::os::unix::fs::lchown(&dir, Some(65534), Some(65534)).unwrap();
    let o = prometheus_hook(&d, &dir).expect("the hook hung");
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("is a symlink owned by uid 65534; not followed"), "{}", stderr(&o));
    assert!(!d.root.join("etc/site-admin.prom").exists());
    assert_eq!(std::fs::metadata(&secret).unwrap().mode() & 0o777, 0o600);
    // The same link owned by root is the administrator's: followed.
    std::os::unix::fs::lchown(&dir, Some(0), Some(0)).unwrap();
    let o = prometheus_hook(&d, &dir).expect("the hook hung");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(d.root.join("etc/site-admin.prom").is_file());
}

#[test]
fn the_packaged_config_serves_a_site_with_debians_apache_layout() {
    // The README's "real Debian box" as far as a test can go: the config the
    // package installs (debian/config.json, Debian's layout under the root),
    // an Apache that includes the package's conf snippet's directory, the
    // test CA instead of Let's Encrypt.
    let tmp = tempfile::Builder::new().prefix("site-admin-test-").tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let root = tmp.path().join("root");
    let (http, https) = (free_port(), free_port());
    let snippet = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/apache/debian-site-admin.conf"
    ))
    .unwrap();
    let include = snippet.lines().find(|l| l.starts_with("IncludeOptional ")).unwrap();
    let sites =
        root.join(include.trim_start_matches("IncludeOptional /").trim_end_matches("/*.conf"));
    let apache = Apache::configure_on(&tmp.path().join("apache"), &sites, "127.0.0.1", http, https);
    let pebble = Pebble::start(&tmp.path().join("pebble"), http, PebbleOptions::default());
    let mut cfg: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/debian/config.json"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        cfg["apache"]["sites_dir"], "etc/apache2/site-admin",
        "the package's config and its Apache snippet agree"
    );
    cfg["acme_server"] = pebble.directory().into();
    cfg["acme_ca_bundle"] = pebble.ca.ca_pem.display().to_string().into();
    cfg["apache"]["http_port"] = http.into();
    cfg["apache"]["https_port"] = https.into();
    cfg["apache"]["configtest"] = json!(apache.configtest_argv());
    cfg["apache"]["reload"] = json!(apache.reload_argv());
    cfg["apache"]["start"] = json!(apache.start_argv());
    std::fs::create_dir_all(root.join("etc/site-admin")).unwrap();
    std::fs::write(root.join("etc/site-admin/config.json"), cfg.to_string()).unwrap();
    apache.start();
    let env = [("SITE_ADMIN_ROOT", root.to_str().unwrap())];
    let f = tmp.path().join("blog.json");
    let h = "debian.example.test";
    std::fs::write(&f, site_json(&siteid(1), h, Some(json!({"letsencrypt": true})))).unwrap();
    let o = run(&["deploy", "--file", f.to_str().unwrap()], &env, None);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        sites.join(format!("{}.conf", siteid(1))).is_file(),
        "the vhost is in Debian's site-admin directory"
    );
    let serial = cert_serial(&root.join("etc/letsencrypt/live").join(h).join("cert.pem")).unwrap();
    apache.wait_serial(h, &serial);
    let o = run(&["doctor"], &env, None);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    drop(apache);
    drop(pebble);
}
