//! The order of a run: a sequential flow's steps one after the other, a parallel
//! flow's as soon as their dependencies are done; a finished step of an earlier run
//! is kept, and the first failure stops the run.

use super::{Run, Stop};
use crate::jobs::StepStatus;
use futures::stream::{FuturesUnordered, StreamExt};
use serde_json::Value;
use std::sync::atomic::Ordering;

impl Run<'_> {
    /// A sequential flow: each step after the one before.
    pub(super) async fn in_order(&self) -> Result<(), Stop> {
        let n = self.flow.steps.len();
        for i in 0..n {
            self.step(i, i + 1 == n).await?;
        }
        Ok(())
    }

    /// Run steps as soon as their dependencies are done; the first failure stops all.
    pub(super) async fn graph(&self) -> Result<(), Stop> {
        let n = self.flow.steps.len();
        let deps = self.flow.graph();
        let mut done = vec![false; n];
        let mut started = vec![false; n];
        let mut inflight = FuturesUnordered::new();
        loop {
            for i in 0..n {
                if !started[i] && deps[i].iter().all(|&d| done[d]) {
                    started[i] = true;
                    // Last when every other step has finished: nothing else can write after it.
                    let last = done.iter().filter(|d| !**d).count() == 1;
                    inflight.push(async move { (i, self.step(i, last).await) });
                }
            }
            match inflight.next().await {
                Some((i, r)) => {
                    r?;
                    done[i] = true;
                }
                None => break,
            }
        }
        if done.iter().all(|d| *d) {
            Ok(())
        } else {
            Err(Stop::Fatal(
                "the flow's dependency graph could not be completed".into(),
            ))
        }
    }

    /// One step: kept as an earlier run finished it, one call, or a fan-out.
    async fn step(&self, i: usize, last: bool) -> Result<(), Stop> {
        let step = &self.flow.steps[i];
        // Resume: a finished step is never run again.
        if let Some(done) = self
            .existing
            .get(&(step.id.clone(), crate::jobs::WHOLE_STEP))
            .filter(|s| s.status == StepStatus::Succeeded)
        {
            self.set_output(&step.id, done.output.clone().unwrap_or(Value::Null));
            let items = done
                .output
                .as_ref()
                .and_then(Value::as_array)
                .map(Vec::len)
                .unwrap_or(1);
            if step.config.for_each.is_some() {
                self.calls_total.fetch_add(items as u64, Ordering::SeqCst);
                self.calls_done
                    .fetch_add(items as u64 + 1, Ordering::SeqCst);
            } else {
                self.calls_done.fetch_add(1, Ordering::SeqCst);
            }
            return Ok(());
        }
        match &step.config.for_each {
            Some(for_each) => self.fan_out(step, for_each, last).await,
            None => {
                let (output, _) = self.call(step, None, last).await?;
                self.set_output(&step.id, output);
                Ok(())
            }
        }
    }
}
