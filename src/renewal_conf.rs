//! certbot's `renewal/<name>.conf` (a ConfigObj file): read values and
//! rewrite some of them while keeping every line, field and section we do
//! not know (certbot adds `[acme_renewal_info]` and others).

/// A renewal conf as its lines, so that unknown content survives a rewrite.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RenewalConf {
    lines: Vec<String>,
}

/// The section a line belongs to: None for the top level, else the name of
/// the innermost `[x]` / `[[x]]` header.
fn header_name(line: &str) -> Option<String> {
    let t = line.trim();
    if t.starts_with('[') && t.ends_with(']') {
        Some(t.trim_matches(|c| c == '[' || c == ']').trim().to_string())
    } else {
        None
    }
}

fn split_kv(line: &str) -> Option<(&str, &str)> {
    let t = line.trim();
    if t.is_empty() || t.starts_with('#') || t.starts_with('[') {
        return None;
    }
    let (k, v) = t.split_once('=')?;
    Some((k.trim(), v.trim()))
}

impl RenewalConf {
    pub fn parse(text: &str) -> RenewalConf {
        RenewalConf { lines: text.lines().map(str::to_string).collect() }
    }

    pub fn to_text(&self) -> String {
        let mut s = self.lines.join("\n");
        s.push('\n');
        s
    }

    /// Value of `key` in `section` (None = top level), quotes removed.
    pub fn get(&self, section: Option<&str>, key: &str) -> Option<String> {
        let mut cur: Option<String> = None;
        for l in &self.lines {
            if let Some(h) = header_name(l) {
                cur = Some(h);
                continue;
            }
            if cur.as_deref() == section {
                if let Some((k, v)) = split_kv(l) {
                    if k == key {
                        return Some(unquote(v));
                    }
                }
            }
        }
        None
    }

    /// All key/value pairs of a section.
    pub fn section(&self, section: &str) -> Vec<(String, String)> {
        let mut cur: Option<String> = None;
        let mut out = Vec::new();
        for l in &self.lines {
            if let Some(h) = header_name(l) {
                cur = Some(h);
                continue;
            }
            if cur.as_deref() == Some(section) {
                if let Some((k, v)) = split_kv(l) {
                    out.push((k.to_string(), unquote(v)));
                }
            }
        }
        out
    }

    /// Does the file have this section header?
    pub fn has_section(&self, section: &str) -> bool {
        self.lines.iter().any(|l| header_name(l).as_deref() == Some(section))
    }

    /// Set `key` in `section` (None = top level): replace the line in place,
    /// or add it at the end of the section (creating `[section]` if missing;
    /// `webroot_map` is created as the nested `[[webroot_map]]`).
    pub fn set(&mut self, section: Option<&str>, key: &str, value: &str) {
        let new_line = format!("{key} = {value}");
        let mut cur: Option<String> = None;
        let mut last_in_section: Option<usize> = None;
        let mut section_header: Option<usize> = None;
        for (i, l) in self.lines.iter().enumerate() {
            if let Some(h) = header_name(l) {
                cur = Some(h);
                if cur.as_deref() == section {
                    section_header = Some(i);
                }
                continue;
            }
            if cur.as_deref() == section {
                last_in_section = Some(i);
                if let Some((k, _)) = split_kv(l) {
                    if k == key {
                        self.lines[i] = new_line;
                        return;
                    }
                }
            }
        }
        match (section, last_in_section.or(section_header)) {
            (_, Some(i)) => self.lines.insert(i + 1, new_line),
            (None, None) => {
                // Top level comes before any header.
                let first_header = self.lines.iter().position(|l| header_name(l).is_some()).unwrap_or(self.lines.len());
                self.lines.insert(first_header, new_line);
            }
            (Some(s), None) => {
                let header = if s == "webroot_map" { "[[webroot_map]]".to_string() } else { format!("[{s}]") };
                if s == "webroot_map" && !self.has_section("renewalparams") {
                    self.lines.push("[renewalparams]".into());
                }
                self.lines.push(header);
                self.lines.push(new_line);
            }
        }
    }

    /// Remove `key` from `section` (None = top level), if it is there.
    pub fn remove(&mut self, section: Option<&str>, key: &str) {
        let mut cur: Option<String> = None;
        let mut keep = Vec::with_capacity(self.lines.len());
        for l in &self.lines {
            if let Some(h) = header_name(l) {
                cur = Some(h);
            } else if cur.as_deref() == section && split_kv(l).map(|(k, _)| k == key).unwrap_or(false) {
                continue;
            }
            keep.push(l.clone());
        }
        self.lines = keep;
    }

    /// Remove every key of `section` and set these pairs instead.
    pub fn replace_section(&mut self, section: &str, pairs: &[(String, String)]) {
        let mut cur: Option<String> = None;
        let mut keep = Vec::with_capacity(self.lines.len());
        for l in &self.lines {
            if let Some(h) = header_name(l) {
                cur = Some(h);
                keep.push(l.clone());
                continue;
            }
            if cur.as_deref() == Some(section) && split_kv(l).is_some() {
                continue;
            }
            keep.push(l.clone());
        }
        self.lines = keep;
        for (k, v) in pairs {
            self.set(Some(section), k, v);
        }
    }
}

fn unquote(v: &str) -> String {
    let v = v.trim();
    if v.len() >= 2 && ((v.starts_with('"') && v.ends_with('"')) || (v.starts_with('\'') && v.ends_with('\''))) {
        v[1..v.len() - 1].to_string()
    } else {
        v.to_string()
    }
}

/// Parse certbot's `renew_before_expiry` (`30 days`, `2 weeks`, `12 hours`,
/// `90 minutes`, `1 day 12 hours`) into a duration.
pub fn parse_interval(s: &str) -> Option<chrono::Duration> {
    let toks: Vec<&str> = s.split_whitespace().collect();
    if toks.is_empty() {
        return None;
    }
    let mut total = chrono::Duration::zero();
    let mut i = 0;
    while i < toks.len() {
        let n: i64 = toks[i].parse().ok()?;
        let unit = toks.get(i + 1).copied().unwrap_or("days").trim_end_matches('s');
        total += match unit {
            "second" => chrono::Duration::seconds(n),
            "minute" => chrono::Duration::minutes(n),
            "hour" => chrono::Duration::hours(n),
            "day" => chrono::Duration::days(n),
            "week" => chrono::Duration::weeks(n),
            "month" => chrono::Duration::days(30 * n),
            _ => return None,
        };
        i += 2;
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CERTBOT: &str = "version = 5.8.0\narchive_dir = /e/archive/a\ncert = /e/live/a/cert.pem\nprivkey = /e/live/a/privkey.pem\nchain = /e/live/a/chain.pem\nfullchain = /e/live/a/fullchain.pem\n\n# Options used in the renewal process\n[renewalparams]\naccount = abc\nserver = https://x/dir\nauthenticator = webroot\nwebroot_path = /w/s1,\nkey_type = ecdsa\n[[webroot_map]]\na = /w/s1\n[acme_renewal_info]\nari_retry_after = 2026-01-01T00:00:00\n";

    #[test]
    fn reads_certbot_conf() {
        let c = RenewalConf::parse(CERTBOT);
        assert_eq!(c.get(None, "cert").unwrap(), "/e/live/a/cert.pem");
        assert_eq!(c.get(Some("renewalparams"), "account").unwrap(), "abc");
        assert_eq!(c.section("webroot_map"), vec![("a".to_string(), "/w/s1".to_string())]);
        assert_eq!(c.get(Some("renewalparams"), "missing"), None);
    }

    #[test]
    fn rewrite_keeps_unknown_sections() {
        let mut c = RenewalConf::parse(CERTBOT);
        c.set(Some("renewalparams"), "account", "def");
        c.set(None, "renew_before_expiry", "10 days");
        c.replace_section("webroot_map", &[("b".into(), "/w/s2".into())]);
        let t = c.to_text();
        assert!(t.contains("account = def\n"));
        assert!(!t.contains("account = abc"));
        assert!(t.contains("[acme_renewal_info]\nari_retry_after = 2026-01-01T00:00:00"));
        let c2 = RenewalConf::parse(&t);
        assert_eq!(c2.get(None, "renew_before_expiry").unwrap(), "10 days");
        assert!(t.find("renew_before_expiry").unwrap() < t.find("[renewalparams]").unwrap());
        assert_eq!(c2.section("webroot_map"), vec![("b".to_string(), "/w/s2".to_string())]);
    }

    #[test]
    fn intervals() {
        assert_eq!(parse_interval("30 days"), Some(chrono::Duration::days(30)));
        assert_eq!(parse_interval("1 week 2 days"), Some(chrono::Duration::days(9)));
        assert_eq!(parse_interval("12 hours"), Some(chrono::Duration::hours(12)));
        assert_eq!(parse_interval("soon"), None);
    }
}
