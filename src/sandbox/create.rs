//! Create: the one RPC that makes a container. The sandbox container's
//! Create chooses the pod's configuration and boots the VM (`boot`);
//! every Create then shares the container's rootfs and volumes into the
//! sandbox share and asks the agent to create it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use containerd_shim_protos::api::CreateTaskRequest;
use containerd_shim_protos::events::task::{TaskCreate, TaskIO};

use crate::annotations::{self, ContainerKind};
use crate::config::{Config, options, overrides};
use crate::error::{Error, Result};
use crate::events::Event;
use crate::locks::lock;
use crate::oci::{self, BundleError};
use crate::sandbox::boot::BootPlan;
use crate::sandbox::container::Container;
use crate::sandbox::process::Process;
use crate::sandbox::{Sandbox, namespaces, network};
use crate::stdio::{ProcessIo, StdioConfig};

impl Sandbox {
    /// Create: boots the VM for the sandbox container, then creates the
    /// container in the guest. Returns the task pid.
    pub async fn create(self: &Arc<Self>, req: &CreateTaskRequest) -> Result<u32> {
        let bundle = PathBuf::from(&req.bundle);
        if !bundle.is_absolute() {
            return Err(Error::InvalidArgument {
                field: "bundle",
                reason: format!("{} is not an absolute path", req.bundle),
            });
        }
        crate::ids::validate(&req.id).map_err(|e| Error::InvalidArgument {
            field: "id",
            reason: e.to_string(),
        })?;
        crate::stdio::ensure_fd_headroom()?;
        let spec = read_spec(&bundle)?;
        let annotations = annotations::spec_annotations(&spec);
        let identity = annotations::identity(&req.id, &annotations)?;
        if identity.sandbox_id != self.id {
            return Err(Error::InvalidArgument {
                field: "id",
                reason: format!(
                    "container {} belongs to sandbox {}, this shim serves sandbox {}",
                    req.id, identity.sandbox_id, self.id
                ),
            });
        }
        if lock(&self.containers).contains_key(&req.id) {
            return Err(Error::AlreadyExists {
                what: "container",
                id: req.id.clone(),
            });
        }
        let is_sandbox = matches!(identity.kind, ContainerKind::Sandbox);
        let limits = crate::sizing::growth::Limits::from_spec(&spec);
        // Chosen before anything is created, so a refusal changes nothing.
        let config = if is_sandbox {
            let netns = network::pod_netns(&spec, &annotations)?;
            *lock(&self.pod_namespaces) = namespaces::of_sandbox(&spec)?;
            Some((self.sandbox_config(req, &annotations)?, netns))
        } else {
            None
        };
        let sandbox_namespaces = if is_sandbox {
            Vec::new()
        } else {
            namespaces::app_joins(&spec, &lock(&self.pod_namespaces), self.pid())?
        };

        let io = ProcessIo::new(
            StdioConfig {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
            },
            &req.id,
            "",
            &self.namespace,
        )?;
        let mut lc = self.lifecycle.lock().await;
        if let Some((config, netns)) = &config {
            let plan = BootPlan {
                spec: &spec,
                annotations: &annotations,
                config,
                netns,
            };
            self.boot(&mut lc, plan).await?;
        }
        let agent = self.agent()?;
        let share_dir = crate::layout::SandboxPaths::new(&self.id).share_dir;
        // Under the lock, so a second Create of the same id finds these
        // mounts (ALREADY_EXISTS); mount syscalls and volume sources (an
        // NFS or FUSE source can hang) off the async workers.
        let prepared = crate::blocking::run(|| {
            crate::storage::prepare_container(
                &share_dir,
                &self.id,
                &req.id,
                &bundle,
                spec,
                &req.rootfs,
            )
        })?;
        // Not across the guest call: its deadline is 120 s, and die and
        // Delete take the lock.
        drop(lc);
        let mut mounts = prepared.mounts;
        // The VM grows before the container exists in it, so the container
        // starts with the vCPUs and memory of its limits.
        if !is_sandbox {
            if let Err(e) = self.resize_for(&req.id, Some(limits)).await {
                mounts.release_share();
                mounts.release_bundle_rootfs();
                return Err(e);
            }
        }
        let created = agent
            .create_container(&req.id, prepared.guest_spec_json, sandbox_namespaces)
            .await;
        let lc = self.lifecycle.lock().await;
        // The sandbox may have died meanwhile; `die` released the shares
        // of the containers it knew, and this one it did not.
        let state = lock(&self.state).clone();
        let refused = match created {
            Err(e) => Some(Error::agent(&req.id)(e)),
            Ok(()) if !state.is_running() => Some(Error::FailedPrecondition(format!(
                "sandbox {} became {} while container {} was being created",
                self.id,
                state.name(),
                req.id
            ))),
            Ok(()) => None,
        };
        if let Some(e) = refused {
            drop(lc);
            if !is_sandbox {
                self.shrink_after(&req.id).await;
            }
            mounts.release_share();
            mounts.release_bundle_rootfs();
            return Err(e);
        }
        let terminal = req.terminal;
        let init = Arc::new(Process::new(&req.id, "", io, terminal, None));
        init.io.start(Arc::new(agent));
        let c = Arc::new(Container::new(
            &req.id,
            bundle,
            is_sandbox,
            annotations::is_crio(&annotations),
            init,
            mounts,
        ));
        lock(&self.containers).insert(req.id.clone(), c);
        self.persist(&lc);
        drop(lc);
        tracing::info!(sandbox_id = %self.id, container_id = %req.id, "container created");
        self.publish(Event::Create(TaskCreate {
            container_id: req.id.clone(),
            bundle: req.bundle.clone(),
            rootfs: req.rootfs.to_vec(),
            io: Some(TaskIO {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
                ..Default::default()
            })
            .into(),
            pid: self.pid(),
            ..Default::default()
        }));
        Ok(self.pid())
    }

    /// The sandbox's configuration: the file its Create options name
    /// (`runtimeoptions.v1.Options.config_path`, with that file's drop-ins),
    /// else the serving shim's, then its `io.katacontainers.config.*`
    /// annotations as far as the configuration allows them.
    fn sandbox_config(
        &self,
        req: &CreateTaskRequest,
        annotations: &BTreeMap<String, String>,
    ) -> Result<Config> {
        let named = match req.options.as_ref() {
            Some(any) => {
                options::decode(&any.type_url, &any.value).map_err(|e| Error::InvalidArgument {
                    field: "options",
                    reason: format!("cannot decode {}: {e}", any.type_url),
                })?
            }
            None => None,
        };
        if let Some(o) = named.as_ref().filter(|o| o.config_path.is_empty()) {
            if !o.config_body.is_empty() {
                tracing::warn!(sandbox_id = %self.id,
                    "options.config_body is not supported; using the default configuration");
            }
        }
        let loaded = match named.and_then(|o| o.config_path()) {
            Some(path) => {
                if !path.is_absolute() {
                    return Err(Error::InvalidArgument {
                        field: "options.config_path",
                        reason: format!("{} is not an absolute path", path.display()),
                    });
                }
                Config::load_file(&path).map_err(|e| Error::InvalidArgument {
                    field: "options.config_path",
                    reason: crate::logging::error_chain(&e),
                })?
            }
            None => match &self.base_config {
                Ok(loaded) => loaded.clone(),
                Err(e) => {
                    return Err(Error::FailedPrecondition(format!(
                        "the kata configuration cannot be used: {e}"
                    )));
                }
            },
        };
        let (config, applied) =
            overrides::apply(&loaded.config, annotations).map_err(|e| Error::InvalidArgument {
                field: "annotations",
                reason: e.to_string(),
            })?;
        tracing::info!(sandbox_id = %self.id, config = %loaded.describe(),
            annotations = ?applied, "sandbox configuration chosen");
        Ok(config)
    }
}

/// Reads `<bundle>/config.json`, which must be a JSON object.
fn read_spec(bundle: &std::path::Path) -> Result<serde_json::Value> {
    let spec = oci::read_bundle_spec(bundle).map_err(|e| Error::InvalidArgument {
        field: match e {
            BundleError::Read { .. } => "bundle",
            BundleError::Parse { .. } => "config.json",
        },
        reason: crate::logging::error_chain(&e),
    })?;
    if !spec.is_object() {
        return Err(Error::InvalidArgument {
            field: "config.json",
            reason: format!(
                "{} is not a JSON object",
                bundle.join("config.json").display()
            ),
        });
    }
    Ok(spec)
}
