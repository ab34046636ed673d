//! What the failure path needs whatever failed, and the step wrapper that keeps
//! it current: the reporter, the step under way (named if it panics), and the
//! disk this install has started to rewrite (wiped on failure).

use super::*;

#[derive(Debug)]
pub struct Failure {
    pub step: Step,
    pub error: StepError,
}

pub struct Run {
    pub reporter: Reporter,
    /// The step last started; a panic is reported as its failure.
    current: Step,
    /// Set when partitioning begins and cleared when the install is complete:
    /// a failure in between wipes this disk's table. Not a phase result but the
    /// failure path's own record, so it is never `expect`ed.
    dirty_disks: Vec<PathBuf>,
}

impl Run {
    pub fn new(reporter: Reporter) -> Self {
        Run {
            reporter,
            current: Step::MountPseudo,
            dirty_disks: Vec::new(),
        }
    }

    /// Runs one step: reports Started, prints and reports its line when done.
    pub fn step<T>(
        &mut self,
        step: Step,
        f: impl FnOnce(&mut Self) -> StepResult<T>,
    ) -> Result<T, Failure> {
        self.current = step;
        self.reporter
            .send(step, EventKind::Started, &format!("{step}: started"));
        match f(self) {
            Ok((v, msg)) => {
                let line = format!("{step}: {msg}");
                console::line(&line);
                // Finish reports `Installed` itself; after it the install is over
                // and the server refuses further reports for it.
                if step != Step::Finish {
                    self.reporter.send(step, EventKind::Done, &line);
                }
                Ok(v)
            }
            Err(error) => Err(Failure { step, error }),
        }
    }

    /// Runs `f` so that a panic in it becomes the failure of the step that was
    /// running (unwinding has dropped its mount guards by then).
    pub fn guarded<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, Failure>,
    ) -> Result<T, Failure> {
        // Unwind safety: after a panic only `current`, `dirty_disks` and the
        // reporter are used, each consistent between its own updates.
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(self))) {
            Ok(r) => r,
            Err(payload) => Err(Failure {
                step: self.current,
                error: StepError::Panic(crate::crash::take(payload)),
            }),
        }
    }

    /// Reports go to this plan's install from now on.
    pub fn set_plan(&mut self, plan: &InstallPlan) {
        self.reporter.set_install(&plan.install_id, &plan.token);
    }

    pub(super) fn writing_to(&mut self, disks: &[&Path]) {
        self.dirty_disks = disks.iter().map(|d| d.to_path_buf()).collect();
    }

    pub(super) fn disk_complete(&mut self) {
        self.dirty_disks.clear();
    }

    /// Posts `Installed` with the node's public host keys (tried again through
    /// a server or database outage, see [`crate::report::installed_retry`])
    /// and returns the finish line.
    pub fn report_installed(&mut self, plan: &InstallPlan, host_keys: Vec<String>) -> String {
        let msg = format!(
            "installed {} serial {} on {}; rebooting",
            plan.image.name, plan.image.serial, plan.hostname
        );
        let ev = self.reporter.event(
            Step::Finish,
            EventKind::Installed {
                serial: plan.image.serial,
                host_keys,
            },
            &msg,
        );
        let started = std::time::Instant::now();
        let mut tries = 0;
        while let Err(e) = self.reporter.post(&ev) {
            tries += 1;
            match crate::report::installed_retry(tries, started.elapsed(), &e) {
                Some(wait) => {
                    console::line(&format!(
                        "finish: the server did not take the Installed report ({e}); trying again in {} s",
                        wait.as_secs()
                    ));
                    std::thread::sleep(wait);
                }
                None => {
                    console::line(&format!(
                        "finish: note: server did not take the Installed report: {e}; rebooting anyway (the server may install this node again)"
                    ));
                    break;
                }
            }
        }
        msg
    }

    /// Cleans up after a failed step (or a panic) and reports it: whatever the
    /// mount guards could not unmount is tried again, a disk being written is
    /// wiped, and the server gets the step, the error and the console tail.
    pub fn fail(&mut self, f: &Failure) {
        console::line(&format!("{}: FAILED: {}", f.step, f.error));
        let stuck = sys::umount_tree(Path::new(paths::ESP_MOUNT));
        let stuck2 = sys::umount_tree(Path::new(paths::TARGET));
        let dirty = std::mem::take(&mut self.dirty_disks);
        if !dirty.is_empty() && (!stuck.is_empty() || !stuck2.is_empty()) {
            console::line("note: some file systems stayed mounted; wiping anyway");
        }
        for d in dirty {
            match partition::wipe(&d) {
                Ok(()) => console::line(&format!(
                    "wiped the partition table of {} so this half-installed disk cannot boot",
                    d.display()
                )),
                Err(e) => console::line(&format!("could not wipe {}: {e}", d.display())),
            }
        }
        let ev = self.reporter.event(
            f.step,
            EventKind::Failed {
                error: f.error.to_string(),
                console_tail: console::tail(),
            },
            &format!("{}: FAILED: {}", f.step, f.error),
        );
        if let Err(e) = self.reporter.post(&ev) {
            console::line(&format!("note: failure report not delivered: {e}"));
        }
    }
}
