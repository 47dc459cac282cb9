//! Access rules in mosquitto's ACL file syntax.
//!
//! - `topic [read|write|readwrite|deny] TOPIC`: before any `user` line it applies to
//!   anonymous clients, after one to that user;
//! - `user NAME`: starts that user's rules;
//! - `pattern [read|write|readwrite|deny] TOPIC`: applies to every client, with `%c`
//!   replaced by the client id and `%u` by the username;
//! - `#` starts a comment.
//!
//! A `deny` that matches wins over any grant; otherwise an action is allowed when a rule
//! grants it, and refused when none does. A subscription is granted when every topic it
//! can match is granted (`a/+` under `a/#`), and refused whole when it can match a
//! denied one (mosquitto would grant it and hold back the denied messages instead).

use std::collections::HashMap;
use std::path::Path;

use fieldgate_connectors::source::mqtt::topic_matches;

/// What a client wants to do with a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Subscribe (receive).
    Read,
    /// Publish.
    Write,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Read,
    Write,
    ReadWrite,
    Deny,
}

impl Access {
    fn grants(self, a: Action) -> bool {
        matches!(
            (self, a),
            (Access::ReadWrite, _) | (Access::Read, Action::Read) | (Access::Write, Action::Write)
        )
    }
}

#[derive(Debug, Clone)]
struct Rule {
    access: Access,
    topic: String,
}

/// A parsed ACL file.
#[derive(Debug, Clone, Default)]
pub struct Acl {
    anonymous: Vec<Rule>,
    users: HashMap<String, Vec<Rule>>,
    patterns: Vec<Rule>,
}

/// Who is asking.
pub struct Client<'a> {
    pub username: Option<&'a str>,
    pub client_id: &'a str,
}

impl Acl {
    pub fn load(path: &Path) -> anyhow::Result<Acl> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read ACL file {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| anyhow::anyhow!("{}:{e}", path.display()))
    }

    /// Parses ACL text; an error starts with its line number.
    pub fn parse(text: &str) -> anyhow::Result<Acl> {
        let mut acl = Acl::default();
        let mut user: Option<String> = None;
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (word, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            let rest = rest.trim();
            match word {
                "user" => {
                    if rest.is_empty() {
                        anyhow::bail!("{n}: `user` needs a name");
                    }
                    user = Some(rest.to_string());
                    acl.users.entry(rest.to_string()).or_default();
                }
                "topic" | "pattern" => {
                    let rule = parse_rule(rest).map_err(|e| anyhow::anyhow!("{n}: {e}"))?;
                    match (word, &user) {
                        ("pattern", _) => acl.patterns.push(rule),
                        (_, Some(u)) => acl.users.entry(u.clone()).or_default().push(rule),
                        (_, None) => acl.anonymous.push(rule),
                    }
                }
                other => anyhow::bail!(
                    "{n}: unknown keyword `{other}` (expected `user`, `topic` or `pattern`)"
                ),
            }
        }
        Ok(acl)
    }

    /// Whether `client` may `action` on `topic` (a topic name to publish, a filter to
    /// subscribe).
    pub fn allows(&self, client: &Client, action: Action, topic: &str) -> bool {
        let own: &[Rule] = match client.username {
            Some(u) => self.users.get(u).map_or(&[], |r| r.as_slice()),
            None => &self.anonymous,
        };
        let patterns = self.patterns.iter().map(|r| Rule {
            access: r.access,
            topic: substitute(&r.topic, client),
        });
        let rules: Vec<Rule> = own.iter().cloned().chain(patterns).collect();
        let applies = |pattern: &str, strict: bool| match action {
            Action::Write => topic_matches(pattern, topic),
            Action::Read if strict => filter_within(topic, pattern),
            Action::Read => filters_overlap(topic, pattern),
        };
        if rules
            .iter()
            .any(|r| r.access == Access::Deny && applies(&r.topic, false))
        {
            return false;
        }
        rules
            .iter()
            .any(|r| r.access.grants(action) && applies(&r.topic, true))
    }
}

fn parse_rule(rest: &str) -> anyhow::Result<Rule> {
    let (first, topic) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    let (access, topic) = match first {
        "read" => (Access::Read, topic.trim()),
        "write" => (Access::Write, topic.trim()),
        "readwrite" => (Access::ReadWrite, topic.trim()),
        "deny" => (Access::Deny, topic.trim()),
        // No access word: the whole rest is the topic, read and write.
        _ => (Access::ReadWrite, rest),
    };
    if topic.is_empty() {
        anyhow::bail!("a rule needs a topic");
    }
    if !valid_filter(topic) {
        anyhow::bail!("`{topic}` is not a topic filter (`#` only last, `+` a whole level)");
    }
    Ok(Rule {
        access,
        topic: topic.to_string(),
    })
}

fn valid_filter(f: &str) -> bool {
    let levels: Vec<&str> = f.split('/').collect();
    levels.iter().enumerate().all(|(i, l)| {
        (*l == "#" && i + 1 == levels.len()) || *l == "+" || !(l.contains('#') || l.contains('+'))
    })
}

/// `%c` and `%u` replaced; a level holding a client id or username with a wildcard or
/// a slash in it can match nothing.
fn substitute(pattern: &str, client: &Client) -> String {
    let clean = |s: &str| {
        if s.contains(['/', '+', '#']) {
            "\u{0}".to_string()
        } else {
            s.to_string()
        }
    };
    pattern
        .replace("%c", &clean(client.client_id))
        .replace("%u", &clean(client.username.unwrap_or("\u{0}")))
}

/// Whether every topic `filter` matches is matched by `pattern`.
fn filter_within(filter: &str, pattern: &str) -> bool {
    let f: Vec<&str> = filter.split('/').collect();
    let p: Vec<&str> = pattern.split('/').collect();
    for (i, fl) in f.iter().enumerate() {
        let Some(pl) = p.get(i) else { return false };
        match (*pl, *fl) {
            ("#", _) => return true,
            (_, "#") => return false,
            ("+", _) => {}
            (_, "+") => return false,
            (a, b) if a == b => {}
            _ => return false,
        }
    }
    f.len() == p.len() || (p.len() == f.len() + 1 && p[f.len()] == "#")
}

/// Whether some topic matches both filters.
fn filters_overlap(a: &str, b: &str) -> bool {
    let a: Vec<&str> = a.split('/').collect();
    let b: Vec<&str> = b.split('/').collect();
    for i in 0..a.len().max(b.len()) {
        match (a.get(i), b.get(i)) {
            (Some(&"#"), _) | (_, Some(&"#")) => return true,
            (Some(&"+"), Some(_)) | (Some(_), Some(&"+")) => {}
            (Some(x), Some(y)) if x == y => {}
            _ => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACL: &str = "\
# anonymous clients
topic read public/#

user alice
topic readwrite plant/#
topic deny plant/secret/#
user bob
topic write plant/line1/+
pattern write devices/%c/#
pattern read status/%u
";

    fn who<'a>(user: Option<&'a str>, id: &'a str) -> Client<'a> {
        Client {
            username: user,
            client_id: id,
        }
    }

    #[test]
    fn users_patterns_and_deny() {
        let acl = Acl::parse(ACL).unwrap();
        let anon = who(None, "x");
        let alice = who(Some("alice"), "a1");
        let bob = who(Some("bob"), "b1");
        let carol = who(Some("carol"), "c1");
        use Action::*;
        let cases = [
            (&anon, Read, "public/weather", true),
            (&anon, Read, "public/#", true),
            (&anon, Write, "public/weather", false),
            (&anon, Read, "#", false),
            (&alice, Write, "plant/line1/temp", true),
            // Could match plant/secret/temp: refused whole.
            (&alice, Read, "plant/+/temp", false),
            (&alice, Read, "plant/line1/+", true),
            (&alice, Write, "plant/secret/key", false),
            (&alice, Read, "plant/#", false),
            (&alice, Read, "plant/secret", false),
            (&alice, Read, "plant/secrets", true),
            (&alice, Read, "public/weather", false),
            (&bob, Write, "plant/line1/temp", true),
            (&bob, Write, "plant/line1/temp/x", false),
            (&bob, Read, "plant/line1/temp", false),
            (&bob, Write, "devices/b1/t", true),
            (&bob, Write, "devices/a1/t", false),
            (&bob, Read, "status/bob", true),
            (&carol, Write, "devices/c1/x/y", true),
            (&carol, Read, "status/bob", false),
            (&carol, Read, "status/carol", true),
        ];
        for (c, a, t, want) in cases {
            assert_eq!(acl.allows(c, a, t), want, "{:?} {a:?} {t}", c.username);
        }
        // A client id with a slash or wildcard cannot widen a pattern.
        assert!(!acl.allows(&who(Some("carol"), "#"), Write, "devices/x/y"));
        assert!(!acl.allows(&who(Some("carol"), "a/b"), Write, "devices/a/b/c"));
    }

    #[test]
    fn errors_name_the_line() {
        for (text, want) in [
            ("topic", "1: a rule needs a topic"),
            ("\nuser", "2: `user` needs a name"),
            ("topic read a/#/b", "not a topic filter"),
            ("grant all", "unknown keyword `grant`"),
        ] {
            let e = Acl::parse(text).unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }

    #[test]
    fn filter_containment_and_overlap() {
        assert!(filter_within("a/b", "a/#"));
        assert!(filter_within("a", "a/#"));
        assert!(filter_within("a/+/c", "a/#"));
        assert!(filter_within("a/+/c", "a/+/c"));
        assert!(!filter_within("a/#", "a/+"));
        assert!(!filter_within("+/b", "a/b"));
        assert!(!filter_within("a/b/c", "a/b"));
        assert!(filters_overlap("#", "x/y"));
        assert!(filters_overlap("a/+", "+/b"));
        assert!(!filters_overlap("a/b", "a/c"));
        assert!(!filters_overlap("a/b", "a/b/c"));
    }
}
