-- Engines written behind the service's back (issue #12). The seed's React app
-- inserts and updates ai_engines straight through supabase-js, so an engine can
-- reach the table without passing /v1/engines. Three defences, none of which
-- changes a specified table:
--   1. at insert/update, what SQL can check itself is refused with the field named
--      (the seed shows `toast.error('Failed to deploy engine: ' + error.message)`);
--   2. every change of what the flow means marks the engine's check `pending`; the
--      service checks it by the same rules as /v1/engines and records the result
--      in engine_checks, readable under RLS by whoever can see the engine;
--   3. resolution skips an engine known not to run, and a request naming one is
--      refused (engine_not_runnable), so no user job fails on an engine's configuration.

---------------------------------------------------------------------------------------
-- 1. What SQL can check at insert/update.
---------------------------------------------------------------------------------------

-- Problems of a flow_config that no client may store, each naming its field
-- (`flow_config.steps[1].configuration.model is required`). Configuration keys
-- are read under the service's spelling only: provider, model and prompt have no
-- other spelling in its normaliser (src/flow/normalize.rs).
CREATE FUNCTION public.engine_flow_problems(flow_config jsonb) RETURNS text[]
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, public AS $$
DECLARE
  problems text[] := '{}';
  steps jsonb;
  step jsonb;
  cfg jsonb;
  i integer := 0;
  id text;
  seen jsonb := '{}'::jsonb;
  field text;
  at text;
BEGIN
  IF flow_config IS NULL OR jsonb_typeof(flow_config) <> 'object' THEN
    RETURN ARRAY['flow_config must be a JSON object'];
  END IF;
  steps := flow_config -> 'steps';
  IF steps IS NULL OR jsonb_typeof(steps) = 'null' THEN
    RETURN ARRAY['flow_config.steps is required'];
  ELSIF jsonb_typeof(steps) <> 'array' THEN
    RETURN ARRAY['flow_config.steps must be an array of steps'];
  ELSIF jsonb_array_length(steps) = 0 THEN
    RETURN ARRAY['flow_config.steps must not be empty'];
  END IF;
  FOR step IN SELECT value FROM jsonb_array_elements(steps) LOOP
    at := format('flow_config.steps[%s]', i);
    IF jsonb_typeof(step) <> 'object' THEN
      problems := problems || format('%s must be an object', at);
    ELSE
      id := CASE WHEN jsonb_typeof(step -> 'id') = 'string' THEN btrim(step ->> 'id') END;
      IF coalesce(id, '') = '' THEN
        problems := problems || format('%s.id is required', at);
      ELSIF seen ? id THEN
        problems := problems || format('%s.id %s is already used by steps[%s]', at, to_jsonb(id)::text, seen ->> id);
      ELSE
        seen := seen || jsonb_build_object(id, i);
      END IF;
      cfg := step -> 'configuration';
      IF cfg IS NULL OR jsonb_typeof(cfg) <> 'object' THEN
        problems := problems || format('%s.configuration is required', at);
      ELSE
        FOREACH field IN ARRAY ARRAY['provider', 'model', 'prompt'] LOOP
          IF jsonb_typeof(cfg -> field) IS DISTINCT FROM 'string' OR btrim(cfg ->> field) = '' THEN
            problems := problems || format('%s.configuration.%s is required', at, field);
          END IF;
        END LOOP;
      END IF;
    END IF;
    i := i + 1;
  END LOOP;
  RETURN problems;
END
$$;
REVOKE ALL ON FUNCTION public.engine_flow_problems(jsonb) FROM PUBLIC, anon, authenticated, service_role;
GRANT EXECUTE ON FUNCTION public.engine_flow_problems(jsonb) TO authenticated, service_role;

CREATE FUNCTION public.ai_engines_flow_required() RETURNS trigger
LANGUAGE plpgsql SECURITY INVOKER SET search_path = pg_catalog, public AS $$
DECLARE
  problems text[];
BEGIN
  -- A signed-in non-admin is refused by the specified policy right after this
  -- trigger; answering about their flow first would turn that 403 into a 400.
  IF auth.uid() IS NOT NULL AND NOT public.is_engine_admin() THEN
    RETURN NEW;
  END IF;
  IF TG_OP = 'UPDATE' AND NEW.flow_config IS NOT DISTINCT FROM OLD.flow_config THEN
    RETURN NEW;
  END IF;
  problems := public.engine_flow_problems(NEW.flow_config);
  IF cardinality(problems) > 0 THEN
    RAISE EXCEPTION '%', problems[1] || CASE WHEN cardinality(problems) > 1
                                            THEN format(' (and %s more)', cardinality(problems) - 1) ELSE '' END
      USING ERRCODE = '22023', DETAIL = 'invalid_flow', HINT = array_to_string(problems, '; ');
  END IF;
  RETURN NEW;
END
$$;
REVOKE ALL ON FUNCTION public.ai_engines_flow_required() FROM PUBLIC, anon, authenticated, service_role;

CREATE TRIGGER ai_engines_flow_required BEFORE INSERT OR UPDATE ON public.ai_engines
  FOR EACH ROW EXECUTE FUNCTION public.ai_engines_flow_required();

---------------------------------------------------------------------------------------
-- 2. The service's check of each engine.
---------------------------------------------------------------------------------------

-- What the check depends on: the columns the service reads to run the flow.
-- (`models` is descriptive: the worker never reads it.)
CREATE FUNCTION public.engine_flow_hash(e public.ai_engines) RETURNS text
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, public AS $$
  SELECT md5(jsonb_build_array(e.name, e.flow_config, e.execution_mode, e.tier)::text)
$$;
REVOKE ALL ON FUNCTION public.engine_flow_hash(public.ai_engines) FROM PUBLIC, anon, authenticated, service_role;
GRANT EXECUTE ON FUNCTION public.engine_flow_hash(public.ai_engines) TO authenticated, service_role;

CREATE TABLE public.engine_checks (
  engine_id uuid PRIMARY KEY REFERENCES public.ai_engines(id) ON DELETE CASCADE,
  -- engine_flow_hash of the engine this row is about; a result for another one is not saved.
  flow_hash text NOT NULL,
  state text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'runnable', 'not_runnable')),
  -- [{path, code, message, ...}]: why the engine cannot run (paths as in /v1/engines errors).
  issues jsonb NOT NULL DEFAULT '[]'::jsonb CHECK (jsonb_typeof(issues) = 'array'),
  -- [{path, from, to}]: how the React app's spellings were read.
  notes jsonb NOT NULL DEFAULT '[]'::jsonb CHECK (jsonb_typeof(notes) = 'array'),
  requested_at timestamptz NOT NULL DEFAULT now(),
  checked_at timestamptz
);
-- The service's poll reads only this.
CREATE INDEX engine_checks_pending_idx ON public.engine_checks (requested_at) WHERE state = 'pending';

ALTER TABLE public.engine_checks ENABLE ROW LEVEL SECURITY;
-- Visible exactly when the engine is (the subquery runs under ai_engines' policies).
CREATE POLICY "Engine checks are visible with their engine" ON public.engine_checks
  FOR SELECT USING (EXISTS (SELECT 1 FROM public.ai_engines e WHERE e.id = engine_checks.engine_id));

REVOKE ALL ON TABLE public.engine_checks FROM PUBLIC, anon, authenticated, service_role;
GRANT SELECT ON TABLE public.engine_checks TO authenticated, service_role;
GRANT UPDATE (state, issues, notes, checked_at) ON TABLE public.engine_checks TO service_role;

-- A change of what the flow means asks for a new check. SECURITY DEFINER: the admin
-- writing the engine has no write access to engine_checks.
CREATE FUNCTION public.ai_engines_request_check() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
  hash text := public.engine_flow_hash(NEW);
BEGIN
  IF TG_OP = 'UPDATE' AND hash = public.engine_flow_hash(OLD) THEN
    RETURN NULL;
  END IF;
  INSERT INTO public.engine_checks AS c (engine_id, flow_hash, state, issues, notes, requested_at, checked_at)
  VALUES (NEW.id, hash, 'pending', '[]'::jsonb, '[]'::jsonb, now(), NULL)
  ON CONFLICT (engine_id) DO UPDATE
    SET flow_hash = EXCLUDED.flow_hash, state = 'pending', issues = '[]'::jsonb, notes = '[]'::jsonb,
        requested_at = now(), checked_at = NULL
    WHERE c.flow_hash IS DISTINCT FROM EXCLUDED.flow_hash;
  RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION public.ai_engines_request_check() FROM PUBLIC, anon, authenticated, service_role;

CREATE TRIGGER ai_engines_request_check AFTER INSERT OR UPDATE ON public.ai_engines
  FOR EACH ROW EXECUTE FUNCTION public.ai_engines_request_check();

-- Every engine that exists now gets a pending check.
INSERT INTO public.engine_checks (engine_id, flow_hash)
SELECT e.id, public.engine_flow_hash(e) FROM public.ai_engines e
ON CONFLICT (engine_id) DO NOTHING;

-- The service's result, saved only if it is about the engine as it is now: an
-- engine changed while it was being checked stays pending for the next round.
CREATE FUNCTION public.engine_check_save(engine_id uuid, flow_hash text, runnable boolean,
                                         issues jsonb DEFAULT '[]', notes jsonb DEFAULT '[]')
RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, public AS $$
#variable_conflict use_column
BEGIN
  UPDATE public.engine_checks c
     SET state = CASE WHEN engine_check_save.runnable THEN 'runnable' ELSE 'not_runnable' END,
         issues = coalesce(engine_check_save.issues, '[]'::jsonb),
         notes = coalesce(engine_check_save.notes, '[]'::jsonb),
         checked_at = now()
   WHERE c.engine_id = engine_check_save.engine_id
     AND c.flow_hash = engine_check_save.flow_hash
     AND EXISTS (SELECT 1 FROM public.ai_engines e
                  WHERE e.id = engine_check_save.engine_id
                    AND public.engine_flow_hash(e) = engine_check_save.flow_hash);
  RETURN FOUND;
END
$$;
REVOKE ALL ON FUNCTION public.engine_check_save(uuid, text, boolean, jsonb, jsonb) FROM PUBLIC, anon, authenticated, service_role;
GRANT EXECUTE ON FUNCTION public.engine_check_save(uuid, text, boolean, jsonb, jsonb) TO service_role;

---------------------------------------------------------------------------------------
-- 3. Resolution and requests never hand out a broken engine.
---------------------------------------------------------------------------------------

-- my_engines() says why an engine would or would not be used. The type gains
-- three attributes; every function returning it is re-created below.
ALTER TYPE public.engine_choice ADD ATTRIBUTE check_state text;
ALTER TYPE public.engine_choice ADD ATTRIBUTE runnable boolean;
ALTER TYPE public.engine_choice ADD ATTRIBUTE check_issues jsonb;

-- As V5 (definer, explicit caller filter: benches/README.md), plus the check.
-- rank stays the precedence; runnable is true (checked), false (known broken:
-- resolution skips it) or null (pending: a request waits for the check).
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
                                      b.created_at DESC, e.id))::integer,
         coalesce(k.state, 'pending'),
         CASE k.state WHEN 'runnable' THEN true WHEN 'not_runnable' THEN false END,
         coalesce(k.issues, '[]'::jsonb)
  FROM best b
  JOIN public.ai_engines e ON e.id = b.engine_id AND e.active
  LEFT JOIN public.engine_checks k ON k.engine_id = e.id
  ORDER BY 14
$$;
REVOKE ALL ON FUNCTION public.my_engines() FROM PUBLIC, anon, authenticated, service_role;
GRANT EXECUTE ON FUNCTION public.my_engines() TO anon, authenticated, service_role;

-- The engine a generation would use: the first in precedence not known to be
-- broken (possibly still pending). When every one is broken, the best one's issues.
CREATE OR REPLACE FUNCTION public.resolve_engine() RETURNS public.engine_choice
LANGUAGE plpgsql STABLE SECURITY INVOKER SET search_path = pg_catalog, public AS $$
DECLARE
  choice public.engine_choice;
BEGIN
  SELECT * INTO choice FROM public.my_engines() c
   WHERE c.check_state <> 'not_runnable' ORDER BY c.rank LIMIT 1;
  IF choice.id IS NULL THEN
    SELECT * INTO choice FROM public.my_engines() c ORDER BY c.rank LIMIT 1;
    IF choice.id IS NULL THEN
      RAISE EXCEPTION 'no engine assigned'
        USING ERRCODE = 'PT404',
              DETAIL = 'no_engine_assigned',
              HINT = 'Ask an administrator to assign an engine to your tier or to you.';
    END IF;
    PERFORM public.engine_refuse_not_runnable(choice.name, choice.check_issues);
  END IF;
  RETURN choice;
END
$$;

-- engine_not_runnable: the message names the first issue, the hint carries all of
-- them as JSON (supabase-js shows error.message; the service turns the hint into
-- details.issues).
CREATE FUNCTION public.engine_refuse_not_runnable(engine_name text, issues jsonb) RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, public AS $$
DECLARE
  first jsonb := issues -> 0;
BEGIN
  RAISE EXCEPTION '%', format('the engine %s cannot run: %s%s',
      to_jsonb(engine_name)::text,
      coalesce(nullif(first ->> 'path', '') || ': ', '') || coalesce(first ->> 'message', 'its flow is invalid'),
      CASE WHEN jsonb_array_length(coalesce(issues, '[]'::jsonb)) > 1
           THEN format(' (and %s more)', jsonb_array_length(issues) - 1) ELSE '' END)
    USING ERRCODE = 'PT422', DETAIL = 'engine_not_runnable', HINT = coalesce(issues, '[]'::jsonb)::text;
END
$$;
REVOKE ALL ON FUNCTION public.engine_refuse_not_runnable(text, jsonb) FROM PUBLIC, anon, authenticated, service_role;
GRANT EXECUTE ON FUNCTION public.engine_refuse_not_runnable(text, jsonb) TO anon, authenticated, service_role;

REVOKE ALL ON FUNCTION public.resolve_engine() FROM PUBLIC, anon, authenticated, service_role;
GRANT EXECUTE ON FUNCTION public.resolve_engine() TO anon, authenticated, service_role;

-- The check of one engine the caller may use (admins: any; the service role: any).
-- Definer with the same explicit test as engine_for_generation, so a user's
-- request does not pay for the OR-ed policies.
CREATE FUNCTION public.engine_check_for(engine_id uuid) RETURNS public.engine_checks
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
  SELECT k.* FROM public.engine_checks k
   WHERE k.engine_id = engine_check_for.engine_id
     AND ((auth.uid() IS NULL AND coalesce(auth.role(), '') = 'service_role')
          OR public.is_engine_admin()
          OR EXISTS (SELECT 1 FROM public.my_engines() c WHERE c.id = engine_check_for.engine_id))
$$;
REVOKE ALL ON FUNCTION public.engine_check_for(uuid) FROM PUBLIC, anon, authenticated, service_role;
GRANT EXECUTE ON FUNCTION public.engine_check_for(uuid) TO authenticated, service_role;

-- How long a request waits for the check of an engine changed moments ago. The
-- service checks pending engines every BOOKENGINE_CHECK_INTERVAL_MS (1 s).
CREATE FUNCTION public.engine_check_wait_seconds() RETURNS double precision
LANGUAGE sql IMMUTABLE AS $$ SELECT 4.0::double precision $$;
REVOKE ALL ON FUNCTION public.engine_check_wait_seconds() FROM PUBLIC, anon, authenticated, service_role;
GRANT EXECUTE ON FUNCTION public.engine_check_wait_seconds() TO authenticated, service_role;

-- As V5, with the engine's check as the gate:
--   no engine named: the first assigned engine not known to be broken;
--   pending: wait (up to engine_check_wait_seconds) for the service's check, then
--     move on if it turned out broken, or refuse with engine_check_pending;
--   named and known broken: engine_not_runnable.
-- A user's engine and its check come from one my_engines() row, read in one
-- snapshot, so the job's snapshot is of the version that was checked (and the
-- resolved path costs one my_engines() call, one fewer than V5's).
CREATE OR REPLACE FUNCTION public.generation_jobs_before_insert() RETURNS trigger
LANGUAGE plpgsql SECURITY INVOKER SET search_path = pg_catalog, public AS $$
DECLARE
  uid uuid := auth.uid();
  engine public.ai_engines;
  choice public.engine_choice;
  chk public.engine_checks;
  deadline timestamptz := clock_timestamp() + make_interval(secs => public.engine_check_wait_seconds());
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
    -- Each time round is a new snapshot: the service's check commits meanwhile.
    IF NEW.engine_id IS NULL THEN
      LOOP
        SELECT * INTO choice FROM public.my_engines() c
         WHERE c.check_state <> 'not_runnable' ORDER BY c.rank LIMIT 1;
        EXIT WHEN choice.id IS NULL OR choice.check_state = 'runnable' OR clock_timestamp() >= deadline;
        PERFORM pg_sleep(0.1);
      END LOOP;
      IF choice.id IS NULL THEN
        SELECT * INTO choice FROM public.my_engines() c ORDER BY c.rank LIMIT 1;
        IF choice.id IS NULL THEN
          RAISE EXCEPTION 'no engine assigned'
            USING ERRCODE = 'PT404', DETAIL = 'no_engine_assigned',
                  HINT = 'Ask an administrator to assign an engine to your tier or to you.';
        END IF;
      END IF;
    ELSE
      LOOP
        SELECT * INTO choice FROM public.my_engines() c WHERE c.id = NEW.engine_id;
        EXIT WHEN choice.id IS NULL OR choice.check_state <> 'pending' OR clock_timestamp() >= deadline;
        PERFORM pg_sleep(0.1);
      END LOOP;
      IF choice.id IS NULL AND NOT public.is_engine_admin() THEN
        RAISE EXCEPTION 'engine not found' USING ERRCODE = 'PT404', DETAIL = 'engine_not_found';
      END IF;
    END IF;
  END IF;

  IF choice.id IS NOT NULL THEN
    IF choice.check_state = 'not_runnable' THEN
      PERFORM public.engine_refuse_not_runnable(choice.name, choice.check_issues);
    END IF;
    chk.state := choice.check_state;
    engine.id := choice.id;
    engine.name := choice.name;
    engine.flow_config := choice.flow_config;
    engine.models := choice.models;
    engine.execution_mode := choice.execution_mode;
    engine.tier := choice.tier;
    engine.updated_at := choice.updated_at;
  ELSE
    -- An admin naming an engine not assigned to them, or the service role (benchmarks,
    -- back-office jobs): any active engine, and its check read separately.
    LOOP
      IF uid IS NULL THEN
        SELECT * INTO engine FROM public.ai_engines e WHERE e.id = NEW.engine_id AND e.active;
      ELSE
        SELECT * INTO engine FROM public.engine_for_generation(NEW.engine_id);
      END IF;
      IF engine.id IS NULL THEN
        RAISE EXCEPTION 'engine not found' USING ERRCODE = 'PT404', DETAIL = 'engine_not_found';
      END IF;
      SELECT * INTO chk FROM public.engine_check_for(NEW.engine_id);
      -- Two statements: a check for another version of the engine counts as pending.
      IF chk.flow_hash IS DISTINCT FROM public.engine_flow_hash(engine) THEN
        chk.state := 'pending';
      END IF;
      EXIT WHEN chk.state <> 'pending' OR clock_timestamp() >= deadline;
      PERFORM pg_sleep(0.1);
    END LOOP;
    IF chk.state = 'not_runnable' THEN
      PERFORM public.engine_refuse_not_runnable(engine.name, chk.issues);
    END IF;
  END IF;
  IF chk.state IS DISTINCT FROM 'runnable' THEN
    RAISE EXCEPTION 'the engine % was changed moments ago and is still being checked', to_jsonb(engine.name)::text
      USING ERRCODE = 'PT409', DETAIL = 'engine_check_pending',
            HINT = 'Try again in a few seconds. If this persists, the bookengine service (which checks engines) is not running.';
  END IF;

  NEW.engine_id := engine.id;
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
