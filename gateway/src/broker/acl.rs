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
//! grants it, and refused when none does. As in mosquitto, a subscription is granted
//! when a read rule covers part of what it can match and no `deny` covers all of it;
//! each message is then checked against the subscriber's rules before it is delivered.

use std::collections::HashMap;
use std::path::Path;

use fieldgate_connectors::mqtt::topic_matches;

/// What a client wants to do with a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
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
    /// The client's username (`%u` in a pattern); `None`: an anonymous client.
    pub username: Option<&'a str>,
    /// The client's id (`%c` in a pattern).
    pub client_id: &'a str,
}

impl Acl {
    /// Reads an ACL file; errors name the file and line.
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

    /// The rules that apply to `client`, patterns filled in.
    fn rules_for(&self, client: &Client) -> Vec<Rule> {
        let own: &[Rule] = match client.username {
            Some(u) => self.users.get(u).map_or(&[], |r| r.as_slice()),
            None => &self.anonymous,
        };
        let patterns = self.patterns.iter().map(|r| Rule {
            access: r.access,
            topic: substitute(&r.topic, client),
        });
        own.iter().cloned().chain(patterns).collect()
    }

    /// Whether `client` may publish to the topic name `topic`.
    pub fn may_publish(&self, client: &Client, topic: &str) -> bool {
        self.decide(client, Action::Write, |p| topic_matches(p, topic))
    }

    /// Whether `client` may receive a message published to the topic name `topic`.
    pub fn may_receive(&self, client: &Client, topic: &str) -> bool {
        self.decide(client, Action::Read, |p| topic_matches(p, topic))
    }

    /// Whether `client` may subscribe to `filter`: refused when a `deny` covers all of
    /// it, granted when a read rule covers part of it. What it then receives is checked
    /// message by message ([`Acl::may_receive`]).
    pub fn may_subscribe(&self, client: &Client, filter: &str) -> bool {
        let rules = self.rules_for(client);
        if rules
            .iter()
            .any(|r| r.access == Access::Deny && filter_within(filter, &r.topic))
        {
            return false;
        }
        rules
            .iter()
            .any(|r| r.access.grants(Action::Read) && filters_overlap(filter, &r.topic))
    }

    fn decide(&self, client: &Client, action: Action, applies: impl Fn(&str) -> bool) -> bool {
        let rules = self.rules_for(client);
        if rules
            .iter()
            .any(|r| r.access == Access::Deny && applies(&r.topic))
        {
            return false;
        }
        rules
            .iter()
            .any(|r| r.access.grants(action) && applies(&r.topic))
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
topic read #
topic deny private/#

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
        enum Do {
            Pub,
            Sub,
            Get,
        }
        use Do::*;
        let cases = [
            (&anon, Sub, "public/weather", true),
            (&anon, Sub, "public/#", true),
            (&anon, Sub, "#", true),
            (&anon, Get, "public/weather", true),
            (&anon, Get, "private/x", false),
            (&anon, Pub, "public/weather", false),
            (&alice, Pub, "plant/line1/temp", true),
            (&alice, Sub, "plant/+/temp", true),
            (&alice, Pub, "plant/secret/key", false),
            (&alice, Sub, "plant/#", true),
            (&alice, Sub, "plant/secret/#", false),
            (&alice, Sub, "plant/secret/key", false),
            (&alice, Sub, "plant/secret", false),
            (&alice, Get, "plant/secret/key", false),
            (&alice, Get, "plant/line1/temp", true),
            (&alice, Sub, "public/weather", false),
            (&bob, Pub, "plant/line1/temp", true),
            (&bob, Pub, "plant/line1/temp/x", false),
            (&bob, Sub, "plant/line1/temp", false),
            (&bob, Pub, "devices/b1/t", true),
            (&bob, Pub, "devices/a1/t", false),
            (&bob, Sub, "status/bob", true),
            (&bob, Sub, "status/+", true),
            (&bob, Get, "status/carol", false),
            (&carol, Pub, "devices/c1/x/y", true),
            (&carol, Get, "status/bob", false),
            (&carol, Get, "status/carol", true),
        ];
        for (c, what, t, want) in cases {
            let got = match what {
                Pub => acl.may_publish(c, t),
                Sub => acl.may_subscribe(c, t),
                Get => acl.may_receive(c, t),
            };
            assert_eq!(
                got,
                want,
                "{:?} {} {t}",
                c.username,
                match what {
                    Pub => "publish",
                    Sub => "subscribe",
                    Get => "receive",
                }
            );
        }
        // A client id with a slash or wildcard cannot widen a pattern.
        assert!(!acl.may_publish(&who(Some("carol"), "#"), "devices/x/y"));
        assert!(!acl.may_publish(&who(Some("carol"), "a/b"), "devices/a/b/c"));
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
