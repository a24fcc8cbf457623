//! Kafka security settings (`[kafka.security]`): TLS and SASL for librdkafka, with secrets
//! from environment variables or files, never printed.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{anyhow, Context};
use serde::Deserialize;

/// A secret value: its `Debug` output is redacted so it cannot reach a log by accident.
#[derive(Clone, Deserialize, PartialEq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SecurityConfig {
    /// `plaintext`, `ssl`, `sasl_plaintext` or `sasl_ssl`.
    pub protocol: Option<String>,
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    pub sasl_mechanism: Option<String>,
    pub sasl_username: Option<String>,
    /// Best set through `REKINDLE__KAFKA__SECURITY__SASL_PASSWORD`, not in a file.
    pub sasl_password: Option<Secret>,
    /// A file holding the password (a mounted Kubernetes Secret); one trailing newline is
    /// ignored.
    pub sasl_password_file: Option<PathBuf>,
    pub ssl_ca_location: Option<PathBuf>,
    pub ssl_certificate_location: Option<PathBuf>,
    pub ssl_key_location: Option<PathBuf>,
    pub ssl_key_password: Option<Secret>,
    pub ssl_key_password_file: Option<PathBuf>,
}

const PROTOCOLS: [&str; 4] = ["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"];
const MECHANISMS: [&str; 3] = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"];

fn invalid(key: &str, why: &str) -> anyhow::Error {
    anyhow!("invalid configuration: kafka.security.{key}: {why}")
}

/// Exactly one of a value and a file holding it, read now.
fn one_secret(
    key: &str,
    value: &Option<Secret>,
    file: &Option<PathBuf>,
) -> anyhow::Result<Option<Secret>> {
    match (value, file) {
        (Some(_), Some(_)) => Err(invalid(key, "set either the value or the file, not both")),
        (Some(v), None) => Ok(Some(v.clone())),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path).with_context(|| {
                format!("kafka.security.{key}_file: reading {}", path.display())
            })?;
            let text = text.strip_suffix('\n').unwrap_or(&text);
            let text = text.strip_suffix('\r').unwrap_or(text);
            Ok(Some(Secret::new(text)))
        }
        (None, None) => Ok(None),
    }
}

impl SecurityConfig {
    /// The librdkafka properties these settings stand for, secrets resolved. Fails, naming
    /// the key, on an unknown protocol or mechanism, SASL without credentials, or an
    /// unreadable secret file.
    pub fn librdkafka_properties(&self) -> anyhow::Result<BTreeMap<String, Secret>> {
        let mut props = BTreeMap::new();
        let Some(protocol) = &self.protocol else {
            if self.sasl_mechanism.is_some() || self.sasl_username.is_some() {
                return Err(invalid(
                    "protocol",
                    "SASL settings need protocol sasl_plaintext or sasl_ssl",
                ));
            }
            return Ok(props);
        };
        if !PROTOCOLS.contains(&protocol.as_str()) {
            return Err(invalid(
                "protocol",
                "must be plaintext, ssl, sasl_plaintext or sasl_ssl",
            ));
        }
        props.insert("security.protocol".into(), Secret::new(protocol.as_str()));
        if protocol.starts_with("sasl") {
            let mechanism = self
                .sasl_mechanism
                .as_deref()
                .ok_or_else(|| invalid("sasl_mechanism", "is required with SASL"))?;
            if !MECHANISMS.contains(&mechanism) {
                return Err(invalid(
                    "sasl_mechanism",
                    "must be PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512",
                ));
            }
            let username = self
                .sasl_username
                .as_deref()
                .ok_or_else(|| invalid("sasl_username", "is required with SASL"))?;
            let password = one_secret("sasl_password", &self.sasl_password, &self.sasl_password_file)?
                .ok_or_else(|| invalid("sasl_password", "is required with SASL (the value, from the environment, or sasl_password_file)"))?;
            props.insert("sasl.mechanisms".into(), Secret::new(mechanism));
            props.insert("sasl.username".into(), Secret::new(username));
            props.insert("sasl.password".into(), password);
        } else if self.sasl_mechanism.is_some() || self.sasl_username.is_some() {
            return Err(invalid(
                "protocol",
                "SASL settings need protocol sasl_plaintext or sasl_ssl",
            ));
        }
        let paths = [
            ("ssl.ca.location", &self.ssl_ca_location),
            ("ssl.certificate.location", &self.ssl_certificate_location),
            ("ssl.key.location", &self.ssl_key_location),
        ];
        for (property, path) in paths {
            if let Some(path) = path {
                props.insert(property.into(), Secret::new(path.display().to_string()));
            }
        }
        if let Some(password) = one_secret(
            "ssl_key_password",
            &self.ssl_key_password,
            &self.ssl_key_password_file,
        )? {
            props.insert("ssl.key.password".into(), password);
        }
        Ok(props)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sasl_scram_over_tls_reaches_librdkafka_properties() {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("password");
        std::fs::write(&file, "s3cr3t-from-file\n").expect("write");
        let config = SecurityConfig {
            protocol: Some("sasl_ssl".into()),
            sasl_mechanism: Some("SCRAM-SHA-512".into()),
            sasl_username: Some("rekindle".into()),
            sasl_password_file: Some(file),
            ssl_ca_location: Some("/etc/kafka/ca.pem".into()),
            ..SecurityConfig::default()
        };
        let props = config.librdkafka_properties().expect("valid");
        let plain: BTreeMap<&str, &str> = props
            .iter()
            .map(|(k, v)| (k.as_str(), v.expose()))
            .collect();
        assert_eq!(
            plain,
            BTreeMap::from([
                ("sasl.mechanisms", "SCRAM-SHA-512"),
                ("sasl.password", "s3cr3t-from-file"),
                ("sasl.username", "rekindle"),
                ("security.protocol", "sasl_ssl"),
                ("ssl.ca.location", "/etc/kafka/ca.pem"),
            ])
        );
        assert!(
            !format!("{props:?}").contains("s3cr3t"),
            "Debug redacts secrets"
        );
    }

    #[test]
    fn incomplete_or_contradictory_settings_name_their_key() {
        let err = |c: SecurityConfig| c.librdkafka_properties().expect_err("invalid").to_string();
        let sasl = SecurityConfig {
            protocol: Some("sasl_plaintext".into()),
            sasl_mechanism: Some("PLAIN".into()),
            sasl_username: Some("u".into()),
            ..SecurityConfig::default()
        };
        assert!(err(sasl.clone()).contains("kafka.security.sasl_password"));
        let both = SecurityConfig {
            sasl_password: Some(Secret::new("a")),
            sasl_password_file: Some("/nowhere".into()),
            ..sasl.clone()
        };
        assert!(err(both).contains("not both"));
        let wrong = SecurityConfig {
            sasl_mechanism: Some("GSSAPI".into()),
            sasl_password: Some(Secret::new("a")),
            ..sasl
        };
        assert!(err(wrong).contains("kafka.security.sasl_mechanism"));
        let stray = SecurityConfig {
            protocol: Some("ssl".into()),
            sasl_username: Some("u".into()),
            ..SecurityConfig::default()
        };
        assert!(err(stray).contains("kafka.security.protocol"));
        let missing_file = SecurityConfig {
            protocol: Some("ssl".into()),
            ssl_key_password_file: Some("/nowhere/at/all".into()),
            ..SecurityConfig::default()
        };
        assert!(err(missing_file).contains("ssl_key_password_file"));
    }
}
