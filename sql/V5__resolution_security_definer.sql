-- Resolution at scale. Under RLS the specified policies are OR-ed (user test, tier
-- test, admin test) and auth.uid() is not leakproof, so no index on
-- engine_assignments can serve my_engines() as the invoker: every call scanned all
-- assignments (1.35 s at 200k rows, benches/README.md). As the definer it filters
-- by the caller explicitly, exactly the rows the SELECT policies would show them
-- (their own user assignments and their tier's), and uses the indexes (1.7 ms).
-- Admins still get only the engines assigned to them, as before.
CREATE OR REPLACE FUNCTION public.my_engines() RETURNS SETOF public.engine_choice
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
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
  SELECT e.id, e.name, e.description, e.flow_config, e.models, e.execution_mode, e.tier,
         e.created_at, e.updated_at,
         b.id, b.assignment_type, b.priority, b.created_at,
         (row_number() OVER (ORDER BY (b.assignment_type = 'user') DESC, b.priority DESC NULLS LAST,
                                      b.created_at DESC, e.id))::integer
  FROM best b
  JOIN public.ai_engines e ON e.id = b.engine_id AND e.active
  ORDER BY 14
$$;
REVOKE ALL ON FUNCTION public.my_engines() FROM PUBLIC, anon, authenticated, service_role;
GRANT EXECUTE ON FUNCTION public.my_engines() TO anon, authenticated, service_role;

-- The engine a generation may snapshot: active, and assigned to the caller (or the
-- caller is an admin). Read as the definer so RLS's OR-ed policies do not scan every
-- assignment; the explicit test returns only what the SELECT policies would show.
CREATE FUNCTION public.engine_for_generation(engine_id uuid) RETURNS public.ai_engines
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
  SELECT e.* FROM public.ai_engines e
   WHERE e.id = engine_for_generation.engine_id AND e.active
     AND (public.is_engine_admin()
          OR EXISTS (SELECT 1 FROM public.my_engines() c WHERE c.id = engine_for_generation.engine_id))
$$;
REVOKE ALL ON FUNCTION public.engine_for_generation(uuid) FROM PUBLIC, anon, authenticated, service_role;
GRANT EXECUTE ON FUNCTION public.engine_for_generation(uuid) TO authenticated;

CREATE OR REPLACE FUNCTION public.generation_jobs_before_insert() RETURNS trigger
LANGUAGE plpgsql SECURITY INVOKER SET search_path = pg_catalog, public AS $$
DECLARE
  uid uuid := auth.uid();
  engine public.ai_engines;
BEGIN
  IF uid IS NULL AND coalesce(auth.role(), '') <> 'service_role' THEN
    RAISE EXCEPTION 'sign in to request a generation' USING ERRCODE = 'PT401', DETAIL = 'not_authenticated';
  END IF;
  IF uid IS NOT NULL THEN
    NEW.user_id := uid;
  ELSIF NEW.user_id IS NULL THEN
    RAISE EXCEPTION 'user_id is required for a job inserted by the service role'
      USING ERRCODE = '22023', DETAIL = 'invalid_request';
  END IF;

  IF NEW.input IS NULL OR jsonb_typeof(NEW.input) <> 'object' THEN
    RAISE EXCEPTION 'input must be a JSON object' USING ERRCODE = '22023', DETAIL = 'invalid_input';
  END IF;
  IF octet_length(NEW.input::text) > 65536 THEN
    RAISE EXCEPTION 'input is larger than 64 KiB' USING ERRCODE = '22023', DETAIL = 'input_too_large';
  END IF;

  IF uid IS NOT NULL THEN
    IF NEW.engine_id IS NULL THEN
      SELECT c.id INTO NEW.engine_id FROM public.my_engines() c LIMIT 1;
      IF NEW.engine_id IS NULL THEN
        RAISE EXCEPTION 'no engine assigned'
          USING ERRCODE = 'PT404', DETAIL = 'no_engine_assigned',
                HINT = 'Ask an administrator to assign an engine to your tier or to you.';
      END IF;
    ELSIF NOT public.is_engine_admin()
          AND NOT EXISTS (SELECT 1 FROM public.my_engines() c WHERE c.id = NEW.engine_id) THEN
      RAISE EXCEPTION 'engine not found' USING ERRCODE = 'PT404', DETAIL = 'engine_not_found';
    END IF;
  END IF;

  -- Only an engine the caller may use (assigned and active, or any active one for an
  -- admin): the same rule as above, without the per-row policy scan.
  IF uid IS NULL THEN
    -- The service role (benchmarks, back-office jobs) bypasses RLS anyway.
    SELECT * INTO engine FROM public.ai_engines e WHERE e.id = NEW.engine_id AND e.active;
  ELSE
    SELECT * INTO engine FROM public.engine_for_generation(NEW.engine_id);
  END IF;
  IF engine.id IS NULL THEN
    RAISE EXCEPTION 'engine not found' USING ERRCODE = 'PT404', DETAIL = 'engine_not_found';
  END IF;

  NEW.id := gen_random_uuid();
  NEW.engine_name := engine.name;
  NEW.engine_snapshot := jsonb_build_object(
    'flow_config', engine.flow_config,
    'models', engine.models,
    'execution_mode', engine.execution_mode,
    'tier', engine.tier,
    'engine_updated_at', engine.updated_at);
  NEW.status := 'queued';
  NEW.progress := '{"done": 0, "total": 0}'::jsonb;
  NEW.attempt := 0;
  NEW.lease_token := NULL;
  NEW.lease_owner := NULL;
  NEW.lease_expires_at := NULL;
  NEW.cancel_requested := false;
  NEW.error := NULL;
  NEW.errors := '[]'::jsonb;
  NEW.result := NULL;
  NEW.usage := '{"input_tokens": 0, "output_tokens": 0}'::jsonb;
  NEW.scheduled_at := now();
  NEW.created_at := now();
  NEW.started_at := NULL;
  NEW.finished_at := NULL;
  NEW.updated_at := now();
  RETURN NEW;
END
$$;
