//! Consul-style flag parsing: `-name value`, `-name=value`, `--name` forms,
//! boolean flags, repeatable flags, and Go's error wording for unknown
//! flags, so Consul users' muscle memory works.

use std::collections::BTreeMap;

/// What a flag takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `-server`; `-server=false` also accepted.
    Bool,
    /// `-node consul00` (last one wins).
    Value,
    /// `-join a -join b` (all kept, in order).
    Multi,
}

/// A flag definition: name, kind and help text.
pub type Spec = (&'static str, Kind, &'static str);

/// Parsed flags plus positional arguments.
#[derive(Debug, Default)]
pub struct Flags {
    values: BTreeMap<String, Vec<String>>,
    /// Arguments that are not flags, in order.
    pub positional: Vec<String>,
}

impl Flags {
    /// Parses `args` against `specs`. Positional arguments may follow flags;
    /// `--` ends flag parsing.
    pub fn parse(args: &[String], specs: &[Spec]) -> Result<Self, String> {
        let mut flags = Flags::default();
        let mut i = 0;
        while i < args.len() {
            let arg = &args[i];
            i += 1;
            if arg == "--" {
                flags.positional.extend(args[i..].iter().cloned());
                break;
            }
            let Some(stripped) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) else {
                flags.positional.push(arg.clone());
                continue;
            };
            if stripped.is_empty() {
                flags.positional.push(arg.clone());
                continue;
            }
            let (name, inline) = match stripped.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (stripped, None),
            };
            let Some((_, kind, _)) = specs.iter().find(|(n, _, _)| *n == name) else {
                return Err(format!("flag provided but not defined: -{name}"));
            };
            let value = match (kind, inline) {
                (Kind::Bool, None) => "true".to_string(),
                (Kind::Bool, Some(v)) => match v.as_str() {
                    "true" | "1" | "t" | "T" | "TRUE" | "True" => "true".into(),
                    "false" | "0" | "f" | "F" | "FALSE" | "False" => "false".into(),
                    _ => return Err(format!("invalid boolean value {v:?} for -{name}")),
                },
                (_, Some(v)) => v,
                (_, None) => match args.get(i) {
                    Some(v) => {
                        i += 1;
                        v.clone()
                    }
                    None => return Err(format!("flag needs an argument: -{name}")),
                },
            };
            let slot = flags.values.entry(name.to_string()).or_default();
            if *kind != Kind::Multi {
                slot.clear();
            }
            slot.push(value);
        }
        Ok(flags)
    }

    /// A boolean flag.
    pub fn bool(&self, name: &str) -> bool {
        self.get(name) == Some("true")
    }

    /// A value flag.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values
            .get(name)
            .and_then(|v| v.last())
            .map(String::as_str)
    }

    /// All values of a repeatable flag.
    pub fn all(&self, name: &str) -> Vec<String> {
        self.values.get(name).cloned().unwrap_or_default()
    }

    /// A value flag parsed as a number.
    pub fn number<T: std::str::FromStr>(&self, name: &str) -> Result<Option<T>, String> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| format!("invalid value {v:?} for flag -{name}: parse error")),
        }
    }
}

/// Help text for a flag table.
pub fn usage(specs: &[Spec]) -> String {
    let mut out = String::new();
    for (name, kind, help) in specs {
        let arg = match kind {
            Kind::Bool => "",
            _ => "=<value>",
        };
        out.push_str(&format!("  -{name}{arg}\n      {help}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPECS: &[Spec] = &[
        ("server", Kind::Bool, ""),
        ("node", Kind::Value, ""),
        ("join", Kind::Multi, ""),
        ("bootstrap-expect", Kind::Value, ""),
    ];

    fn parse(args: &[&str]) -> Result<Flags, String> {
        Flags::parse(
            &args.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            SPECS,
        )
    }

    #[test]
    fn consul_spellings_all_work() {
        let f = parse(&[
            "-server",
            "--node",
            "consul00",
            "-bootstrap-expect=3",
            "--join=a",
            "-join",
            "b",
            "pos",
        ])
        .unwrap();
        assert!(f.bool("server"));
        assert_eq!(f.get("node"), Some("consul00"));
        assert_eq!(f.number::<u32>("bootstrap-expect"), Ok(Some(3)));
        assert_eq!(f.all("join"), vec!["a", "b"]);
        assert_eq!(f.positional, vec!["pos"]);
        assert!(!parse(&["-server=false"]).unwrap().bool("server"));
    }

    #[test]
    fn bad_flags_get_go_style_errors() {
        assert_eq!(
            parse(&["-nope"]).unwrap_err(),
            "flag provided but not defined: -nope"
        );
        assert_eq!(
            parse(&["-node"]).unwrap_err(),
            "flag needs an argument: -node"
        );
        assert!(parse(&["-server=maybe"])
            .unwrap_err()
            .contains("invalid boolean"));
        let f = parse(&["-bootstrap-expect", "three"]).unwrap();
        assert!(f
            .number::<u32>("bootstrap-expect")
            .unwrap_err()
            .contains("three"));
    }
}
