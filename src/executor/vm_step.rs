//! vmactions-style steps (`vmactions/<os>-vm`, `cross-platform-actions/action`)
//! run natively in the job's own VM: see [`super::vmactions`].

use indexmap::IndexMap;

use super::error::StepError;
use super::runtime::Runtime;
use super::shell;
use super::state::JobState;
use super::step::{Body, RunCommand, StepEnd, StepRun};
use super::vmactions;
use crate::events::LineKind;

impl Runtime<'_> {
    /// Whether `uses` is a VM action run natively.
    pub(super) fn is_vm_action(&self, uses: &str) -> bool {
        vmactions::is_vm_action(uses)
    }

    /// Runs a VM action natively; `None` when `uses` is not one.
    pub(super) async fn builtin_vm_action(
        &self,
        plan: &StepRun<'_>,
        state: &mut JobState,
        uses: &str,
    ) -> Option<Result<(StepEnd, IndexMap<String, String>), StepError>> {
        if !vmactions::is_vm_action(uses) {
            return None;
        }
        Some(self.run_vm_action(plan, state, uses).await)
    }

    async fn run_vm_action(
        &self,
        plan: &StepRun<'_>,
        state: &mut JobState,
        uses: &str,
    ) -> Result<(StepEnd, IndexMap<String, String>), StepError> {
        let with = self.evaluate_with(plan)?;
        let vm = vmactions::plan(uses, &with, self.runner.os, self.root, &self.runner.labels)
            .map_err(StepError::VmAction)?;
        for notice in &vm.notices {
            self.em.line(
                plan.log,
                LineKind::Annotation("notice".into()),
                notice.clone(),
            );
        }
        let shell = if vm.use_sh {
            shell::resolve_shell(Some("sh"), self.has_bash)
        } else {
            shell::resolve_shell(None, self.has_bash)
        }
        .map_err(StepError::Shell)?;
        let body = Body {
            run: RunCommand::Script {
                script: vm.script,
                shell,
            },
            extra_files: Vec::new(),
            vars: Vec::new(),
            action: None,
            working_dir: self.layout.workspace.clone(),
            vm_only: true,
        };
        let res = self.run_wrapped(plan, state, body).await?;
        self.finish_exec(plan, res, state)
    }
}
