-- Resolution plans once per connection, not once per call (issue #17's regression).
--
-- my_engines() was a LANGUAGE sql function. SECURITY DEFINER and SET search_path keep
-- such a function from being inlined, and a non-inlined SQL function plans its body on
-- every call: after V7 (engine checks) and V9 (versions, rollout) that planning was
-- about 1.2 ms of resolution's ~2 ms (benches/README.md, section 1b). A plpgsql body
-- keeps its plan in the session's plan cache, so each PostgREST pool connection plans
-- it once. The query, its columns and its order are V9's, unchanged: every caller
-- (resolve_engine, request_generation's trigger, engine_check_for, PostgREST clients)
-- reads the same rows as before.

CREATE OR REPLACE FUNCTION public.my_engines() RETURNS SETOF public.engine_choice
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
  RETURN QUERY
  WITH caller AS (
      SELECT auth.uid() AS uid,
             (SELECT tier FROM public.user_credits WHERE user_id = auth.uid()) AS tier
    ), candidates AS (
      SELECT a.* FROM public.engine_assignments a, caller c
       WHERE a.active AND a.assignment_type = 'user' AND a.user_id = c.uid
      UNION ALL
      SELECT a.* FROM public.engine_assignments a, caller c
       WHERE a.active AND a.assignment_type = 'tier' AND a.tier = c.tier
    ), best AS (
      SELECT DISTINCT ON (a.engine_id) a.*
      FROM candidates a
      ORDER BY a.engine_id, (a.assignment_type = 'user') DESC, a.priority DESC NULLS LAST, a.created_at DESC
    )
    SELECT e.id, e.name, e.description,
           CASE WHEN v.version IS NULL THEN e.flow_config ELSE v.flow_config END,
           CASE WHEN v.version IS NULL THEN e.models ELSE v.models END,
           CASE WHEN v.version IS NULL THEN e.execution_mode ELSE v.execution_mode END,
           e.tier, e.created_at, e.updated_at,
           b.id, b.assignment_type, b.priority, b.created_at,
           (row_number() OVER (ORDER BY (b.assignment_type = 'user') DESC, b.priority DESC NULLS LAST,
                                        b.created_at DESC, e.id))::integer,
           CASE WHEN v.version IS NULL THEN coalesce(k.state, 'pending') ELSE v.check_state END,
           CASE WHEN v.version IS NOT NULL THEN true
                ELSE CASE k.state WHEN 'runnable' THEN true WHEN 'not_runnable' THEN false END END,
           CASE WHEN v.version IS NULL THEN coalesce(k.issues, '[]'::jsonb) ELSE v.check_issues END,
           coalesce(v.version, r.current_version),
           v.version IS NOT NULL
    FROM best b
    CROSS JOIN caller c
    JOIN public.ai_engines e ON e.id = b.engine_id AND e.active
    LEFT JOIN public.engine_checks k ON k.engine_id = e.id
    LEFT JOIN public.engine_releases r ON r.engine_id = e.id
    LEFT JOIN public.engine_versions v
           ON r.rollout_version IS NOT NULL
          AND v.engine_id = e.id AND v.version = r.rollout_version AND v.check_state = 'runnable'
          AND public.engine_rollout_bucket(c.uid, e.id) < r.rollout_percent * 100
    ORDER BY 14;
END
$$;
REVOKE ALL ON FUNCTION public.my_engines() FROM PUBLIC, anon, authenticated, service_role;
GRANT EXECUTE ON FUNCTION public.my_engines() TO anon, authenticated, service_role;
