//! Per-run PKI for the labs: a throw-away CA, one certificate and key per server and client,
//! and an OpenVPN `tls-auth` static key.
//!
//! Everything is generated fresh on every call (new key pair for every certificate, random
//! serial numbers) with ECDSA P-256 keys, so a whole lab PKI takes a few milliseconds.
//! The CA private key is never written anywhere: it only lives for the duration of
//! [`generate`].

use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::{bail, Context, Result};
use rand::RngCore;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SerialNumber, PKCS_ECDSA_P256_SHA256,
};
use time::{Duration, OffsetDateTime};

/// What a lab asks for (the model's `[pki]` table).
pub use vpnlab_model::pki::PkiSpec;

/// Common name of the generated CA.
const CA_CN: &str = "vpnlab CA";

/// Generates a fresh CA, one cert+key per server (EKU serverAuth, KU digitalSignature +
/// keyAgreement, the usages that fit an EC key, CN=name) and per client (EKU clientAuth, same KU,
/// CN=name), and an OpenVPN tls-auth static key, and writes into `dir`: `ca.crt`,
/// `<name>.crt`, `<name>.key` (mode 0600, owned by the calling user), `ta.key` (mode 0600).
///
/// `dir` must exist. Names must be usable as plain file names (`[A-Za-z0-9._-]`, not starting
/// with `.`), must be unique across servers and clients, and must not be `ca` or `ta`.
pub fn generate(spec: &PkiSpec, dir: &Path) -> Result<()> {
    validate_names(spec)?;
    if !dir.is_dir() {
        bail!("PKI directory {} does not exist", dir.display());
    }

    let (not_before, not_after) = validity()?;

    // --- CA ---
    let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).context("generating CA key")?;
    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name = dn(CA_CN);
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params.not_before = not_before;
    ca_params.not_after = not_after;
    ca_params.serial_number = Some(random_serial());
    let ca_cert = ca_params.self_signed(&ca_key).context("self-signing the CA certificate")?;
    let issuer = Issuer::new(ca_params, ca_key);
    write_file(&dir.join("ca.crt"), ca_cert.pem().as_bytes(), 0o644)?;

    // --- leaves ---
    let leaves = spec
        .servers
        .iter()
        .map(|n| (n, ExtendedKeyUsagePurpose::ServerAuth))
        .chain(spec.clients.iter().map(|n| (n, ExtendedKeyUsagePurpose::ClientAuth)));
    for (name, eku) in leaves {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).with_context(|| format!("generating key for {name:?}"))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(name);
        // ExplicitNoCa: writes BasicConstraints CA:FALSE and a SubjectKeyIdentifier.
        params.is_ca = IsCa::ExplicitNoCa;
        // EC keys sign (ECDHE/TLS 1.3) and could do static ECDH; keyEncipherment is RSA-only.
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyAgreement];
        params.extended_key_usages = vec![eku];
        params.use_authority_key_identifier_extension = true;
        params.not_before = not_before;
        params.not_after = not_after;
        params.serial_number = Some(random_serial());
        let cert = params.signed_by(&key, &issuer).with_context(|| format!("signing certificate for {name:?}"))?;
        write_file(&dir.join(format!("{name}.crt")), cert.pem().as_bytes(), 0o644)?;
        write_file(&dir.join(format!("{name}.key")), key.serialize_pem().as_bytes(), 0o600)?;
    }

    // --- tls-auth ---
    write_file(&dir.join("ta.key"), openvpn_static_key().as_bytes(), 0o600)?;
    Ok(())
}

fn validate_names(spec: &PkiSpec) -> Result<()> {
    let mut seen = HashSet::new();
    for name in spec.servers.iter().chain(&spec.clients) {
        let ok = !name.is_empty()
            && !name.starts_with('.')
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !ok {
            bail!(
                "PKI name {name:?} is not a plain file name: use letters, digits, '.', '_', '-' \
                 (not starting with '.')"
            );
        }
        if name == "ca" || name == "ta" {
            bail!("PKI name {name:?} is reserved (ca.crt / ta.key are written by the PKI)");
        }
        if !seen.insert(name.as_str()) {
            bail!("PKI name {name:?} is listed more than once (servers and clients share files)");
        }
    }
    Ok(())
}

fn dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

/// From one day ago (tolerates clock skew between namespaces/hosts) to ten years from now.
fn validity() -> Result<(OffsetDateTime, OffsetDateTime)> {
    let now = OffsetDateTime::now_utc();
    let not_before = now - Duration::days(1);
    let not_after = now
        .replace_year(now.year() + 10)
        // Feb 29 with no Feb 29 ten years on.
        .or_else(|_| (now + Duration::days(1)).replace_year(now.year() + 10))
        .context("computing certificate expiry")?;
    Ok((not_before, not_after))
}

/// 16 random bytes, positive and with a non-zero top byte so it always encodes as
/// a 16-byte INTEGER (RFC 5280: positive, at most 20 octets).
fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

/// A 2048-bit OpenVPN static key in the format `openvpn --genkey secret` writes.
fn openvpn_static_key() -> String {
    let mut key = [0u8; 256];
    rand::rng().fill_bytes(&mut key);
    let mut out = String::with_capacity(700);
    out.push_str("#\n# 2048 bit OpenVPN static key\n#\n-----BEGIN OpenVPN Static key V1-----\n");
    for line in key.chunks(16) {
        for b in line {
            out.push_str(&format!("{b:02x}"));
        }
        out.push('\n');
    }
    out.push_str("-----END OpenVPN Static key V1-----\n");
    out
}

/// Writes `contents` to `path` (replacing it) with exactly `mode`.
fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    // `mode` above only applies to new files (and is masked by the umask): force it.
    f.set_permissions(fs::Permissions::from_mode(mode)).with_context(|| format!("chmod {:o} {}", mode, path.display()))?;
    f.write_all(contents).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn spec(servers: &[&str], clients: &[&str]) -> PkiSpec {
        PkiSpec { servers: servers.iter().map(|s| s.to_string()).collect(), clients: clients.iter().map(|s| s.to_string()).collect() }
    }

    /// Runs openssl in `dir`, returns (success, stdout+stderr).
    fn openssl(dir: &Path, args: &[&str]) -> (bool, String) {
        let out = Command::new("openssl").args(args).current_dir(dir).output().expect("running openssl (is it installed?)");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    }

    fn verify(dir: &Path, purpose: &str, cert: &str) -> (bool, String) {
        openssl(dir, &["verify", "-CAfile", "ca.crt", "-purpose", purpose, cert])
    }

    #[test]
    fn pki_verifies_with_openssl() {
        let tmp = tempfile::TempDir::new().unwrap();
        let dir = tmp.path();
        let start = std::time::Instant::now();
        generate(&spec(&["server"], &["client", "client2"]), dir).unwrap();
        eprintln!("pki::generate (1 server, 2 clients): {:?}", start.elapsed());

        for (purpose, cert) in [("sslserver", "server.crt"), ("sslclient", "client.crt"), ("sslclient", "client2.crt")] {
            let (ok, text) = verify(dir, purpose, cert);
            assert!(ok, "openssl verify -purpose {purpose} {cert}: {text}");
            assert!(text.contains(&format!("{cert}: OK")), "{text}");
        }
        // EKUs are enforced: a client cert is not a server cert and vice versa.
        assert!(!verify(dir, "sslserver", "client.crt").0);
        assert!(!verify(dir, "sslclient", "server.crt").0);

        // Subjects, CA extensions.
        let (ok, text) = openssl(dir, &["x509", "-in", "server.crt", "-noout", "-subject"]);
        assert!(ok && (text.contains("CN=server") || text.contains("CN = server")), "{text}");
        let (ok, text) = openssl(dir, &["x509", "-in", "ca.crt", "-noout", "-ext", "basicConstraints,keyUsage"]);
        assert!(ok, "{text}");
        assert!(text.contains("CA:TRUE"), "{text}");
        assert!(text.contains("Certificate Sign") && text.contains("CRL Sign"), "{text}");

        // Keys parse, match their certificates and are private.
        for name in ["server", "client", "client2"] {
            let key = format!("{name}.key");
            let crt = format!("{name}.crt");
            let (ok, key_pub) = openssl(dir, &["pkey", "-in", &key, "-pubout"]);
            assert!(ok, "{key_pub}");
            let (ok, crt_pub) = openssl(dir, &["x509", "-in", &crt, "-noout", "-pubkey"]);
            assert!(ok, "{crt_pub}");
            assert_eq!(key_pub, crt_pub, "{name}: key does not match certificate");
            let mode = fs::metadata(dir.join(&key)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{key}");
        }

        // Serial numbers differ.
        let serials: HashSet<String> = ["ca.crt", "server.crt", "client.crt", "client2.crt"]
            .iter()
            .map(|c| openssl(dir, &["x509", "-in", c, "-noout", "-serial"]).1)
            .collect();
        assert_eq!(serials.len(), 4, "{serials:?}");

        check_ta_key(&fs::read_to_string(dir.join("ta.key")).unwrap());
        let mode = fs::metadata(dir.join("ta.key")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    fn check_ta_key(text: &str) {
        let lines: Vec<&str> = text.split_inclusive('\n').collect();
        assert_eq!(lines.len(), 4 + 16 + 1, "{text}");
        assert_eq!(lines[..4].concat(), "#\n# 2048 bit OpenVPN static key\n#\n-----BEGIN OpenVPN Static key V1-----\n");
        for l in &lines[4..20] {
            let hex = l.strip_suffix('\n').expect("line ends in \\n");
            assert_eq!(hex.len(), 32, "{l:?}");
            assert!(hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)), "{l:?}");
        }
        assert_eq!(lines[20], "-----END OpenVPN Static key V1-----\n");
    }

    #[test]
    fn pki_is_fresh_every_call() {
        let a = tempfile::TempDir::new().unwrap();
        let b = tempfile::TempDir::new().unwrap();
        let s = spec(&["server"], &["client"]);
        generate(&s, a.path()).unwrap();
        generate(&s, b.path()).unwrap();
        for f in ["ca.crt", "server.crt", "server.key", "client.key", "ta.key"] {
            assert_ne!(fs::read(a.path().join(f)).unwrap(), fs::read(b.path().join(f)).unwrap(), "{f} identical across runs");
        }
        // Regenerating into the same dir replaces everything and stays consistent.
        generate(&s, a.path()).unwrap();
        assert!(verify(a.path(), "sslserver", "server.crt").0);
    }

    #[test]
    fn pki_empty_spec_writes_ca_and_ta() {
        let tmp = tempfile::TempDir::new().unwrap();
        generate(&PkiSpec::default(), tmp.path()).unwrap();
        let mut names: Vec<String> = fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        assert_eq!(names, ["ca.crt", "ta.key"]);
    }

    #[test]
    fn pki_rejects_bad_names() {
        let tmp = tempfile::TempDir::new().unwrap();
        for bad in [
            spec(&["../x"], &[]),
            spec(&[""], &[]),
            spec(&[".hidden"], &[]),
            spec(&["ca"], &[]),
            spec(&[], &["ta"]),
            spec(&["a b"], &[]),
            spec(&["same"], &["same"]),
            spec(&[], &["c", "c"]),
        ] {
            assert!(generate(&bad, tmp.path()).is_err(), "{bad:?} accepted");
        }
        assert!(generate(&spec(&["s"], &[]), &tmp.path().join("missing")).is_err());
        // Nothing was written for the rejected specs.
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 0);
    }

    /// Writes a PKI into $VPNLAB_PKI_DIR, for trying it out with real daemons:
    /// `VPNLAB_PKI_DIR=/tmp/x cargo test -p vpnlab pki_write_to_env_dir -- --ignored`
    #[test]
    #[ignore]
    fn pki_write_to_env_dir() {
        let dir = std::env::var("VPNLAB_PKI_DIR").expect("set VPNLAB_PKI_DIR");
        generate(&spec(&["server"], &["client"]), Path::new(&dir)).unwrap();
    }
}
