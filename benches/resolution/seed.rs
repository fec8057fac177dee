//! The data the bench resolves against: users, engines, assignments at each size, and
//! the rollout candidates.

use super::*;

pub(super) async fn seed_base(pg: &tokio_postgres::Client, flow: &serde_json::Value) -> Res<()> {
    let t = Instant::now();
    let row = bookengine::flow::parse_flow(flow)
        .map_err(|e| format!("flow: {}", e.message))?
        .to_engine_row();
    pg.batch_execute(&format!(
        "INSERT INTO auth.users (id, email)
           SELECT ('00000000-0000-4000-8000-' || lpad(to_hex(g), 12, '0'))::uuid, 'u' || g || '@bench.test'
           FROM generate_series(1, {USERS}) g;
         INSERT INTO public.profiles (id, email, role) SELECT id, email, 'user' FROM auth.users;
         -- tiers spread: 50% hobby, 35% pro, 15% enterprise
         INSERT INTO public.user_credits (user_id, tier, credits_remaining)
           SELECT ('00000000-0000-4000-8000-' || lpad(to_hex(g), 12, '0'))::uuid,
                  CASE WHEN g % 20 < 10 THEN 'hobby' WHEN g % 20 < 17 THEN 'pro' ELSE 'enterprise' END,
                  100
           FROM generate_series(1, {USERS}) g;"
    ))
    .await?;
    pg.execute(
        &format!(
            "INSERT INTO public.ai_engines (id, name, description, flow_config, models, execution_mode, tier, active)
               SELECT ('00000000-0000-4000-9000-' || lpad(to_hex(g), 12, '0'))::uuid, 'Engine ' || g, $1,
                      $2, $3, 'parallel', (ARRAY['hobby','pro','enterprise'])[g % 3 + 1], g % 50 <> 0
               FROM generate_series(1, {ENGINES}) g"
        ),
        &[&row.description, &row.flow_config, &row.models],
    )
    .await?;
    mark_checked(pg, None).await?;
    println!(
        "seeded {USERS} users (profiles, user_credits: 50% hobby / 35% pro / 15% enterprise) and {ENGINES} engines (2% inactive, flow_config = the example book flow) in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Share of each engine's users on its candidate while the rollout case runs.
pub(super) const ROLLOUT_PERCENT: i32 = 50;

/// Gives every engine a checked version 2 (another model in the first step): a
/// rollout candidate. Written as the service role would see it after its check.
pub(super) async fn seed_candidates(pg: &tokio_postgres::Client) -> Res<()> {
    pg.batch_execute(
        "INSERT INTO public.engine_versions (engine_id, version, flow_config, models, execution_mode,
                                             origin, note, check_state, checked_at)
           SELECT e.id, 2, jsonb_set(e.flow_config, '{steps,0,configuration,model}', '\"gpt-4.1-mini\"'),
                  e.models, e.execution_mode, 'proposal', 'bench candidate', 'runnable', now()
             FROM public.ai_engines e;
         UPDATE public.engine_releases SET last_version = 2;
         ANALYZE public.engine_versions, public.engine_releases;",
    )
    .await?;
    Ok(())
}

/// Starts (or ends) a rollout of version 2 on every engine.
pub(super) async fn set_rollout(pg: &tokio_postgres::Client, on: bool) -> Res<()> {
    let sql = if on {
        format!(
            "UPDATE public.engine_releases SET rollout_version = 2, rollout_percent = {ROLLOUT_PERCENT},
                    rollout_started_at = now(), rollout_updated_at = now()"
        )
    } else {
        "UPDATE public.engine_releases SET rollout_version = NULL, rollout_percent = NULL,
                rollout_started_at = NULL, rollout_updated_at = now()"
            .to_owned()
    };
    pg.batch_execute(&sql).await?;
    Ok(())
}

/// Share of 1,000 users whose resolved engine is a candidate (proves the case is live).
pub(super) async fn candidate_share(pg: &tokio_postgres::Client) -> Res<f64> {
    pg.batch_execute(&format!(
        "DROP TABLE IF EXISTS pg_temp.probe;
         CREATE TEMP TABLE probe (rollout boolean);
         DO $$
         DECLARE g integer; c public.engine_choice;
         BEGIN
           FOR g IN 1..1000 LOOP
             PERFORM set_config('request.jwt.claims', json_build_object('sub',
               ('00000000-0000-4000-8000-' || lpad(to_hex(g * 97 % {USERS} + 1), 12, '0')),
               'role', 'authenticated')::text, true);
             SELECT * INTO c FROM public.my_engines() x WHERE x.check_state <> 'not_runnable' ORDER BY x.rank LIMIT 1;
             IF c.id IS NOT NULL THEN INSERT INTO probe VALUES (c.rollout); END IF;
           END LOOP;
         END $$;"
    ))
    .await?;
    let row = pg
        .query_one(
            "SELECT coalesce(avg(CASE WHEN rollout THEN 1.0 ELSE 0.0 END), 0)::float8 FROM probe",
            &[],
        )
        .await?;
    Ok(row.get(0))
}

/// Replace all assignments with `total`: 90 tier assignments (30 engines per tier)
/// and `total - 90` user assignments spread evenly over the users, random priorities,
/// 5% inactive.
pub(super) async fn seed_assignments(pg: &tokio_postgres::Client, total: i64) -> Res<()> {
    let t = Instant::now();
    let user_rows = total - TIER_ASSIGNMENTS;
    let per_user = (user_rows + USERS - 1) / USERS;
    let step = ENGINES / per_user.max(1);
    pg.batch_execute(&format!(
        "TRUNCATE public.engine_assignments;
         INSERT INTO public.engine_assignments (engine_id, assignment_type, tier, priority, active)
           SELECT ('00000000-0000-4000-9000-' || lpad(to_hex(g), 12, '0'))::uuid, 'tier',
                  (ARRAY['hobby','pro','enterprise'])[g % 3 + 1], (random() * 100)::int, true
           FROM generate_series(1, 60) g
           UNION ALL
           SELECT ('00000000-0000-4000-9000-' || lpad(to_hex(g), 12, '0'))::uuid, 'tier',
                  (ARRAY['hobby','pro','enterprise'])[(g + 1) % 3 + 1], (random() * 100)::int, true
           FROM generate_series(1, 30) g;
         INSERT INTO public.engine_assignments (engine_id, assignment_type, user_id, priority, active)
           SELECT ('00000000-0000-4000-9000-' || lpad(to_hex(((u * 7919 + s * {step}) % {ENGINES}) + 1), 12, '0'))::uuid,
                  'user', ('00000000-0000-4000-8000-' || lpad(to_hex(u), 12, '0'))::uuid,
                  (random() * 100)::int, k % 20 <> 0
           FROM generate_series(0, {user_rows} - 1) k,
                LATERAL (SELECT (k % {USERS}) + 1 AS u, k / {USERS} AS s) x;"
    ))
    .await?;
    pg.batch_execute("VACUUM ANALYZE public.engine_assignments")
        .await?;
    pg.batch_execute("VACUUM ANALYZE public.ai_engines").await?;
    pg.batch_execute("VACUUM ANALYZE public.user_credits")
        .await?;
    pg.batch_execute("VACUUM ANALYZE public.profiles").await?;
    let n: i64 = pg
        .query_one("SELECT count(*) FROM public.engine_assignments", &[])
        .await?
        .get(0);
    println!(
        "\n== {n} assignments ({TIER_ASSIGNMENTS} tier, {} user, up to {per_user} per user), seeded in {:.1} s",
        n - TIER_ASSIGNMENTS,
        t.elapsed().as_secs_f64()
    );
    Ok(())
}
