//! Set-up shared by the benchmark programs.

use std::collections::BTreeMap;

use rekindle_rules::{RuleBook, RuleBookConfig, RuleConfig, WindowConfig, Windows};

/// The built-in rules, exactly as the binary's defaults configure them.
pub fn default_rules() -> RuleBookConfig {
    let defaults: toml::Table =
        toml::from_str(include_str!("../../crates/rekindle/src/defaults.toml")).expect("defaults");
    let rules: BTreeMap<String, RuleConfig> = defaults
        .get("rules")
        .cloned()
        .expect("[rules] in defaults")
        .try_into()
        .expect("rule tables");
    RuleBookConfig {
        rules,
        ..RuleBookConfig::default()
    }
}

/// The default rules over one-day buckets, 35 retained.
pub fn rule_book() -> RuleBook {
    let windows = Windows::new(&WindowConfig::default()).expect("windows");
    RuleBook::new(windows, &default_rules()).expect("rule book")
}
