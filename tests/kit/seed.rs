//! Rows written straight into a stack's database (past RLS): users with a profile and
//! a tier, engines and assignments.

use super::flows::one_step_flow_config;
use super::stack::{BoxError, Stack};
use serde_json::Value;
use uuid::Uuid;

/// A user of the test project, with a valid access token.
#[derive(Clone, Debug)]
pub struct TestUser {
    pub id: Uuid,
    pub email: String,
    pub token: String,
}

impl Stack {
    /// A user with a profile (`role`) and, when `tier` is given, a user_credits row.
    pub async fn user(&self, tier: Option<&str>, admin: bool) -> TestUser {
        let id = Uuid::new_v4();
        let email = format!("{}@example.test", id.simple());
        self.pg
            .execute(
                "INSERT INTO auth.users (id, email) VALUES ($1, $2)",
                &[&id, &email],
            )
            .await
            .expect("insert user");
        let role = if admin { "admin" } else { "user" };
        self.pg
            .execute(
                "INSERT INTO public.profiles (id, email, role) VALUES ($1, $2, $3)",
                &[&id, &email, &role],
            )
            .await
            .expect("insert profile");
        if let Some(tier) = tier {
            self.pg
                .execute(
                    "INSERT INTO public.user_credits (user_id, tier) VALUES ($1, $2)",
                    &[&id, &tier],
                )
                .await
                .expect("insert credits");
        }
        TestUser {
            id,
            email,
            token: self.token_for(id),
        }
    }

    pub async fn admin(&self) -> TestUser {
        self.user(Some("enterprise"), true).await
    }

    pub async fn set_tier(&self, user: Uuid, tier: &str) {
        self.pg
            .execute(
                "UPDATE public.user_credits SET tier = $2 WHERE user_id = $1",
                &[&user, &tier],
            )
            .await
            .expect("update tier");
    }

    /// Insert an engine straight into the database (bypassing RLS) for fixtures.
    pub async fn engine_fixture(&self, name: &str, active: bool) -> Uuid {
        let row = self
            .pg
            .query_one(
                "INSERT INTO public.ai_engines (name, flow_config, models, active) \
                 VALUES ($1, $3, '[]', $2) RETURNING id",
                &[&name, &active, &one_step_flow_config()],
            )
            .await
            .expect("insert engine");
        let id: Uuid = row.get(0);
        // The fixture's flow is valid by construction.
        mark_checked(&self.pg, Some(id))
            .await
            .expect("mark the fixture engine checked");
        id
    }

    pub async fn assign_fixture(
        &self,
        engine: Uuid,
        tier: Option<&str>,
        user: Option<Uuid>,
        priority: i32,
        active: bool,
    ) -> Uuid {
        let kind = if tier.is_some() { "tier" } else { "user" };
        let row = self
            .pg
            .query_one(
                "INSERT INTO public.engine_assignments (engine_id, assignment_type, tier, user_id, priority, active) \
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
                &[&engine, &kind, &tier, &user, &priority, &active],
            )
            .await
            .expect("insert assignment");
        row.get(0)
    }
}

/// Insert an engine straight into the database (no RLS), stored exactly as a deploy
/// through the API stores it (`parse_flow` + `to_engine_row`), and checked.
pub async fn engine_row(pg: &tokio_postgres::Client, flow: &Value) -> Result<Uuid, BoxError> {
    let row = bookengine::flow::parse_flow(flow)
        .map_err(|e| format!("flow: {} {:?}", e.message, e.details))?
        .to_engine_row();
    let r = pg
        .query_one(
            "INSERT INTO public.ai_engines (name, description, flow_config, models, execution_mode, tier) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
            &[
                &row.name,
                &row.description,
                &row.flow_config,
                &row.models,
                &row.execution_mode,
                &row.tier,
            ],
        )
        .await?;
    let id: Uuid = r.get(0);
    mark_checked(pg, None).await?;
    Ok(id)
}

/// Record the pending checks of engines inserted straight into the database (all of
/// them, or `engine`'s) as passed (sql/V7), as the checker of a running service would
/// within a second, so requests need not wait for it. Only for flows that are valid by
/// construction or went through `parse_flow`, the rules the checker runs.
pub async fn mark_checked(
    pg: &tokio_postgres::Client,
    engine: Option<Uuid>,
) -> Result<u64, tokio_postgres::Error> {
    pg.execute(
        "UPDATE public.engine_checks SET state = 'runnable', checked_at = now() \
         WHERE state = 'pending' AND ($1::uuid IS NULL OR engine_id = $1)",
        &[&engine],
    )
    .await
}
