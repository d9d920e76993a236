//! The lab's `[pki]` table: which certificates a run generates (the runtime's `vpnlab::pki`
//! generates them).

/// What a lab asks for: server and client certificate names.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PkiSpec {
    #[serde(default)]
    pub servers: Vec<String>,
    #[serde(default)]
    pub clients: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pki_spec_from_toml() {
        let s: PkiSpec = toml::from_str("servers = [\"server\"]\nclients = [\"c1\", \"c2\"]").unwrap();
        assert_eq!(s.servers, ["server"]);
        assert_eq!(s.clients, ["c1", "c2"]);
        let s: PkiSpec = toml::from_str("").unwrap();
        assert!(s.servers.is_empty() && s.clients.is_empty());
        assert!(toml::from_str::<PkiSpec>("server = [\"x\"]").is_err());
    }
}
