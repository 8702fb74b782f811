//! vmactions-style steps (`vmactions/<os>-vm`, `cross-platform-actions/action`)
//! run natively in the job's own VM.

use indexmap::IndexMap;

use super::error::StepError;
use super::runtime::Runtime;
use super::state::JobState;
use super::step::{StepEnd, StepRun};

impl Runtime<'_> {
    /// Whether `uses` is a VM action run natively.
    pub(super) fn is_vm_action(&self, _uses: &str) -> bool {
        false
    }

    /// Runs a VM action natively; `None` when `uses` is not one.
    pub(super) async fn builtin_vm_action(
        &self,
        _plan: &StepRun<'_>,
        _state: &mut JobState,
        _uses: &str,
    ) -> Option<Result<(StepEnd, IndexMap<String, String>), StepError>> {
        None
    }
}
