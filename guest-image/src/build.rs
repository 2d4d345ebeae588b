//! Build orchestration: plan the image from the node (kernel, modules,
//! agent and its libraries), decide whether the installed image is current,
//! assemble and compress the initrd, and install it crash-safely under the
//! output lock. Also the raw-boot baseline initrd used by benchmarks.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kata_agent_protocol::guest;
use thiserror::Error;

use crate::compress::{self, CompressError, Compression};
use crate::cpio::{CpioError, Kind, Tree};
use crate::elf::{self, ElfError};
use crate::install::{self, InstallError};
use crate::kernel::{self, Kernel, KernelError, Roots};
use crate::manifest::{self, InitrdInfo, LibEntry, Manifest, ManifestError, ModuleEntry};
use crate::modules::{self, ModuleDb, ModuleError};

/// Default agent location (installed by `make install`).
pub const DEFAULT_AGENT: &str = "/usr/libexec/kata-containers/kata-agent";
/// Default output directory, where the shim's config points.
pub const DEFAULT_OUTPUT_DIR: &str = "/var/cache/kata-containers/osbuilder-images";
/// Default busybox for the raw-boot initrd (Debian `busybox-static`).
pub const DEFAULT_BUSYBOX: &str = "/bin/busybox";
/// File names in the output layout.
pub const INITRD_NAME: &str = "kata.initrd";
/// Manifest file name next to each initrd.
pub const MANIFEST_NAME: &str = "manifest.json";
/// Stable symlink to the kernel image.
pub const KERNEL_LINK: &str = "kata.kernel";

/// How long `<agent> --version` may take before we give up on it.
const VERSION_TIMEOUT: Duration = Duration::from_secs(5);

/// Build failures; each renders as one actionable line.
#[derive(Debug, Error)]
pub enum BuildError {
    /// Kernel discovery or config.
    #[error(transparent)]
    Kernel(#[from] KernelError),
    /// Module resolution.
    #[error(transparent)]
    Module(#[from] ModuleError),
    /// Agent or busybox ELF inspection.
    #[error(transparent)]
    Elf(#[from] ElfError),
    /// Codec choice or (de)compression.
    #[error(transparent)]
    Compress(#[from] CompressError),
    /// Archive writing.
    #[error(transparent)]
    Cpio(#[from] CpioError),
    /// Manifest I/O.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// Installing outputs.
    #[error(transparent)]
    Install(#[from] InstallError),
    /// The agent binary is not there.
    #[error("agent binary {} not found; install it (`make install`) or pass --agent PATH", .0.display())]
    AgentMissing(PathBuf),
    /// busybox is not there.
    #[error("busybox {} not found; install it with `apt-get install busybox-static` or pass --busybox PATH", .0.display())]
    BusyboxMissing(PathBuf),
    /// The floor image's program is not there.
    #[error("floor program {} not found; build it with `cargo build --release -p kata-floor` or pass --init-program PATH", .0.display())]
    FloorProgramMissing(PathBuf),
    /// Reading an input file failed.
    #[error("reading {}: {source}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

pub(crate) fn read(path: &Path) -> Result<Vec<u8>, BuildError> {
    fs::read(path).map_err(|source| BuildError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Inputs of a build.
#[derive(Debug, Clone)]
pub struct Options {
    /// Kernel roots (`/lib/modules`, `/boot`).
    pub roots: Roots,
    /// Force this kernel release.
    pub kernel_release: Option<String>,
    /// Override the running release (tests); `None` reads `/proc`.
    pub running_release: Option<String>,
    /// Agent binary.
    pub agent: PathBuf,
    /// Output directory.
    pub output_dir: PathBuf,
    /// Rebuild even if current.
    pub force: bool,
    /// Only report whether a rebuild is needed.
    pub check: bool,
    /// `--debug`: also pack this busybox as `/bin/busybox` with `/bin/sh`
    /// linked to it, for the agent's debug console. `None` (the default)
    /// keeps the image shell-free.
    pub debug_busybox: Option<PathBuf>,
}

/// Where a `--debug` image has its busybox, and the shell linked to it.
pub const DEBUG_BUSYBOX_GUEST: &str = "/bin/busybox";

/// Result of a finished build.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Kernel release.
    pub release: String,
    /// Installed initrd.
    pub initrd: PathBuf,
    /// Compressed size in bytes.
    pub size: u64,
    /// Wall time.
    pub duration: Duration,
    /// The installed manifest.
    pub manifest: Manifest,
}

impl Summary {
    /// The one-line summary the CLI prints.
    pub fn line(&self) -> String {
        format!(
            "kata-guest-image: built {} initrd {} ({:.2} MiB, {} modules, {}) in {:.2}s",
            self.release,
            self.initrd.display(),
            self.size as f64 / (1024.0 * 1024.0),
            self.manifest.modules.len(),
            self.manifest.compression,
            self.duration.as_secs_f64()
        )
    }
}

/// What [`run`] did.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The installed image matches the inputs.
    UpToDate {
        /// Kernel release.
        release: String,
        /// Installed initrd.
        initrd: PathBuf,
    },
    /// `--check` found the image stale.
    Stale {
        /// Kernel release.
        release: String,
        /// Why.
        reason: String,
    },
    /// A new image was installed.
    Built(Box<Summary>),
}

/// Everything decided before any output is written.
struct Plan {
    kernel: Kernel,
    /// Host module file and its manifest entry, in load order.
    modules: Vec<(PathBuf, ModuleEntry)>,
    manifest: Manifest,
}

/// Guest directories the agent expects to exist before it mounts anything.
const GUEST_DIRS: &[&str] = &["/proc", "/sys", "/dev", "/run", "/tmp", "/etc", "/etc/kata"];

pub(crate) fn base_tree() -> Tree {
    let mut t = Tree::new();
    for d in GUEST_DIRS {
        let mode = if *d == "/tmp" { 0o1777 } else { 0o755 };
        t.dir(d, mode);
    }
    // The kernel opens /dev/console for init's stdio before any devtmpfs is
    // mounted; without this node early output is lost.
    t.insert("/dev/console", 0o600, Kind::CharDev { major: 5, minor: 1 });
    t
}

pub(crate) fn add_libs(tree: &mut Tree, libs: &[elf::Lib]) -> Result<(), BuildError> {
    for lib in libs {
        tree.file(&lib.guest, 0o755, read(&lib.source)?);
    }
    Ok(())
}

/// Runs `<agent> --version`, expecting `kata-agent <version>`.
pub fn agent_version(agent: &Path) -> Result<String, String> {
    let mut child = Command::new(agent)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run {} --version: {e}", agent.display()))?;
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if start.elapsed() < VERSION_TIMEOUT => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{} --version did not exit within 5s",
                    agent.display()
                ));
            }
            Err(e) => return Err(format!("waiting for {} --version: {e}", agent.display())),
        }
    };
    let mut out = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        let _ = stdout.read_to_string(&mut out);
    }
    if !status.success() {
        return Err(format!(
            "{} --version exited with {status}",
            agent.display()
        ));
    }
    out.lines()
        .find_map(|l| l.trim().strip_prefix("kata-agent "))
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            format!(
                "{} --version printed no `kata-agent <version>` line",
                agent.display()
            )
        })
}

pub(crate) fn discover_kernel(
    roots: &Roots,
    forced: Option<&str>,
    running: Option<&str>,
    warn: &mut dyn FnMut(&str),
) -> Result<(Kernel, Compression), BuildError> {
    let running = match running {
        Some(r) => r.to_string(),
        None => kernel::running_release()?,
    };
    let found = kernel::discover(roots, &running, forced)?;
    if let Some(w) = &found.warning {
        warn(w);
    }
    let config = kernel::read_config(roots, &found.kernel)?;
    Ok((found.kernel, compress::choose(&config)?))
}

fn plan(opts: &Options, warn: &mut dyn FnMut(&str)) -> Result<Plan, BuildError> {
    let (kernel, compression) = discover_kernel(
        &opts.roots,
        opts.kernel_release.as_deref(),
        opts.running_release.as_deref(),
        warn,
    )?;
    if !opts.agent.is_file() {
        return Err(BuildError::AgentMissing(opts.agent.clone()));
    }
    let (module_entries, builtin) = module_entries(&kernel)?;
    let mut libs = elf::closure(&opts.agent, Path::new("/"))?;
    let debug_shell = match &opts.debug_busybox {
        None => None,
        Some(bb) => {
            if !bb.is_file() {
                return Err(BuildError::BusyboxMissing(bb.clone()));
            }
            // A dynamically linked busybox works too, with its libraries.
            for l in elf::closure(bb, Path::new("/"))? {
                if !libs.iter().any(|have| have.guest == l.guest) {
                    libs.push(l);
                }
            }
            Some(LibEntry {
                guest_path: DEBUG_BUSYBOX_GUEST.to_string(),
                source_path: bb.clone(),
                sha256: manifest::sha256_file(bb)?,
            })
        }
    };
    let mut lib_entries = Vec::with_capacity(libs.len());
    for l in &libs {
        lib_entries.push(LibEntry {
            guest_path: l.guest.clone(),
            source_path: l.source.clone(),
            sha256: manifest::sha256_file(&l.source)?,
        });
    }
    let agent_version = agent_version(&opts.agent).unwrap_or_else(|why| {
        warn(&format!("{why}; recording agent version as \"unknown\""));
        "unknown".to_string()
    });
    let mut m = Manifest {
        format_version: manifest::FORMAT_VERSION,
        kernel_release: kernel.release.clone(),
        kernel_path: kernel.image.clone(),
        kernel_sha256: manifest::sha256_file(&kernel.image)?,
        agent_path: opts.agent.clone(),
        agent_sha256: manifest::sha256_file(&opts.agent)?,
        agent_version,
        builder_version: manifest::BUILDER_VERSION.to_string(),
        compression,
        required_modules: modules::REQUIRED.iter().map(|s| s.to_string()).collect(),
        optional_modules: modules::OPTIONAL.iter().map(|s| s.to_string()).collect(),
        builtin_modules: builtin,
        modules: module_entries.iter().map(|(_, e)| e.clone()).collect(),
        libs: lib_entries,
        debug_shell,
        inputs_hash: String::new(),
        initrd: None,
    };
    m.inputs_hash = manifest::inputs_hash(&m);
    Ok(Plan {
        kernel,
        modules: module_entries,
        manifest: m,
    })
}

/// The guest's modules in load order: host file and manifest entry each.
pub(crate) type Modules = Vec<(PathBuf, ModuleEntry)>;

/// The guest's modules of `kernel`, and the required ones the kernel has
/// built in.
pub(crate) fn module_entries(kernel: &Kernel) -> Result<(Modules, Vec<String>), BuildError> {
    let db = ModuleDb::load(&kernel.modules_dir)?;
    let res = db.resolve(
        &kernel.release,
        &kernel.modules_dir,
        modules::REQUIRED,
        modules::OPTIONAL,
    )?;
    let mut entries = Vec::with_capacity(res.files.len());
    for rel in &res.files {
        let source = kernel.modules_dir.join(rel);
        let plain = compress::plain_module_path(rel)
            .ok_or_else(|| CompressError::UnknownModuleSuffix(rel.clone()))?;
        let entry = ModuleEntry {
            name: modules::module_name(rel),
            guest_path: format!("/lib/modules/{}/{plain}", kernel.release),
            source_sha256: manifest::sha256_file(&source)?,
            source_path: source.clone(),
        };
        entries.push((source, entry));
    }
    Ok((entries, res.builtin))
}

/// Decompresses modules on all cores; xz decoding dominates the build.
pub(crate) fn load_modules(mods: &[(PathBuf, ModuleEntry)]) -> Result<Vec<Vec<u8>>, BuildError> {
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(mods.len().max(1));
    let chunk = mods.len().div_ceil(workers).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = mods
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || -> Result<Vec<Vec<u8>>, BuildError> {
                    part.iter()
                        .map(|(src, _)| {
                            let raw = read(src)?;
                            Ok(compress::decompress_module(&src.to_string_lossy(), &raw)?)
                        })
                        .collect()
                })
            })
            .collect();
        let mut out = Vec::with_capacity(mods.len());
        for h in handles {
            out.extend(h.join().expect("module decompression thread panicked")?);
        }
        Ok(out)
    })
}

fn assemble(plan: &Plan, agent: &Path) -> Result<Vec<u8>, BuildError> {
    let mut tree = base_tree();
    tree.file("/init", 0o755, read(agent)?);
    let libs: Vec<elf::Lib> = plan
        .manifest
        .libs
        .iter()
        .map(|l| elf::Lib {
            guest: l.guest_path.clone(),
            source: l.source_path.clone(),
        })
        .collect();
    add_libs(&mut tree, &libs)?;
    if let Some(bb) = &plan.manifest.debug_shell {
        tree.dir("/bin", 0o755);
        tree.file(&bb.guest_path, 0o755, read(&bb.source_path)?);
        tree.insert(
            guest::DEBUG_SHELL,
            0o777,
            Kind::Symlink("busybox".to_string()),
        );
    }
    let bodies = load_modules(&plan.modules)?;
    let mut load_list = String::new();
    for ((_, entry), body) in plan.modules.iter().zip(bodies) {
        tree.file(&entry.guest_path, 0o644, body);
        load_list.push_str(&entry.guest_path);
        load_list.push('\n');
    }
    tree.file(guest::MODULES_LOAD_LIST, 0o644, load_list.into_bytes());
    // The embedded copy has no `initrd` section (it cannot hash itself) and
    // no timestamps, so identical inputs give a byte-identical initrd.
    tree.file(
        guest::IMAGE_MANIFEST,
        0o644,
        manifest::to_json(&plan.manifest)?,
    );
    let archive = tree.to_archive()?;
    Ok(compress::compress(plan.manifest.compression, &archive)?)
}

fn initrd_link_target(release: &str) -> PathBuf {
    Path::new(release).join(INITRD_NAME)
}

fn symlinks_ok(out: &Path, kernel: &Kernel) -> bool {
    let initrd = fs::read_link(out.join(INITRD_NAME));
    let kern = fs::read_link(out.join(KERNEL_LINK));
    initrd.is_ok_and(|t| t == initrd_link_target(&kernel.release))
        && kern.is_ok_and(|t| t == kernel.image)
        && out.join(INITRD_NAME).is_file()
        && out.join(KERNEL_LINK).is_file()
}

/// Builds (or checks) the image described by `opts`. Warnings go to `warn`.
pub fn run(opts: &Options, warn: &mut dyn FnMut(&str)) -> Result<Outcome, BuildError> {
    let start = Instant::now();
    let out = &opts.output_dir;
    fs::create_dir_all(out).map_err(|source| InstallError {
        what: "creating",
        path: out.clone(),
        source,
    })?;
    let _lock = install::lock(out, !opts.check)?;
    if !opts.check {
        install::clean_output_temps(out)?;
    }
    let plan = plan(opts, warn)?;
    let release = plan.kernel.release.clone();
    let kdir = out.join(&release);
    let initrd_path = kdir.join(INITRD_NAME);

    let existing = manifest::read(&kdir.join(MANIFEST_NAME)).unwrap_or_else(|e| {
        warn(&format!("{e}; rebuilding"));
        None
    });
    let stale = manifest::staleness(
        existing.as_ref(),
        &plan.manifest.inputs_hash,
        &initrd_path,
        symlinks_ok(out, &plan.kernel),
    );
    match (stale, opts.check, opts.force) {
        (None, true, _) | (None, false, false) => {
            return Ok(Outcome::UpToDate {
                release,
                initrd: initrd_path,
            });
        }
        (Some(reason), true, _) => return Ok(Outcome::Stale { release, reason }),
        _ => {}
    }

    let image = assemble(&plan, &opts.agent)?;
    fs::create_dir_all(&kdir).map_err(|source| InstallError {
        what: "creating",
        path: kdir.clone(),
        source,
    })?;
    // Order matters for crash safety: the initrd first (a manifest that does
    // not match it just causes a rebuild), then the manifest, then the links.
    install::write_file(&kdir, INITRD_NAME, &image, 0o644)?;
    let duration = start.elapsed();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut m = plan.manifest;
    m.initrd = Some(InitrdInfo {
        path: initrd_path.clone(),
        sha256: manifest::sha256_hex(&image),
        size: image.len() as u64,
        build_duration_ms: u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
        build_timestamp: manifest::rfc3339(now),
    });
    install::write_file(&kdir, MANIFEST_NAME, &manifest::to_json(&m)?, 0o644)?;
    install::replace_symlink(out, KERNEL_LINK, &plan.kernel.image)?;
    install::replace_symlink(out, INITRD_NAME, &initrd_link_target(&release))?;
    Ok(Outcome::Built(Box::new(Summary {
        release,
        initrd: initrd_path,
        size: image.len() as u64,
        duration,
        manifest: m,
    })))
}

/// Inputs of the raw-boot baseline image.
#[derive(Debug, Clone)]
pub struct RawBootOptions {
    /// Kernel roots; the kernel's config picks the codec.
    pub roots: Roots,
    /// Force this kernel release.
    pub kernel_release: Option<String>,
    /// Override the running release (tests).
    pub running_release: Option<String>,
    /// busybox binary.
    pub busybox: PathBuf,
    /// Where to write the initrd.
    pub output: PathBuf,
}

/// Result of a raw-boot build.
#[derive(Debug, Clone)]
pub struct RawBootSummary {
    /// Kernel whose config chose the codec.
    pub release: String,
    /// Written file.
    pub output: PathBuf,
    /// Size in bytes.
    pub size: u64,
    /// Codec used.
    pub compression: Compression,
    /// Wall time.
    pub duration: Duration,
}

impl RawBootSummary {
    /// The one-line summary the CLI prints.
    pub fn line(&self) -> String {
        format!(
            "kata-guest-image: built raw-boot initrd for {} at {} ({:.2} MiB, {}) in {:.2}s",
            self.release,
            self.output.display(),
            self.size as f64 / (1024.0 * 1024.0),
            self.compression,
            self.duration.as_secs_f64()
        )
    }
}

/// Script run as PID 1 by the baseline image: power off immediately, so a
/// benchmark measures pure kernel boot plus initramfs unpacking.
pub const RAW_BOOT_INIT: &str = "#!/bin/busybox sh\nexec /bin/busybox poweroff -f\n";

/// Writes an initrd whose `/init` powers the VM off at once.
pub fn raw_boot(
    opts: &RawBootOptions,
    warn: &mut dyn FnMut(&str),
) -> Result<RawBootSummary, BuildError> {
    let start = Instant::now();
    if !opts.busybox.is_file() {
        return Err(BuildError::BusyboxMissing(opts.busybox.clone()));
    }
    let (kernel, compression) = discover_kernel(
        &opts.roots,
        opts.kernel_release.as_deref(),
        opts.running_release.as_deref(),
        warn,
    )?;
    let mut tree = base_tree();
    tree.file("/bin/busybox", 0o755, read(&opts.busybox)?);
    // A dynamically linked busybox works too, with its libraries packed.
    add_libs(&mut tree, &elf::closure(&opts.busybox, Path::new("/"))?)?;
    tree.file("/init", 0o755, RAW_BOOT_INIT.as_bytes().to_vec());
    let image = compress::compress(compression, &tree.to_archive()?)?;
    let output = write_output(&opts.output, &image)?;
    Ok(RawBootSummary {
        release: kernel.release,
        output,
        size: image.len() as u64,
        compression,
        duration: start.elapsed(),
    })
}

/// Writes a standalone image to `output` (crash-safely, creating its
/// directory); returns the absolute path.
pub(crate) fn write_output(output: &Path, image: &[u8]) -> Result<PathBuf, BuildError> {
    let output = std::path::absolute(output).map_err(|source| InstallError {
        what: "resolving",
        path: output.to_path_buf(),
        source,
    })?;
    let dir = output.parent().unwrap_or(Path::new("/")).to_path_buf();
    let name = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| InstallError {
            what: "writing",
            path: output.clone(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file name"),
        })?;
    fs::create_dir_all(&dir).map_err(|source| InstallError {
        what: "creating",
        path: dir.clone(),
        source,
    })?;
    install::write_file(&dir, &name, image, 0o644)?;
    Ok(output)
}
