//! The boot of a pod's VM as one sequence of named steps, and its undoing
//! in reverse order.
//!
//! 1. size the VM: from the pod's annotations under static sizing, else the
//!    defaults with room to grow (`resize`);
//! 2. the pod's host cgroup, which QEMU and its helpers join before exec;
//! 3. the pod's network namespace: taps and tc redirects on CNI's veths;
//! 4. the VM: vsock and share helpers, then QEMU in that netns and cgroup
//!    ([`Vm::start`]), called from [`Sandbox::boot`] itself;
//! 5. the agent: dial, health and protocol version ([`SandboxVm::attach`]),
//!    then the booted VM recorded ([`Sandbox::record_vm`]);
//! 6. the guest's interfaces, neighbours and routes;
//! 7. CreateSandbox in the guest.
//!
//! Every step records what it made in the [`Lifecycle`] before it can fail,
//! so [`Sandbox::undo_boot`] takes back exactly what exists.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use crate::agent_client::AgentClient;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::guest::{BootError, SandboxVm};
use crate::host_cgroup::HostCgroup;
use crate::locks::lock;
use crate::network::PodNetwork;
use crate::persist::ProcessRecord;
use crate::sandbox::network::{self, PodNetns};
use crate::sandbox::{Lifecycle, Sandbox, monitor};
use crate::sizing::{self, HostSize};
use crate::vm::{Vm, VmOptions};

/// What the sandbox container's Create decided before anything is made.
pub(super) struct BootPlan<'a> {
    pub spec: &'a serde_json::Value,
    pub annotations: &'a BTreeMap<String, String>,
    pub config: &'a Config,
    pub netns: &'a PodNetns,
}

impl BootPlan<'_> {
    fn cgroups_path(&self) -> &str {
        self.spec
            .pointer("/linux/cgroupsPath")
            .and_then(|v| v.as_str())
            .unwrap_or("")
    }
}

impl Sandbox {
    /// Boots the pod's VM and creates the sandbox in the guest; on failure
    /// nothing of it is left and the sandbox is stopped.
    pub(super) async fn boot(
        self: &Arc<Self>,
        lc: &mut Lifecycle,
        plan: BootPlan<'_>,
    ) -> Result<()> {
        lock(&self.state).begin_boot()?;
        let booted = async {
            let mut opts = self.size_vm(&plan)?;
            let growth = opts.growth;
            self.make_host_cgroup(lc, &plan, &mut opts)?;
            let net = self.attach_network(lc, &plan, &mut opts).await?;
            self.persist(lc);
            let began = Instant::now();
            let vm = Vm::start(plan.config, &self.id, &opts)
                .await
                .map_err(BootError::from)?;
            // The VM holds the taps now: the shim's copies are closed so
            // that each tap goes away with QEMU.
            drop(opts);
            let vm = SandboxVm::attach(vm, plan.config.agent.kata.dial_timeout()).await?;
            let agent = self.record_vm(lc, vm);
            if let Some(net) = &net {
                self.configure_guest_network(&agent, net).await?;
            }
            self.create_guest_sandbox(&agent, &plan).await?;
            if let Some(ceiling) = growth {
                self.start_growth(plan.config, ceiling).await;
            }
            self.metrics.boot_phase("total", began.elapsed());
            Ok(())
        }
        .await;
        match booted {
            Ok(()) => {
                lock(&self.state).booted()?;
                monitor::spawn(self.clone(), lc);
                Ok(())
            }
            Err(e) => {
                tracing::error!(sandbox_id = %self.id, error = %crate::logging::error_chain(&e),
                    "sandbox creation failed");
                self.undo_boot(lc).await;
                lock(&self.state).stop();
                Err(e)
            }
        }
    }

    /// Step 1: vCPUs and memory. Under static sizing from the pod's
    /// annotations and the host; otherwise the defaults, with every vCPU
    /// and DIMM slot up to the ceiling ready for the containers' limits
    /// (the annotations are not read then: the containers' own limits
    /// will be added, and counting them twice would double the VM).
    fn size_vm(&self, plan: &BootPlan<'_>) -> Result<VmOptions> {
        let q = &plan.config.hypervisor.qemu;
        if !plan.config.runtime.static_sandbox_resource_mgmt {
            let ceiling = crate::sizing::growth::ceiling(q, &HostSize::probe());
            tracing::info!(sandbox_id = %self.id, vcpus = q.default_vcpus,
                memory_mib = q.default_memory, max_vcpus = ceiling.max_vcpus,
                max_memory_mib = ceiling.max_memory_mib, cgroup = plan.cgroups_path(),
                "booting the sandbox VM; it grows with its containers' limits");
            self.metrics.guest_memory_mib(q.default_memory);
            return Ok(VmOptions {
                growth: Some(ceiling),
                ..VmOptions::default()
            });
        }
        let (size, warnings) = sizing::vm_size(
            plan.annotations,
            &plan.config.hypervisor.qemu,
            &HostSize::probe(),
        )?;
        for w in warnings {
            tracing::warn!(sandbox_id = %self.id, "{w}");
        }
        tracing::info!(sandbox_id = %self.id, vcpus = size.vcpus, memory_mib = size.memory_mib,
            cgroup = plan.cgroups_path(), "booting the sandbox VM");
        self.metrics.guest_memory_mib(size.memory_mib);
        Ok(VmOptions {
            vcpus: Some(size.vcpus),
            memory_mib: Some(size.memory_mib),
            ..VmOptions::default()
        })
    }

    /// Step 2: the pod's host cgroup, when the spec names one.
    fn make_host_cgroup(
        &self,
        lc: &mut Lifecycle,
        plan: &BootPlan<'_>,
        opts: &mut VmOptions,
    ) -> Result<()> {
        let Some(mut cg) = HostCgroup::for_sandbox(plan.cgroups_path(), &self.id)? else {
            return Ok(());
        };
        let created = cg.create();
        // Recorded before the check, so a partial create is undone too.
        let cg = lc.host_cgroup.insert(cg);
        created?;
        opts.cgroup_procs = cg.procs_files()?;
        let counter = cg.oom_counter();
        if counter.is_none() {
            tracing::warn!(sandbox_id = %self.id, "the pod's host cgroup has no readable oom_kill counter: an OOM kill of the VM by the host will be reported as a plain VM death");
        }
        *lock(&self.oom_counter) = counter;
        Ok(())
    }

    /// Step 3: taps in the pod's network namespace for CNI's interfaces.
    async fn attach_network(
        &self,
        lc: &mut Lifecycle,
        plan: &BootPlan<'_>,
        opts: &mut VmOptions,
    ) -> Result<Option<PodNetwork>> {
        let path = match plan.netns {
            PodNetns::Path(path) => path,
            PodNetns::Private => {
                tracing::info!(sandbox_id = %self.id, "the pod has a network namespace of its own without interfaces; the guest gets only lo");
                return Ok(None);
            }
        };
        // QEMU joins the netns through this fd (setns before exec).
        let file = network::open_pod_netns(path)?;
        // The VM boots with this many vCPUs; vCPUs added later for the
        // containers' limits share the queues (as in Kata).
        let vcpus = opts
            .vcpus
            .unwrap_or(plan.config.hypervisor.qemu.default_vcpus);
        let (net, nics) = network::attach(&self.id, path, vcpus).await?;
        lc.network = Some(net.record());
        opts.nics = nics;
        opts.netns = Some(file);
        Ok(Some(net))
    }

    /// After step 5: the booted VM and its agent become the sandbox's (its
    /// pids persisted for `delete`, its agent's calls measured).
    fn record_vm(&self, lc: &mut Lifecycle, vm: SandboxVm) -> AgentClient {
        self.metrics.boot_phase("vm_spawn", vm.vm.spawn_duration);
        self.metrics.boot_phase("agent_ready", vm.agent_ready);
        self.qemu_pid.store(vm.vm.pid(), Ordering::Relaxed);
        lc.processes = vm
            .vm
            .process_pids()
            .into_iter()
            .filter_map(|(name, pid)| ProcessRecord::capture(name, pid))
            .collect();
        self.set_scrape_targets(super::scrape::Targets {
            processes: lc.processes.clone(),
            agent_url: Some(crate::mgmt::agent_url(&vm.vm.agent_addr)),
        });
        let agent = vm.agent.clone().with_metrics(self.metrics.clone());
        lc.vm = Some(vm);
        *lock(&self.agent) = Some(agent.clone());
        self.persist(lc);
        agent
    }

    /// Step 6: the guest's interfaces, neighbours and routes.
    async fn configure_guest_network(&self, agent: &AgentClient, net: &PodNetwork) -> Result<()> {
        let began = Instant::now();
        network::configure_guest(&self.id, agent, net).await?;
        self.metrics.boot_phase("network", began.elapsed());
        Ok(())
    }

    /// Step 7: the sandbox in the guest, with the pod's hostname.
    async fn create_guest_sandbox(&self, agent: &AgentClient, plan: &BootPlan<'_>) -> Result<()> {
        let hostname = plan
            .spec
            .get("hostname")
            .and_then(|h| h.as_str())
            .unwrap_or_default();
        let began = Instant::now();
        agent
            .create_sandbox(&self.id, hostname)
            .await
            .map_err(Error::agent(&self.id))?;
        self.metrics.boot_phase("create_sandbox", began.elapsed());
        Ok(())
    }

    /// Takes back what a failed boot made, in reverse order: the VM with
    /// its agent, the network plumbing, the host cgroup.
    pub(super) async fn undo_boot(&self, lc: &mut Lifecycle) {
        self.teardown_vm(lc).await;
        if let Some(cg) = lc.host_cgroup.take() {
            crate::blocking::run(|| cg.remove());
        }
        self.persist(lc);
    }

    /// Stops the VM and its helpers (the share's mounts go with it), then
    /// removes the network plumbing QEMU's taps hung off.
    pub(super) async fn teardown_vm(&self, lc: &mut Lifecycle) {
        *lock(&self.agent) = None;
        if let Some(vm) = lc.vm.take() {
            let alive = vm.vm.exit_status().is_none() && !*self.dead_tx.borrow();
            let report = if alive {
                vm.shutdown().await
            } else {
                vm.vm.kill().await
            };
            tracing::info!(sandbox_id = %self.id, how = report.how, ms = report.duration.as_millis() as u64, "VM stopped");
        }
        lc.processes.clear();
        if let Some(record) = lc.network.take() {
            let sid = self.id.clone();
            // The taps went with QEMU; what is left is the tc plumbing on
            // CNI's veths (or nothing, if CNI already removed them).
            if let Err(e) =
                tokio::task::spawn_blocking(move || crate::network::detach(&record)).await
            {
                tracing::warn!(sandbox_id = %sid, error = %e, "the network detach thread failed");
            }
        }
    }
}
