//! `bookengine assign`, `assignments` and `resolve`: who gets which engine.

use super::{opt, print_json, read_json, show, table, AuthArgs};
use crate::assignments::{self, AssignmentFilter, AssignmentPatch, BulkAssignment, NewAssignment};
use crate::error::{codes, Error, Result};
use crate::flow::Tier;
use clap::Args;
use clap::Subcommand;
use std::path::PathBuf;
use uuid::Uuid;

#[derive(Args, Debug)]
pub struct AssignArgs {
    /// The engine to assign.
    #[arg(long)]
    pub engine: Uuid,
    /// Assign to every user of this tier.
    #[arg(long, conflicts_with = "user", required_unless_present = "user")]
    pub tier: Option<Tier>,
    /// Assign to this user.
    #[arg(long)]
    pub user: Option<Uuid>,
    /// Higher wins among assignments of the same kind.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub priority: i32,
    /// Create the assignment switched off.
    #[arg(long)]
    pub inactive: bool,
    #[command(flatten)]
    pub auth: AuthArgs,
}

fn assignment_rows(list: &[assignments::Assignment]) -> Vec<Vec<String>> {
    list.iter()
        .map(|a| {
            vec![
                a.id.to_string(),
                opt(&a.engine_id),
                a.assignment_type.to_string(),
                a.tier
                    .map(|t| t.to_string())
                    .or(a.user_id.map(|u| u.to_string()))
                    .unwrap_or_default(),
                opt(&a.priority),
                opt(&a.active),
            ]
        })
        .collect()
}

const ASSIGNMENT_HEADER: &[&str] = &["id", "engine", "type", "target", "priority", "active"];

pub async fn assign(args: AssignArgs, json: bool) -> Result<()> {
    let (rest, caller, _) = args.auth.connect()?;
    let new = NewAssignment {
        engine_id: args.engine,
        assignment_type: None,
        tier: args.tier,
        user_id: args.user,
        priority: Some(args.priority),
        active: Some(!args.inactive),
    };
    let a = assignments::assign(&rest, &caller, &new).await?;
    show(json, &a, || {
        table(ASSIGNMENT_HEADER, assignment_rows(std::slice::from_ref(&a)));
    });
    Ok(())
}

#[derive(Args, Debug)]
pub struct AssignmentsArgs {
    #[command(subcommand)]
    pub action: AssignmentsAction,
    #[command(flatten)]
    pub auth: AuthArgs,
}

#[derive(Subcommand, Debug)]
pub enum AssignmentsAction {
    /// List assignments (admins: all; others: their own and their tier's).
    List {
        #[arg(long)]
        engine: Option<Uuid>,
        #[arg(long)]
        user: Option<Uuid>,
        #[arg(long)]
        tier: Option<Tier>,
    },
    /// Change an assignment's priority or switch it on or off.
    Update {
        id: Uuid,
        #[arg(long, allow_negative_numbers = true)]
        priority: Option<i32>,
        #[arg(long)]
        active: Option<bool>,
    },
    /// Remove an assignment.
    Remove { id: Uuid },
    /// Many engines x many tiers/users from a JSON file, all or nothing:
    /// {"engine_ids": [...], "tiers": [...], "user_ids": [...], "priority": 0}
    Bulk { file: PathBuf },
}

pub async fn assignments_cmd(args: AssignmentsArgs, json: bool) -> Result<()> {
    let (rest, caller, _) = args.auth.connect()?;
    let list = match args.action {
        AssignmentsAction::List { engine, user, tier } => {
            assignments::list(
                &rest,
                &caller,
                &AssignmentFilter {
                    engine_id: engine,
                    user_id: user,
                    tier,
                },
            )
            .await?
        }
        AssignmentsAction::Update {
            id,
            priority,
            active,
        } => {
            vec![
                assignments::update(&rest, &caller, id, &AssignmentPatch { priority, active })
                    .await?,
            ]
        }
        AssignmentsAction::Remove { id } => {
            assignments::remove(&rest, &caller, id).await?;
            show(json, &serde_json::json!({"removed": id}), || {
                println!("removed assignment {id}");
            });
            return Ok(());
        }
        AssignmentsAction::Bulk { file } => {
            let doc = read_json(&file)?;
            let req: BulkAssignment = serde_json::from_value(doc).map_err(|e| {
                Error::invalid(
                    codes::INVALID_ASSIGNMENT,
                    format!("{}: {e}", file.display()),
                )
            })?;
            let items = req.expand()?;
            let written = assignments::bulk(&rest, &caller, &items).await?;
            if !json {
                eprintln!("wrote {} assignments", written.len());
            }
            written
        }
    };
    show(json, &list, || {
        table(ASSIGNMENT_HEADER, assignment_rows(&list));
    });
    Ok(())
}

#[derive(Args, Debug)]
pub struct ResolveArgs {
    /// List every engine you may use, best first, instead of only the one used.
    #[arg(long)]
    pub all: bool,
    #[command(flatten)]
    pub auth: AuthArgs,
}

pub async fn resolve(args: ResolveArgs, json: bool) -> Result<()> {
    let (rest, caller, _) = args.auth.connect()?;
    let choices = if args.all {
        assignments::my_engines(&rest, &caller).await?
    } else {
        vec![assignments::resolve(&rest, &caller).await?]
    };
    if json {
        if args.all {
            print_json(&choices);
        } else if let Some(c) = choices.first() {
            print_json(c);
        }
    } else {
        table(
            &["rank", "engine", "name", "via", "priority"],
            choices
                .iter()
                .map(|c| {
                    vec![
                        c.rank.to_string(),
                        c.id.to_string(),
                        c.name.clone(),
                        c.assignment_type.to_string(),
                        opt(&c.assignment_priority),
                    ]
                })
                .collect(),
        );
    }
    Ok(())
}
