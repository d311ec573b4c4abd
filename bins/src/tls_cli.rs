//! `mesh tls ca create` and `mesh tls cert create`: the operator CA and the
//! agent certificates for TLS on the RPC port, with Consul's flags, file
//! names and messages. Private keys are written with mode 0600, and never
//! over an existing file.

use std::io::Write;
use std::net::IpAddr;
use std::path::Path;
use std::time::SystemTime;

use mesh_bins::flags::{usage, Flags, Kind, Spec};
use mesh_core::agent_tls::{
    ca_file_names, cert_file_prefix, create_ca, create_cert, CaRequest, CertKind, CertRequest,
    DEFAULT_CA_DAYS, DEFAULT_CERT_DAYS, DEFAULT_DOMAIN,
};

const USAGE: &str = "Usage: mesh tls <ca|cert> create [options]";

const CA_FLAGS: &[Spec] = &[
    (
        "days",
        Kind::Value,
        "Days the CA is valid for. Default: 1825.",
    ),
    (
        "domain",
        Kind::Value,
        "Domain of the cluster (file names, name constraint). Default: consul.",
    ),
    (
        "common-name",
        Kind::Value,
        "Common name of the CA. Default: Consul Agent CA <serial>.",
    ),
    (
        "name-constraint",
        Kind::Bool,
        "The CA signs only for localhost, -domain and -additional-name-constraint.",
    ),
    (
        "additional-name-constraint",
        Kind::Multi,
        "Another DNS domain the CA may sign for (repeatable).",
    ),
];

const CERT_FLAGS: &[Spec] = &[
    (
        "server",
        Kind::Bool,
        "A server certificate (server.<dc>.<domain>).",
    ),
    (
        "client",
        Kind::Bool,
        "A client agent certificate (client.<dc>.<domain>).",
    ),
    ("cli", Kind::Bool, "A CLI certificate (cli.<dc>.<domain>)."),
    (
        "ca",
        Kind::Value,
        "The CA certificate. Default: <domain>-agent-ca.pem.",
    ),
    (
        "key",
        Kind::Value,
        "The CA key. Default: <domain>-agent-ca-key.pem.",
    ),
    ("dc", Kind::Value, "Datacenter. Default: dc1."),
    ("domain", Kind::Value, "Domain. Default: consul."),
    (
        "node",
        Kind::Value,
        "Node name; a server certificate also names <node>.server.<dc>.<domain>.",
    ),
    (
        "days",
        Kind::Value,
        "Days the certificate is valid for. Default: 365.",
    ),
    (
        "additional-dnsname",
        Kind::Multi,
        "Another DNS SAN (repeatable; localhost is always there).",
    ),
    (
        "additional-ipaddress",
        Kind::Multi,
        "Another IP SAN (repeatable; 127.0.0.1 is always there).",
    ),
];

/// `mesh tls ...`; the exit code.
pub fn tls(args: &[String]) -> i32 {
    let result = match args {
        [what, verb, rest @ ..] if what == "ca" && verb == "create" => ca_create(rest),
        [what, verb, rest @ ..] if what == "cert" && verb == "create" => cert_create(rest),
        _ => Err(USAGE.to_string()),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("==> {e}");
            1
        }
    }
}

fn parse(args: &[String], specs: &[Spec], help: &str) -> Result<Flags, String> {
    let flags = Flags::parse(args, specs)
        .map_err(|e| format!("{e}\n\n{help}\n\nOptions:\n\n{}", usage(specs)))?;
    if !flags.positional.is_empty() {
        return Err(format!(
            "unexpected arguments: {:?}\n\n{help}",
            flags.positional
        ));
    }
    Ok(flags)
}

fn domain(flags: &Flags) -> Result<String, String> {
    let domain = flags
        .get("domain")
        .unwrap_or(DEFAULT_DOMAIN)
        .trim_end_matches('.');
    if domain.is_empty() {
        return Err("-domain must not be empty".into());
    }
    Ok(domain.to_string())
}

fn days(flags: &Flags, default: u32) -> Result<u32, String> {
    match flags.number::<u32>("days")? {
        None => Ok(default),
        Some(0) => Err("-days must be at least 1".into()),
        Some(d) => Ok(d),
    }
}

fn ca_create(args: &[String]) -> Result<(), String> {
    let flags = parse(args, CA_FLAGS, "Usage: mesh tls ca create [options]")?;
    let domain = domain(&flags)?;
    let req = CaRequest {
        domain: domain.clone(),
        days: days(&flags, DEFAULT_CA_DAYS)?,
        common_name: flags.get("common-name").map(str::to_string),
        name_constraint: flags.bool("name-constraint"),
        additional_constraints: flags.all("additional-name-constraint"),
    };
    let (cert_file, key_file) = ca_file_names(&domain);
    for file in [&cert_file, &key_file] {
        if Path::new(file).exists() {
            return Err(format!("{file} already exists"));
        }
    }
    let ca = create_ca(&req, SystemTime::now()).map_err(|e| e.to_string())?;
    write_new(&cert_file, &ca.cert_pem, 0o644)?;
    println!("==> Saved {cert_file}");
    write_new(&key_file, ca.key_pem.expose(), 0o600)?;
    println!("==> Saved {key_file}");
    Ok(())
}

fn cert_create(args: &[String]) -> Result<(), String> {
    let help = "Usage: mesh tls cert create [-server|-client|-cli] [options]";
    let flags = parse(args, CERT_FLAGS, help)?;
    let kinds: Vec<CertKind> = [
        ("server", CertKind::Server),
        ("client", CertKind::Client),
        ("cli", CertKind::Cli),
    ]
    .into_iter()
    .filter(|(flag, _)| flags.bool(flag))
    .map(|(_, kind)| kind)
    .collect();
    let kind = match kinds.as_slice() {
        [kind] => *kind,
        [] => {
            return Err(format!(
                "Please provide either -server, -client, or -cli\n\n{help}"
            ))
        }
        _ => return Err("Please provide only one of -server, -client, or -cli".into()),
    };
    let domain = domain(&flags)?;
    let datacenter = flags.get("dc").unwrap_or("dc1").to_string();
    if datacenter.is_empty() {
        return Err("-dc must not be empty".into());
    }
    let node = flags.get("node").map(str::to_string);
    if node.is_some() && kind != CertKind::Server {
        return Err("-node requires -server".into());
    }
    let mut additional_ips = Vec::new();
    for raw in flags.all("additional-ipaddress") {
        let ip: IpAddr = raw
            .parse()
            .map_err(|_| format!("-additional-ipaddress {raw:?} is not an IP address"))?;
        additional_ips.push(ip);
    }
    let req = CertRequest {
        kind,
        datacenter: datacenter.clone(),
        domain: domain.clone(),
        node,
        additional_dns: flags.all("additional-dnsname"),
        additional_ips,
        days: days(&flags, DEFAULT_CERT_DAYS)?,
    };
    let (default_ca, default_key) = ca_file_names(&domain);
    let ca_file = flags.get("ca").map_or(default_ca, str::to_string);
    let key_file = flags.get("key").map_or(default_key, str::to_string);
    let read = |what: &str, path: &str| {
        std::fs::read_to_string(path).map_err(|e| format!("{what} file {path:?}: {e}"))
    };
    let ca_pem = read("CA", &ca_file)?;
    let ca_key = read("CA key", &key_file)?;
    if kind == CertKind::Server {
        println!(
            "==> WARNING: Server Certificates grants authority to become a\n    server and access all state in the cluster including root keys\n    and all ACL tokens. Do not distribute them to production hosts\n    that are not server nodes. Store them as securely as CA keys."
        );
    }
    println!("==> Using {ca_file} and {key_file}");
    let cert = create_cert(&ca_pem, &ca_key, &req, SystemTime::now()).map_err(|e| e.to_string())?;
    let prefix = cert_file_prefix(kind, &datacenter, &domain);
    let index = (0..)
        .find(|i| {
            !Path::new(&format!("{prefix}-{i}.pem")).exists()
                && !Path::new(&format!("{prefix}-{i}-key.pem")).exists()
        })
        .expect("some index is free");
    let cert_file = format!("{prefix}-{index}.pem");
    let cert_key_file = format!("{prefix}-{index}-key.pem");
    write_new(&cert_file, &cert.cert_pem, 0o644)?;
    println!("==> Saved {cert_file}");
    write_new(&cert_key_file, cert.key_pem.expose(), 0o600)?;
    println!("==> Saved {cert_key_file}");
    Ok(())
}

/// Creates `path` (never replacing a file) with `mode`, writes and syncs it.
fn write_new(path: &str, text: &str, mode: u32) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| format!("cannot create {path}: {e}"))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("cannot write {path}: {e}"))
}
