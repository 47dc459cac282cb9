//! Topic templates of the sinks that publish: `{gateway}`, `{rule}` and `{device}`, for
//! MQTT topics and NATS subjects.

/// A template with `{gateway}` already filled in.
#[derive(Debug, Clone)]
pub struct TopicTemplate {
    text: String,
    /// Characters a `{device}` value may not bring into the topic.
    reserved: fn(char) -> bool,
}

impl TopicTemplate {
    /// An MQTT topic: `template` with `{gateway}` replaced by `gateway`.
    pub fn new(template: &str, gateway: &str) -> Self {
        Self {
            text: template.replace("{gateway}", gateway),
            reserved: mqtt_reserved,
        }
    }

    /// A NATS subject: `template` with `{gateway}` replaced by `gateway`; a device's
    /// `.`, `*`, `>` and white space become `_`.
    pub fn nats(template: &str, gateway: &str) -> Self {
        Self {
            text: template.replace("{gateway}", gateway),
            reserved: |c| matches!(c, '.' | '*' | '>') || c.is_whitespace(),
        }
    }

    /// The template with `{gateway}` filled in and `{rule}`, `{device}` still open.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The topic of one result: `{rule}` is the rule's name, `{device}` the result's
    /// `device` field (see [`device_level`]).
    pub fn render(&self, rule: &str, payload: &[u8]) -> String {
        let topic = self.text.replace("{rule}", rule);
        if !topic.contains("{device}") {
            return topic;
        }
        topic.replace("{device}", &device_token(payload, self.reserved))
    }
}

/// The result's `device` field as a topic level: text or a number, with characters
/// MQTT reserves in topic levels (`/`, `+`, `#`) replaced by `_`; `unknown` without one.
pub fn device_level(payload: &[u8]) -> String {
    device_token(payload, mqtt_reserved)
}

/// What MQTT reserves in a topic level.
fn mqtt_reserved(c: char) -> bool {
    matches!(c, '/' | '+' | '#')
}

/// The result's `device` field, with the `reserved` characters replaced by `_`.
fn device_token(payload: &[u8], reserved: fn(char) -> bool) -> String {
    #[derive(serde::Deserialize)]
    struct Device {
        device: Option<serde_json::Value>,
    }
    let value = serde_json::from_slice::<Device>(payload)
        .ok()
        .and_then(|d| d.device);
    let text = match value {
        Some(serde_json::Value::String(s)) if !s.is_empty() => s,
        Some(serde_json::Value::Number(n)) => n.to_string(),
        _ => return "unknown".into(),
    };
    text.chars()
        .map(|c| if reserved(c) { '_' } else { c })
        .collect()
}

/// Checks a configured template: a topic name (no wildcards), not empty.
pub fn validate(template: &str) -> Result<(), String> {
    if template.is_empty() || template.contains(['+', '#']) {
        return Err(format!(
            "`topic` = {template:?} must be a non-empty topic without wildcards"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_device_field_becomes_one_safe_topic_level() {
        assert_eq!(device_level(br#"{"device":"press-7","t":1}"#), "press-7");
        assert_eq!(device_level(br#"{"t":1,"device":42}"#), "42");
        assert_eq!(device_level(br#"{"device":"a/b+c#"}"#), "a_b_c_");
        assert_eq!(device_level(br#"{"device":null}"#), "unknown");
        assert_eq!(device_level(br#"{"t":1}"#), "unknown");
        assert_eq!(device_level(b"not json"), "unknown");
    }

    #[test]
    fn templates_fill_gateway_rule_and_device() {
        let t = TopicTemplate::new("site/{gateway}/{rule}/{device}", "gw1");
        assert_eq!(t.render("hot", br#"{"device":"m1"}"#), "site/gw1/hot/m1");
        assert!(validate("a/+/b").is_err() && validate("").is_err() && validate("a/b").is_ok());
        let n = TopicTemplate::nats("site.{gateway}.{rule}.{device}", "gw1");
        assert_eq!(
            n.render("hot", br#"{"device":"line 1.m*>"}"#),
            "site.gw1.hot.line_1_m__"
        );
    }
}
