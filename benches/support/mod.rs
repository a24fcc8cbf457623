//! Set-up shared by the benchmark programs.

use std::collections::BTreeMap;

use rekindle_rules::{RuleBook, RuleBookConfig, RuleConfig, SegmentConfig, WindowConfig, Windows};

/// The built-in rules and segments, exactly as the binary's defaults configure them.
pub fn default_rules() -> RuleBookConfig {
    let defaults: toml::Table =
        toml::from_str(include_str!("../../crates/rekindle/src/defaults.toml")).expect("defaults");
    let rules: BTreeMap<String, RuleConfig> = defaults
        .get("rules")
        .cloned()
        .expect("[rules] in defaults")
        .try_into()
        .expect("rule tables");
    let segments: SegmentConfig = defaults
        .get("segments")
        .cloned()
        .expect("[segments] in defaults")
        .try_into()
        .expect("segment table");
    RuleBookConfig {
        rules,
        segments,
        ..RuleBookConfig::default()
    }
}

/// The default rules over one-day buckets, 35 retained, with RFM segments on or off (the
/// growth-analytics switch of the scale benchmark).
pub fn rule_book_with(segments: bool) -> RuleBook {
    let windows = Windows::new(&WindowConfig::default()).expect("windows");
    let mut config = default_rules();
    config.segments.enabled = segments;
    RuleBook::new(windows, &config).expect("rule book")
}
