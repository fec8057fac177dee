//! The generation job model, shared by the user side (`generations`), the service side
//! (`queue`), the worker, the run report and the HTTP layer: statuses as types, one
//! step-row type, and row-by-row decoding of PostgREST replies.

mod progress;
pub mod rows;
mod snapshot;
mod status;
mod step;

pub use progress::Progress;
pub use snapshot::EngineSnapshot;
pub use status::{JobStatus, StepStatus};
pub use step::{StepRecord, STEP_COLUMNS};

/// The `item_index` of a plain step's row, and of a fan-out's own row (its items'
/// rows are 0..n-1).
pub const WHOLE_STEP: i32 = -1;
