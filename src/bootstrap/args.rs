//! The shim v2 command line, parsed the way Go's `flag` package parses it
//! (containerd and CRI-O build it for Go shims): `-flag value`,
//! `-flag=value`, `--flag value`, `--flag=value`, booleans without a value,
//! flags end at the first positional argument (the action) or at `--`.

/// What the shim binary was asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Print the address of a serving shim for this container, spawning one
    /// for a new sandbox.
    Start,
    /// Clean up after a shim that is gone (containerd, after every task).
    Delete,
    /// CRI-O asks every runtime for its OCI features at start-up.
    Features,
    /// Internal: the daemon `start` spawns.
    Serve,
    /// Internal: the connection keeper `serve` spawns under CRI-O.
    Keeper,
}

impl Action {
    fn parse(s: &str) -> Option<Action> {
        match s {
            "start" => Some(Action::Start),
            "delete" => Some(Action::Delete),
            "features" => Some(Action::Features),
            "serve" => Some(Action::Serve),
            "keeper" => Some(Action::Keeper),
            _ => None,
        }
    }
}

/// The flags containerd's shim contract defines, plus the action.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Flags {
    pub namespace: String,
    /// containerd's gRPC address; empty under CRI-O.
    pub address: String,
    /// Ignored: events go over ttrpc to `TTRPC_ADDRESS`.
    pub publish_binary: String,
    pub id: String,
    pub bundle: String,
    /// Ignored: the socket is derived from the sandbox id.
    pub socket: String,
    pub debug: bool,
    pub version: bool,
    pub info: bool,
    pub help: bool,
    pub action: Option<Action>,
}

/// A command line the shim does not understand (exit status 2, like Go).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgsError {
    #[error("flag provided but not defined: {0}")]
    UnknownFlag(String),
    #[error("flag needs an argument: -{0}")]
    MissingValue(String),
    #[error("invalid boolean value {value:?} for -{flag}")]
    BadBool { flag: String, value: String },
    #[error("bad flag syntax: {0}")]
    BadSyntax(String),
    #[error("unknown action {0:?} (expected start, delete or features)")]
    UnknownAction(String),
}

enum Slot<'a> {
    Text(&'a mut String),
    Bool(&'a mut bool),
}

impl Flags {
    fn slot(&mut self, name: &str) -> Option<Slot<'_>> {
        Some(match name {
            "namespace" => Slot::Text(&mut self.namespace),
            "address" => Slot::Text(&mut self.address),
            "publish-binary" => Slot::Text(&mut self.publish_binary),
            "id" => Slot::Text(&mut self.id),
            "bundle" => Slot::Text(&mut self.bundle),
            "socket" => Slot::Text(&mut self.socket),
            "debug" => Slot::Bool(&mut self.debug),
            "v" | "version" => Slot::Bool(&mut self.version),
            "info" => Slot::Bool(&mut self.info),
            "h" | "help" => Slot::Bool(&mut self.help),
            _ => return None,
        })
    }
}

/// Parses the arguments after the program name.
pub fn parse<I>(args: I) -> Result<Flags, ArgsError>
where
    I: IntoIterator<Item = String>,
{
    let mut flags = Flags::default();
    let mut args = args.into_iter();
    let mut positional = None;
    while let Some(arg) = args.next() {
        if arg.len() < 2 || !arg.starts_with('-') {
            positional = Some(arg);
            break;
        }
        let name = if let Some(rest) = arg.strip_prefix("--") {
            if rest.is_empty() {
                // `--` ends the flags; what follows is positional.
                positional = args.next();
                break;
            }
            rest
        } else {
            &arg[1..]
        };
        if name.starts_with('-') || name.starts_with('=') {
            return Err(ArgsError::BadSyntax(arg.clone()));
        }
        let (name, inline) = match name.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (name, None),
        };
        match flags.slot(name) {
            None => return Err(ArgsError::UnknownFlag(format!("-{name}"))),
            Some(Slot::Bool(b)) => {
                *b = match inline {
                    None => true,
                    Some(v) => parse_bool(v).ok_or_else(|| ArgsError::BadBool {
                        flag: name.to_string(),
                        value: v.to_string(),
                    })?,
                }
            }
            Some(Slot::Text(s)) => {
                // The next argument is the value even when it is empty or
                // starts with '-' (`-address ""` from CRI-O).
                *s = match inline {
                    Some(v) => v.to_string(),
                    None => args
                        .next()
                        .ok_or_else(|| ArgsError::MissingValue(name.to_string()))?,
                }
            }
        }
    }
    // Like Go shims, only the first positional argument matters.
    if let Some(p) = positional {
        flags.action = Some(Action::parse(&p).ok_or(ArgsError::UnknownAction(p))?);
    }
    Ok(flags)
}

/// The spellings Go's `strconv.ParseBool` accepts.
fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "5f0c9a1e2b3d4c5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6";

    fn argv(s: &[&str]) -> Vec<String> {
        s.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn crio_start() {
        let f = parse(argv(&[
            "-namespace",
            "default",
            "-address",
            "",
            "-publish-binary",
            "/usr/bin/crio",
            "-id",
            ID,
            "start",
        ]))
        .expect("crio argv");
        assert_eq!(
            f,
            Flags {
                namespace: "default".into(),
                address: String::new(),
                publish_binary: "/usr/bin/crio".into(),
                id: ID.into(),
                action: Some(Action::Start),
                ..Flags::default()
            }
        );
    }

    #[test]
    fn containerd_start_and_delete() {
        let f = parse(argv(&[
            "-namespace",
            "k8s.io",
            "-address",
            "/run/containerd/containerd.sock",
            "-publish-binary",
            "/usr/bin/containerd",
            "-id",
            ID,
            "-debug",
            "start",
        ]))
        .expect("containerd start");
        assert_eq!(f.namespace, "k8s.io");
        assert_eq!(f.address, "/run/containerd/containerd.sock");
        assert_eq!(f.publish_binary, "/usr/bin/containerd");
        assert_eq!(f.id, ID);
        assert!(f.debug);
        assert_eq!(f.action, Some(Action::Start));

        let bundle = format!("/run/containerd/io.containerd.runtime.v2.task/k8s.io/{ID}");
        let f = parse(argv(&[
            "-namespace",
            "k8s.io",
            "-address",
            "/run/containerd/containerd.sock",
            "-publish-binary",
            "/usr/bin/containerd",
            "-id",
            ID,
            "-bundle",
            &bundle,
            "delete",
        ]))
        .expect("containerd delete");
        assert_eq!(f.bundle, bundle);
        assert_eq!(f.id, ID);
        assert!(!f.debug);
        assert_eq!(f.action, Some(Action::Delete));
    }

    #[test]
    fn go_flag_spellings() {
        let f = parse(argv(&[
            "--namespace=ns",
            "--id",
            "x",
            "-address=",
            "-debug=false",
            "--bundle=/b=c",
            "--",
            "delete",
        ]))
        .expect("spellings");
        assert_eq!(f.namespace, "ns");
        assert_eq!(f.id, "x");
        assert_eq!(f.address, "");
        assert!(!f.debug);
        assert_eq!(f.bundle, "/b=c");
        assert_eq!(f.action, Some(Action::Delete));

        // A value may start with '-'.
        assert_eq!(
            parse(argv(&["-id", "-x", "start"])).expect("dash value").id,
            "-x"
        );
        // Flags after the action are not parsed (Go stops at the first
        // positional argument).
        let f = parse(argv(&["start", "-bogus"])).expect("after action");
        assert_eq!(f.action, Some(Action::Start));
    }

    #[test]
    fn version_info_and_features() {
        for v in ["-v", "-version", "--version", "--v", "-version=true"] {
            assert!(parse(argv(&[v])).expect(v).version, "{v}");
        }
        let f = parse(argv(&["-info"])).expect("info");
        assert!(f.info);
        assert_eq!(f.action, None);
        assert_eq!(
            parse(argv(&["features"])).expect("features").action,
            Some(Action::Features)
        );
        assert!(parse(argv(&["-h"])).expect("help").help);
        assert_eq!(parse(Vec::new()).expect("empty"), Flags::default());
    }

    #[test]
    fn rejects_what_go_rejects() {
        assert_eq!(
            parse(argv(&["-bogus", "start"])),
            Err(ArgsError::UnknownFlag("-bogus".into()))
        );
        assert_eq!(
            parse(argv(&["-id"])),
            Err(ArgsError::MissingValue("id".into()))
        );
        assert_eq!(
            parse(argv(&["-debug=maybe"])),
            Err(ArgsError::BadBool {
                flag: "debug".into(),
                value: "maybe".into()
            })
        );
        assert_eq!(
            parse(argv(&["---id", "x"])),
            Err(ArgsError::BadSyntax("---id".into()))
        );
        assert_eq!(
            parse(argv(&["-=x"])),
            Err(ArgsError::BadSyntax("-=x".into()))
        );
        assert_eq!(
            parse(argv(&["-id", "x", "run"])),
            Err(ArgsError::UnknownAction("run".into()))
        );
        // A lone "-" is a positional argument, hence an unknown action.
        assert_eq!(
            parse(argv(&["-"])),
            Err(ArgsError::UnknownAction("-".into()))
        );
    }
}
