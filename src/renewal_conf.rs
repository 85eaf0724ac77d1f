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
    ///
    /// The one place a value is written: a control character (a line break
    /// above all) is written as an escape, so no value can add a line, a
    /// section or a key, and certbot can always parse the file.
    pub fn set(&mut self, section: Option<&str>, key: &str, value: &str) {
        let key = &one_line(key);
        let new_line = format!("{key} = {}", conf_value(value));
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
                let first_header = self
                    .lines
                    .iter()
                    .position(|l| header_name(l).is_some())
                    .unwrap_or(self.lines.len());
                self.lines.insert(first_header, new_line);
            }
            (Some(s), None) => {
                let header = if s == "webroot_map" {
                    "[[webroot_map]]".to_string()
                } else {
                    format!("[{s}]")
                };
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
            } else if cur.as_deref() == section
                && split_kv(l).map(|(k, _)| k == key).unwrap_or(false)
            {
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

/// `v` on one line: control characters (CR, LF, NEL...) and the Unicode line
/// and paragraph separators written as escapes (`\n`, `\u{85}`).
fn one_line(v: &str) -> String {
    let bad = |c: char| c.is_control() || c == '\u{2028}' || c == '\u{2029}';
    if !v.chars().any(bad) {
        return v.to_string();
    }
    tracing::warn!(
        "a renewal-conf value held control characters; they are written escaped: {}",
        v.escape_default()
    );
    v.chars().map(|c| if bad(c) { c.escape_default().to_string() } else { c.to_string() }).collect()
}

/// `v` as a value ConfigObj reads back as `v`: on one line ([`one_line`]),
/// and quoted when it would not parse bare (a leading quote, say).
fn conf_value(v: &str) -> String {
    let v = one_line(v);
    if value_parses(v.trim()) {
        return v;
    }
    for q in ["'", "\"", "'''", "\"\"\""] {
        let quoted = format!("{q}{v}{q}");
        if !v.contains(q) && value_parses(&quoted) {
            return quoted;
        }
    }
    format!("'{}'", v.replace('\'', "\\u{27}"))
}

/// Why certbot (ConfigObj) cannot parse this renewal conf, if it cannot: the
/// first line that is not blank, a `#` comment, a `[section]` header (nested
/// one level at a time) or `key = value` with a value ConfigObj reads, and
/// duplicate section or key names.
pub fn certbot_parse_error(text: &str) -> Option<String> {
    // One entry per open section, outermost first: (depth, names in it).
    let mut stack: Vec<(usize, std::collections::HashSet<String>)> = vec![(0, Default::default())];
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.starts_with('[') {
            let Some((depth, name)) = section_header(line) else {
                return Some(format!("line {n}: an unbalanced [section] header"));
            };
            let cur = stack.last().map(|s| s.0).unwrap_or(0);
            if depth > cur + 1 {
                return Some(format!("line {n}: section [{name}] is nested too deep"));
            }
            stack.truncate(depth);
            let Some(parent) = stack.last_mut() else {
                return Some(format!("line {n}: a section without a parent"));
            };
            if !parent.1.insert(name.clone()) {
                return Some(format!("line {n}: duplicate section name [{name}]"));
            }
            stack.push((depth, Default::default()));
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            return Some(format!("line {n}: neither a [section] header nor key = value"));
        };
        let k = k.trim();
        if k.is_empty() || (k.starts_with(['"', '\'']) && !(k.len() >= 2 && k.ends_with(&k[..1]))) {
            return Some(format!("line {n}: not a usable key"));
        }
        if !value_parses(v.trim()) {
            return Some(format!(
                "line {n}: the value of {k} is not one ConfigObj reads (unbalanced quotes?)"
            ));
        }
        if let Some(cur) = stack.last_mut() {
            if !cur.1.insert(unquote(k)) {
                return Some(format!("line {n}: duplicate key {k}"));
            }
        }
    }
    None
}

/// `[name]` at depth 1, `[[name]]` at 2...; None when the brackets do not balance.
fn section_header(line: &str) -> Option<(usize, String)> {
    // A comment may follow the header.
    let end = line.rfind(']')?;
    if !rest_ok(&line[end + 1..]) {
        return None;
    }
    let line = &line[..=end];
    let open =
        line.chars().take_while(|c| *c == '[' || c.is_whitespace()).filter(|c| *c == '[').count();
    let close = line
        .chars()
        .rev()
        .take_while(|c| *c == ']' || c.is_whitespace())
        .filter(|c| *c == ']')
        .count();
    let name = line
        .trim_start_matches(|c: char| c == '[' || c.is_whitespace())
        .trim_end_matches(|c: char| c == ']' || c.is_whitespace());
    (open == close && !name.is_empty() && !name.contains(['[', ']']))
        .then(|| (open, name.to_string()))
}

/// Does ConfigObj read this single-line value: empty, or a comma-separated
/// list of items each quoted (`"..."`, `'...'`) or unquoted (not starting
/// with a quote, no comma), then an optional `# comment`?
fn value_parses(v: &str) -> bool {
    if v == "," {
        return true;
    }
    for q in ["'''", "\"\"\""] {
        if let Some(rest) = v.strip_prefix(q) {
            return rest.find(q).map(|i| rest_ok(&rest[i + 3..])).unwrap_or(false);
        }
    }
    items_parse(v)
}

fn rest_ok(rest: &str) -> bool {
    let r = rest.trim();
    r.is_empty() || r.starts_with('#')
}

fn items_parse(v: &str) -> bool {
    let v = v.trim_start();
    if v.is_empty() || v.starts_with('#') {
        return true;
    }
    let after_item = |rest: &str| {
        let r = rest.trim_start();
        match r.strip_prefix(',') {
            Some(more) => items_parse(more),
            None => rest_ok(r),
        }
    };
    match v.chars().next() {
        Some(q @ ('"' | '\'')) => {
            // A quoted item ends at some later quote (ConfigObj's regex backtracks).
            v.char_indices().skip(1).filter(|(_, c)| *c == q).any(|(i, _)| after_item(&v[i + 1..]))
        }
        Some(',') => false,
        _ => {
            let end = v.find([',', '#']).unwrap_or(v.len());
            after_item(&v[end..])
        }
    }
}

fn unquote(v: &str) -> String {
    let v = v.trim();
    for q in ["'''", "\"\"\""] {
        if v.len() >= 6 && v.starts_with(q) && v.ends_with(q) {
            return v[3..v.len() - 3].to_string();
        }
    }
    if v.len() >= 2
        && ((v.starts_with('"') && v.ends_with('"')) || (v.starts_with('\'') && v.ends_with('\'')))
    {
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
    fn no_value_adds_a_line_and_certbot_still_parses_it() {
        let mut c = RenewalConf::parse(CERTBOT);
        c.set(
            Some("acme_renewal_info"),
            "site_admin_explanation_url",
            "https://x/\n[renewalparams]\npre_hook = touch /tmp/owned\r\u{2028}",
        );
        c.set(Some("renewalparams"), "odd\nkey", "v");
        let t = c.to_text();
        assert_eq!(t.lines().count(), CERTBOT.lines().count() + 2, "{t}");
        assert!(!t.lines().any(|l| l.trim_start().starts_with("pre_hook")), "{t}");
        assert_eq!(t.lines().filter(|l| l.trim() == "[renewalparams]").count(), 1, "{t}");
        assert_eq!(certbot_parse_error(&t), None, "{t}");
        assert!(t.contains("site_admin_explanation_url = https://x/\\n[renewalparams]\\npre_hook = touch /tmp/owned\\r\\u{2028}\n"), "{t}");
        assert!(t.contains("odd\\nkey = v\n"), "{t}");
        // A value ConfigObj would not read bare is quoted, and reads back.
        for v in ["\"open", "'open", "a,\"b", ",x", "\"a' and 'b\"x", "'a\"", "\"'''\"\"\"'"] {
            c.set(Some("acme_renewal_info"), "site_admin_x", v);
            let t = c.to_text();
            assert_eq!(certbot_parse_error(&t), None, "{v:?}: {t}");
            let back =
                RenewalConf::parse(&t).get(Some("acme_renewal_info"), "site_admin_x").unwrap();
            assert!(back == v || v.contains("'''"), "{v:?} read back as {back:?}");
        }
        assert_eq!(certbot_parse_error(CERTBOT), None);
    }

    #[test]
    fn confs_certbot_cannot_parse_are_named() {
        let bad = |extra: &str| certbot_parse_error(&format!("{CERTBOT}{extra}"));
        assert!(bad("[renewalparams]\npre_hook = x\n")
            .unwrap()
            .contains("duplicate section name [renewalparams]"));
        assert!(bad("ari_retry_after = 2027-01-01T00:00:00\n")
            .unwrap()
            .contains("duplicate key ari_retry_after"));
        assert!(bad("just words\n").unwrap().contains("line 19: neither"));
        assert!(bad("[broken\n").unwrap().contains("unbalanced"));
        assert!(bad("[[[deep]]]\n").unwrap().contains("too deep"));
        assert!(bad("k = \"open\n").unwrap().contains("value of k"));
        assert!(bad("k = a,\"b\n").is_some());
        assert!(bad("= v\n").is_some());
        for fine in [
            "k = \"a\" # c\n",
            "k = 'a,b', c,\n",
            "k = ,\n",
            "k =\n",
            "k = a \"b\" c\n",
            "k = https://x/#frag\n",
            "[other] # c\n[[sub]]\nk = v\n",
        ] {
            assert_eq!(bad(fine), None, "{fine:?}");
        }
        // Sections nest per parent: the same subsection name under two parents is fine.
        assert_eq!(certbot_parse_error("[a]\n[[m]]\nk = 1\n[b]\n[[m]]\nk = 1\n"), None);
    }

    #[test]
    fn intervals() {
        assert_eq!(parse_interval("30 days"), Some(chrono::Duration::days(30)));
        assert_eq!(parse_interval("1 week 2 days"), Some(chrono::Duration::days(9)));
        assert_eq!(parse_interval("12 hours"), Some(chrono::Duration::hours(12)));
        assert_eq!(parse_interval("soon"), None);
    }
}
