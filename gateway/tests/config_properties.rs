//! Property tests: whatever a config file holds, loading it answers with a config or an
//! error naming the file, never a panic.

use std::path::Path;

use fieldgate::config::{Config, DEFAULT_CONFIG};
use proptest::prelude::*;

/// The README's example config: every table and most keys.
fn example() -> String {
    let readme = include_str!("../../README.md");
    let start = readme.find("```toml\ngateway_id").map_or(0, |i| i + 8);
    let len = readme[start..].find("```").unwrap_or(0);
    readme[start..start + len].to_string()
}

/// Pieces of TOML that touch the keys the gateway reads.
fn tomlish() -> impl Strategy<Value = String> {
    let piece = prop::sample::select(vec![
        "[broker]\n",
        "[admin]\n",
        "[queue]\n",
        "[ingest]\n",
        "[log]\n",
        "[sinks.a]\n",
        "[[modbus.devices]]\n",
        "[[modbus.devices.groups]]\n",
        "type = \"mqtt\"\n",
        "type = \"file\"\n",
        "host = \"h\"\n",
        "path = \"p\"\n",
        "listen = \"127.0.0.1:0\"\n",
        "segment_size = 0\n",
        "max_payload_size = 18446744073709551615\n",
        "level = \"x\"\n",
        "rules_dir = \"r\"\n",
        "max_bytes = -1\n",
        "ttl = \"0s\"\n",
        "name = \"d\"\n",
        "interval = \"1ms\"\n",
        "tags = [{ name = \"x\", register = 40001 }]\n",
        "transport = { type = \"tcp\", host = \"h\" }\n",
        "= \n",
        "\"",
        "[",
        "]",
        "\n",
    ]);
    prop::collection::vec(piece, 0..40).prop_map(|p| p.concat())
}

fn loads_or_names_the_file(text: &str) -> Result<(), TestCaseError> {
    if let Err(e) = Config::parse(text, "gw.toml", Path::new("/etc/fg")) {
        prop_assert!(e.to_string().contains("gw.toml"), "{e}");
    }
    Ok(())
}

/// `text` with the characters at the given places replaced.
fn edited(mut text: String, edits: &[(prop::sample::Index, &str)]) -> String {
    for (at, with) in edits {
        let at = at.index(text.len().max(1));
        let at = (0..=at.min(text.len()))
            .rev()
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(0);
        let end = (at + 1..=text.len())
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(text.len());
        text.replace_range(at..end, with);
    }
    text
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn any_text_loads_or_is_refused_naming_the_file(text in ".{0,300}") {
        loads_or_names_the_file(&text)?;
    }

    #[test]
    fn toml_pieces_load_or_are_refused_naming_the_file(text in tomlish()) {
        loads_or_names_the_file(&text)?;
    }

    #[test]
    fn an_example_config_with_characters_changed_loads_or_is_refused(
        edits in prop::collection::vec(
            (any::<prop::sample::Index>(), prop::sample::select(vec!["", "0", "\"", "=", "\n", "[", "-", "x", "99999999999"])),
            1..5,
        ),
        default in any::<bool>(),
    ) {
        let base = if default { DEFAULT_CONFIG.to_string() } else { example() };
        loads_or_names_the_file(&edited(base, &edits))?;
    }
}
