//! `config.d/` drop-ins: every `*.toml` in the `config.d` directory next to
//! the chosen configuration file is merged on top of it in name order, as
//! Kata does (`kata-types/src/config/drop_in.rs`): tables are merged key by
//! key, any other value (arrays included) is replaced by the later file's.

use std::path::{Path, PathBuf};

use super::ConfigError;

/// The directory of drop-ins for `main`: `<dir of main>/config.d`.
pub fn dir_for(main: &Path) -> PathBuf {
    main.parent()
        .unwrap_or_else(|| Path::new("."))
        .join("config.d")
}

/// The drop-in files of `main`, in name (byte) order. A missing `config.d`
/// means none; one that cannot be read is an error.
pub fn files_for(main: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let dir = dir_for(main);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(ConfigError::Read { path: dir, source }),
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| ConfigError::Read {
            path: dir.clone(),
            source,
        })?;
        let path = entry.path();
        let is_toml = path.extension().is_some_and(|e| e == "toml");
        // `metadata` follows symlinks: a link to a file counts.
        if is_toml && std::fs::metadata(&path).is_ok_and(|m| m.is_file()) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Merges `over` into `base`: tables key by key, everything else replaced.
pub fn merge(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// Whether `table` sets the dotted key path `key`.
pub fn sets(table: &toml::Table, key: &str) -> bool {
    let mut parts = key.split('.').peekable();
    let mut current = table;
    while let Some(part) = parts.next() {
        match current.get(part) {
            Some(toml::Value::Table(t)) if parts.peek().is_some() => current = t,
            Some(_) => return parts.peek().is_none(),
            None => return false,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn table(text: &str) -> toml::Table {
        text.parse().expect("toml")
    }

    #[test]
    fn tables_merge_and_values_replace() {
        let mut base = table(
            "[hypervisor.qemu]\ndefault_vcpus = 1\npath = [\"/a\", \"/b\"]\n[agent.kata]\ndial_timeout = 5\n",
        );
        merge(
            &mut base,
            table("[hypervisor.qemu]\npath = [\"/c\"]\ndefault_memory = 512\n"),
        );
        let want = table(
            "[hypervisor.qemu]\ndefault_vcpus = 1\npath = [\"/c\"]\ndefault_memory = 512\n[agent.kata]\ndial_timeout = 5\n",
        );
        assert_eq!(base, want);
        assert!(sets(&base, "hypervisor.qemu.path"));
        assert!(sets(&base, "agent.kata.dial_timeout"));
        assert!(!sets(&base, "agent.kata.log_level"));
        assert!(!sets(&base, "hypervisor.qemu.nope"));
        assert!(!sets(&base, "hypervisor.qemu.path.x"));
    }

    #[test]
    fn files_are_toml_in_name_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let main = dir.path().join("configuration.toml");
        assert!(files_for(&main).expect("no config.d").is_empty());
        let d = dir.path().join("config.d");
        std::fs::create_dir(&d).expect("mkdir");
        for name in ["20-b.toml", "10-a.toml", "readme.md", "30-c.toml.bak"] {
            std::fs::write(d.join(name), "").expect("write");
        }
        std::fs::create_dir(d.join("15-dir.toml")).expect("mkdir");
        assert_eq!(
            files_for(&main).expect("list"),
            vec![d.join("10-a.toml"), d.join("20-b.toml")]
        );
    }

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, text).expect("write");
    }

    #[test]
    fn drop_ins_merge_in_name_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let main = dir.path().join("configuration.toml");
        write(
            &main,
            "[hypervisor.qemu]\ndefault_vcpus = 1\ndefault_memory = 1024\npath = [\"/a\", \"/b\"]\n[agent.kata]\ndial_timeout = 7\n",
        );
        let d = dir.path().join("config.d");
        write(
            &d.join("20-memory.toml"),
            "[hypervisor.qemu]\ndefault_memory = 512\n",
        );
        write(
            &d.join("10-cpu.toml"),
            "[hypervisor.qemu]\ndefault_memory = 4096\ndefault_vcpus = 2\npath = [\"/c\"]\n",
        );
        write(&d.join("99-notes.txt"), "not toml");
        let l = Config::load_from(Some(main.clone()), &[]).expect("loads");
        let q = &l.config.hypervisor.qemu;
        assert_eq!(
            (q.default_vcpus, q.default_memory),
            (2, 512),
            "later files win"
        );
        assert_eq!(q.path, vec![PathBuf::from("/c")], "arrays are replaced");
        assert_eq!(l.config.agent.kata.dial_timeout, 7, "untouched keys stay");
        assert_eq!(
            l.drop_ins,
            vec![d.join("10-cpu.toml"), d.join("20-memory.toml")]
        );
        assert!(l.describe().contains("10-cpu.toml + "), "{}", l.describe());

        // The search path's file gets its own config.d too.
        let l = Config::load_from(None, std::slice::from_ref(&main)).expect("search");
        assert_eq!(l.drop_ins.len(), 2);
        // No file: no drop-ins, whatever exists.
        let l = Config::load_from(None, &[dir.path().join("none.toml")]).expect("defaults");
        assert!(l.drop_ins.is_empty());
    }

    #[test]
    fn drop_in_errors_name_the_drop_in() {
        let dir = tempfile::tempdir().expect("tempdir");
        let main = dir.path().join("configuration.toml");
        write(&main, "[hypervisor.qemu]\ndefault_vcpus = 2\n");
        let bad = dir.path().join("config.d/50-bad.toml");

        write(&bad, "[hypervisor.qemu]\ndefault_vcpu = 2\n");
        match Config::load_file(&main) {
            Err(ConfigError::UnknownKey { path, key }) => {
                assert_eq!(
                    (path.as_path(), key.as_str()),
                    (bad.as_path(), "hypervisor.qemu.default_vcpu")
                );
            }
            other => panic!("expected unknown key, got {other:?}"),
        }
        write(&bad, "[hypervisor.qemu]\ndefault_vcpus = \"two\"\n");
        match Config::load_file(&main) {
            Err(e @ ConfigError::Parse { .. }) => {
                let msg = e.to_string();
                assert!(
                    msg.contains("50-bad.toml") && msg.contains("default_vcpus"),
                    "{msg}"
                );
            }
            other => panic!("expected a parse error, got {other:?}"),
        }
        write(&bad, "[hypervisor.qemu\n");
        assert!(
            matches!(Config::load_file(&main), Err(ConfigError::Parse { path, .. }) if path == bad)
        );
        // Valid alone, invalid together: blamed on the drop-in that set it.
        write(&bad, "[hypervisor.qemu]\ndefault_maxvcpus = 1\n");
        match Config::load_file(&main) {
            Err(ConfigError::Invalid { path, key, .. }) => {
                assert_eq!(
                    (path.as_path(), key),
                    (bad.as_path(), "hypervisor.qemu.default_maxvcpus")
                );
            }
            other => panic!("expected invalid, got {other:?}"),
        }
        // ... and on the main file when no drop-in set the key.
        write(
            &main,
            "[hypervisor.qemu]\ndefault_vcpus = 2\ndefault_maxvcpus = 1\n",
        );
        write(&bad, "[agent.kata]\ndial_timeout = 5\n");
        match Config::load_file(&main) {
            Err(ConfigError::Invalid { path, .. }) => assert_eq!(path, main),
            other => panic!("expected invalid, got {other:?}"),
        }
    }
}
