-- Engines with a history (issue #17): immutable versions, rollback, gradual rollout.
--
-- ai_engines keeps the specification's columns and always holds the *current*
-- version (so the React app, the checker and every reader see what runs). Around it,
-- in tables of our own:
--   engine_versions  one immutable row per change of flow_config/models/execution_mode,
--                    written by a trigger whatever the client (API, CLI, supabase-js);
--   engine_releases  per engine: the current version number, the last number used,
--                    and the rollout (a candidate version and the share of users on it).
-- Resolution (my_engines, resolve_engine) and the job insert trigger apply the rollout
-- in SQL: a user is on the candidate when the bucket of (user, engine) is below the
-- share, and only while the candidate's own check says it runs.

---------------------------------------------------------------------------------------
-- 1. Versions.
---------------------------------------------------------------------------------------

CREATE TABLE public.engine_versions (
  engine_id uuid NOT NULL REFERENCES public.ai_engines(id) ON DELETE CASCADE,
  version integer NOT NULL CHECK (version >= 1),
  flow_config jsonb NOT NULL,
  models jsonb NOT NULL,
  execution_mode text,
  -- How the version came to be: the engine's first row, a later change of it, a
  -- rollback (restored_from names the version restored), a candidate proposed for a
  -- rollout without becoming current, or the row that existed when V9 was applied.
  origin text NOT NULL CHECK (origin IN ('deploy', 'update', 'rollback', 'proposal', 'migration')),
  restored_from integer,
  note text CHECK (char_length(note) <= 2000),
  created_by uuid REFERENCES auth.users(id) ON DELETE SET NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  -- The service's check of this version's flow (the engine's name and tier as they are
  -- when checked): a rollout hands a candidate only to users once it is 'runnable'.
  check_state text NOT NULL DEFAULT 'pending' CHECK (check_state IN ('pending', 'runnable', 'not_runnable')),
  check_issues jsonb NOT NULL DEFAULT '[]'::jsonb CHECK (jsonb_typeof(check_issues) = 'array'),
  checked_at timestamptz,
  PRIMARY KEY (engine_id, version)
);
CREATE INDEX engine_versions_pending_idx ON public.engine_versions (created_at) WHERE check_state = 'pending';

ALTER TABLE public.engine_versions ENABLE ROW LEVEL SECURITY;
CREATE POLICY "Admins can view engine versions" ON public.engine_versions
  FOR SELECT USING ((SELECT public.is_engine_admin()));

REVOKE ALL ON TABLE public.engine_versions FROM PUBLIC, anon, authenticated, service_role;
GRANT SELECT ON TABLE public.engine_versions TO authenticated, service_role;
-- The service role records checks (and may prune); nobody else writes but the triggers
-- and functions below, which run as their definer.
GRANT UPDATE (check_state, check_issues, checked_at), DELETE ON TABLE public.engine_versions TO service_role;

-- What a version is never changes, not even for the service role: only its check does.
CREATE FUNCTION public.engine_versions_immutable() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, public AS $$
BEGIN
  IF (NEW.engine_id, NEW.version, NEW.flow_config, NEW.models, NEW.execution_mode, NEW.origin,
      NEW.restored_from, NEW.note, NEW.created_at)
     IS DISTINCT FROM
     (OLD.engine_id, OLD.version, OLD.flow_config, OLD.models, OLD.execution_mode, OLD.origin,
      OLD.restored_from, OLD.note, OLD.created_at) THEN
    RAISE EXCEPTION 'engine versions are immutable: only their check may change'
      USING ERRCODE = '22023', DETAIL = 'invalid_request';
  END IF;
  RETURN NEW;
END
$$;
REVOKE ALL ON FUNCTION public.engine_versions_immutable() FROM PUBLIC, anon, authenticated, service_role;
CREATE TRIGGER engine_versions_immutable BEFORE UPDATE ON public.engine_versions
  FOR EACH ROW EXECUTE FUNCTION public.engine_versions_immutable();

---------------------------------------------------------------------------------------
-- 2. The current version and the rollout.
---------------------------------------------------------------------------------------

CREATE TABLE public.engine_releases (
  engine_id uuid PRIMARY KEY REFERENCES public.ai_engines(id) ON DELETE CASCADE,
  -- The version ai_engines holds now.
  current_version integer NOT NULL,
  -- The highest number given out (proposals take numbers without becoming current).
  last_version integer NOT NULL,
  rollout_version integer,
  -- Share of the engine's users on the candidate, 0 to 100 in steps of 0.01.
  rollout_percent numeric(5, 2) CHECK (rollout_percent BETWEEN 0 AND 100),
  rollout_started_at timestamptz,
  rollout_started_by uuid REFERENCES auth.users(id) ON DELETE SET NULL,
  rollout_updated_at timestamptz,
  CHECK ((rollout_version IS NULL) = (rollout_percent IS NULL)),
  CHECK (rollout_version IS DISTINCT FROM current_version)
);

ALTER TABLE public.engine_releases ENABLE ROW LEVEL SECURITY;
CREATE POLICY "Admins can view engine releases" ON public.engine_releases
  FOR SELECT USING ((SELECT public.is_engine_admin()));
REVOKE ALL ON TABLE public.engine_releases FROM PUBLIC, anon, authenticated, service_role;
GRANT SELECT ON TABLE public.engine_releases TO authenticated, service_role;

-- Which side of a rollout a user is on for one engine: a number in [0, 10000) fixed by
-- (user, engine), so a user stays on one version while the share holds and only moves
-- to the candidate as it grows (and different engines split users independently).
-- The first 32 bits of md5, as the service and the tests compute it too.
CREATE FUNCTION public.engine_rollout_bucket(user_id uuid, engine_id uuid) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog AS $$
  SELECT (('x' || substr(md5(user_id::text || ':' || engine_id::text), 1, 8))::bit(32)::bigint % 10000)::integer
$$;
REVOKE ALL ON FUNCTION public.engine_rollout_bucket(uuid, uuid) FROM PUBLIC, anon, authenticated, service_role;
GRANT EXECUTE ON FUNCTION public.engine_rollout_bucket(uuid, uuid) TO authenticated, service_role;

-- Every change of what runs writes one version. SECURITY DEFINER: nobody else may
-- write engine_versions or engine_releases. The functions below say what kind of
-- change it is through transaction-local settings (bookengine.version_*); a plain
-- UPDATE from any client is an 'update'.
CREATE FUNCTION public.ai_engines_record_version() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
  origin text := nullif(current_setting('bookengine.version_origin', true), '');
  restored integer := nullif(current_setting('bookengine.version_restored_from', true), '')::integer;
  note text := nullif(current_setting('bookengine.version_note', true), '');
  rel public.engine_releases;
  n integer;
BEGIN
  IF TG_OP = 'UPDATE'
     AND NEW.flow_config IS NOT DISTINCT FROM OLD.flow_config
     AND NEW.models IS NOT DISTINCT FROM OLD.models
     AND NEW.execution_mode IS NOT DISTINCT FROM OLD.execution_mode THEN
    RETURN NULL;
  END IF;
  IF TG_OP = 'INSERT' THEN
    INSERT INTO public.engine_releases (engine_id, current_version, last_version) VALUES (NEW.id, 1, 1);
    n := 1;
    origin := 'deploy';
  ELSE
    SELECT * INTO rel FROM public.engine_releases r WHERE r.engine_id = NEW.id FOR UPDATE;
    IF rel.engine_id IS NULL THEN
      -- Not expected (every engine gets its row), but never lose a change over it.
      SELECT coalesce(max(v.version), 0) INTO n FROM public.engine_versions v WHERE v.engine_id = NEW.id;
      INSERT INTO public.engine_releases (engine_id, current_version, last_version) VALUES (NEW.id, n, n)
      RETURNING * INTO rel;
    END IF;
    -- Promotion: the candidate itself becomes current, no new number.
    IF origin = 'promote' AND rel.rollout_version IS NOT NULL AND EXISTS (
         SELECT 1 FROM public.engine_versions v
          WHERE v.engine_id = NEW.id AND v.version = rel.rollout_version
            AND v.flow_config = NEW.flow_config AND v.models = NEW.models
            AND v.execution_mode IS NOT DISTINCT FROM NEW.execution_mode) THEN
      UPDATE public.engine_releases r
         SET current_version = rel.rollout_version, rollout_version = NULL, rollout_percent = NULL,
             rollout_started_at = NULL, rollout_started_by = NULL, rollout_updated_at = now()
       WHERE r.engine_id = NEW.id;
      RETURN NULL;
    END IF;
    n := rel.last_version + 1;
    IF origin IS DISTINCT FROM 'rollback' THEN
      origin := 'update';
      restored := NULL;
    END IF;
    -- A running rollout goes on: its candidate now competes with this new version.
    UPDATE public.engine_releases r SET current_version = n, last_version = n
     WHERE r.engine_id = NEW.id;
  END IF;
  INSERT INTO public.engine_versions (engine_id, version, flow_config, models, execution_mode,
                                      origin, restored_from, note, created_by)
  VALUES (NEW.id, n, NEW.flow_config, NEW.models, NEW.execution_mode, origin, restored, note,
          coalesce(auth.uid(), CASE WHEN TG_OP = 'INSERT' THEN NEW.created_by END));
  RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION public.ai_engines_record_version() FROM PUBLIC, anon, authenticated, service_role;

CREATE TRIGGER ai_engines_record_version AFTER INSERT OR UPDATE ON public.ai_engines
  FOR EACH ROW EXECUTE FUNCTION public.ai_engines_record_version();

-- Every engine that exists now is at version 1.
INSERT INTO public.engine_versions (engine_id, version, flow_config, models, execution_mode, origin, created_by, created_at)
SELECT e.id, 1, e.flow_config, e.models, e.execution_mode, 'migration', e.created_by, coalesce(e.updated_at, now())
  FROM public.ai_engines e
ON CONFLICT DO NOTHING;
INSERT INTO public.engine_releases (engine_id, current_version, last_version)
SELECT e.id, 1, 1 FROM public.ai_engines e
ON CONFLICT DO NOTHING;

---------------------------------------------------------------------------------------
-- 3. What admins do with versions (any client: the API, the CLI, supabase-js rpc()).
---------------------------------------------------------------------------------------

-- Admins and the service role (back-office); everyone else is told so.
CREATE FUNCTION public.engine_versions_require_admin() RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, public AS $$
BEGIN
  IF NOT (public.is_engine_admin() OR (auth.uid() IS NULL AND coalesce(auth.role(), '') = 'service_role')) THEN
    RAISE EXCEPTION 'only admins can manage engine versions'
      USING ERRCODE = 'PT403', DETAIL = 'permission_denied';
  END IF;
END
$$;
REVOKE ALL ON FUNCTION public.engine_versions_require_admin() FROM PUBLIC, anon, authenticated, service_role;

CREATE FUNCTION public.engine_version_lookup(engine_id uuid, version integer) RETURNS public.engine_versions
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, public AS $$
DECLARE
  v public.engine_versions;
BEGIN
  SELECT * INTO v FROM public.engine_versions x
   WHERE x.engine_id = engine_version_lookup.engine_id AND x.version = engine_version_lookup.version;
  IF v.engine_id IS NULL THEN
    IF NOT EXISTS (SELECT 1 FROM public.ai_engines e WHERE e.id = engine_version_lookup.engine_id) THEN
      RAISE EXCEPTION 'engine % not found', engine_version_lookup.engine_id
        USING ERRCODE = 'PT404', DETAIL = 'engine_not_found';
    END IF;
    RAISE EXCEPTION 'engine % has no version %', engine_version_lookup.engine_id, engine_version_lookup.version
      USING ERRCODE = 'PT404', DETAIL = 'version_not_found';
  END IF;
  RETURN v;
END
$$;
REVOKE ALL ON FUNCTION public.engine_version_lookup(uuid, integer) FROM PUBLIC, anon, authenticated, service_role;

CREATE FUNCTION public.engine_release_of(engine_id uuid) RETURNS public.engine_releases
LANGUAGE plpgsql SET search_path = pg_catalog, public AS $$
DECLARE
  rel public.engine_releases;
BEGIN
  SELECT * INTO rel FROM public.engine_releases r WHERE r.engine_id = engine_release_of.engine_id FOR UPDATE;
  IF rel.engine_id IS NULL THEN
    RAISE EXCEPTION 'engine % not found', engine_release_of.engine_id
      USING ERRCODE = 'PT404', DETAIL = 'engine_not_found';
  END IF;
  RETURN rel;
END
$$;
REVOKE ALL ON FUNCTION public.engine_release_of(uuid) FROM PUBLIC, anon, authenticated, service_role;

-- A candidate for a rollout: a new version that does not become current. What SQL
-- can check is refused here (as at insert, sql/V7); the service checks the rest
-- within a second and a rollout hands it to nobody until then.
CREATE FUNCTION public.engine_version_propose(engine_id uuid, flow_config jsonb, models jsonb DEFAULT '[]',
                                              execution_mode text DEFAULT 'sequential', note text DEFAULT NULL)
RETURNS public.engine_versions
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
  rel public.engine_releases;
  problems text[];
  v public.engine_versions;
BEGIN
  PERFORM public.engine_versions_require_admin();
  rel := public.engine_release_of(engine_version_propose.engine_id);
  problems := public.engine_flow_problems(engine_version_propose.flow_config);
  IF cardinality(problems) > 0 THEN
    RAISE EXCEPTION '%', problems[1] || CASE WHEN cardinality(problems) > 1
                                            THEN format(' (and %s more)', cardinality(problems) - 1) ELSE '' END
      USING ERRCODE = '22023', DETAIL = 'invalid_flow', HINT = array_to_string(problems, '; ');
  END IF;
  IF engine_version_propose.execution_mode IS NOT NULL
     AND engine_version_propose.execution_mode NOT IN ('sequential', 'parallel') THEN
    RAISE EXCEPTION 'execution_mode must be sequential or parallel'
      USING ERRCODE = '22023', DETAIL = 'invalid_flow';
  END IF;
  UPDATE public.engine_releases r SET last_version = r.last_version + 1
   WHERE r.engine_id = rel.engine_id;
  INSERT INTO public.engine_versions (engine_id, version, flow_config, models, execution_mode, origin, note, created_by)
  VALUES (rel.engine_id, rel.last_version + 1, engine_version_propose.flow_config,
          coalesce(engine_version_propose.models, '[]'::jsonb), engine_version_propose.execution_mode,
          'proposal', nullif(btrim(engine_version_propose.note), ''), auth.uid())
  RETURNING * INTO v;
  RETURN v;
END
$$;
REVOKE ALL ON FUNCTION public.engine_version_propose(uuid, jsonb, jsonb, text, text) FROM PUBLIC, anon, authenticated, service_role;
GRANT EXECUTE ON FUNCTION public.engine_version_propose(uuid, jsonb, jsonb, text, text) TO authenticated, service_role;

-- Make version n current again, as a new version (origin 'rollback', restored_from n).
-- The update goes through ai_engines like any other, so the checker re-checks it.
CREATE FUNCTION public.engine_rollback(engine_id uuid, version integer, note text DEFAULT NULL)
RETURNS public.engine_versions
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
  rel public.engine_releases;
  target public.engine_versions;
  v public.engine_versions;
  changed integer;
BEGIN
  PERFORM public.engine_versions_require_admin();
  rel := public.engine_release_of(engine_rollback.engine_id);
  target := public.engine_version_lookup(rel.engine_id, engine_rollback.version);
  IF target.check_state = 'not_runnable' THEN
    RAISE EXCEPTION 'version % of this engine cannot run', target.version
      USING ERRCODE = 'PT422', DETAIL = 'version_not_runnable', HINT = target.check_issues::text;
  END IF;
  PERFORM set_config('bookengine.version_origin', 'rollback', true),
          set_config('bookengine.version_restored_from', target.version::text, true),
          set_config('bookengine.version_note',
                     coalesce(nullif(btrim(engine_rollback.note), ''), format('rollback to version %s', target.version)), true);
  UPDATE public.ai_engines e
     SET flow_config = target.flow_config, models = target.models, execution_mode = target.execution_mode,
         updated_at = now()
   WHERE e.id = rel.engine_id
     AND (e.flow_config, e.models, e.execution_mode) IS DISTINCT FROM (target.flow_config, target.models, target.execution_mode);
  GET DIAGNOSTICS changed = ROW_COUNT;
  PERFORM set_config('bookengine.version_origin', '', true),
          set_config('bookengine.version_restored_from', '', true),
          set_config('bookengine.version_note', '', true);
  IF changed = 0 THEN
    RAISE EXCEPTION 'version % is what the engine runs already (version %)', target.version, rel.current_version
      USING ERRCODE = 'PT409', DETAIL = 'version_is_current';
  END IF;
  SELECT * INTO v FROM public.engine_versions x
   WHERE x.engine_id = rel.engine_id
     AND x.version = (SELECT r.current_version FROM public.engine_releases r WHERE r.engine_id = rel.engine_id);
  RETURN v;
END
$$;
REVOKE ALL ON FUNCTION public.engine_rollback(uuid, integer, text) FROM PUBLIC, anon, authenticated, service_role;
GRANT EXECUTE ON FUNCTION public.engine_rollback(uuid, integer, text) TO authenticated, service_role;

-- Start a rollout of a candidate to `percent` of the engine's users, or change its share.
CREATE FUNCTION public.engine_rollout_start(engine_id uuid, version integer, percent numeric)
RETURNS public.engine_releases
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
  rel public.engine_releases;
  target public.engine_versions;
BEGIN
  PERFORM public.engine_versions_require_admin();
  rel := public.engine_release_of(engine_rollout_start.engine_id);
  target := public.engine_version_lookup(rel.engine_id, engine_rollout_start.version);
  IF engine_rollout_start.percent IS NULL OR engine_rollout_start.percent < 0 OR engine_rollout_start.percent > 100 THEN
    RAISE EXCEPTION 'percent must be between 0 and 100' USING ERRCODE = '22023', DETAIL = 'invalid_request';
  END IF;
  IF target.version = rel.current_version THEN
    RAISE EXCEPTION 'version % is the current version: nothing to roll out', target.version
      USING ERRCODE = 'PT409', DETAIL = 'version_is_current';
  END IF;
  IF target.check_state = 'not_runnable' THEN
    RAISE EXCEPTION 'version % of this engine cannot run', target.version
      USING ERRCODE = 'PT422', DETAIL = 'version_not_runnable', HINT = target.check_issues::text;
  END IF;
  IF rel.rollout_version IS NOT NULL AND rel.rollout_version <> target.version THEN
    RAISE EXCEPTION 'version % is being rolled out: promote or abort it first', rel.rollout_version
      USING ERRCODE = 'PT409', DETAIL = 'rollout_in_progress';
  END IF;
  UPDATE public.engine_releases r
     SET rollout_version = target.version,
         rollout_percent = round(engine_rollout_start.percent, 2),
         rollout_started_at = coalesce(r.rollout_started_at, now()),
         rollout_started_by = coalesce(r.rollout_started_by, auth.uid()),
         rollout_updated_at = now()
   WHERE r.engine_id = rel.engine_id
  RETURNING * INTO rel;
  RETURN rel;
END
$$;
REVOKE ALL ON FUNCTION public.engine_rollout_start(uuid, integer, numeric) FROM PUBLIC, anon, authenticated, service_role;
GRANT EXECUTE ON FUNCTION public.engine_rollout_start(uuid, integer, numeric) TO authenticated, service_role;

-- The candidate becomes current (keeping its number: the users already on it stay
-- on the same version) and the rollout ends.
CREATE FUNCTION public.engine_rollout_promote(engine_id uuid) RETURNS public.engine_releases
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
  rel public.engine_releases;
  target public.engine_versions;
BEGIN
  PERFORM public.engine_versions_require_admin();
  rel := public.engine_release_of(engine_rollout_promote.engine_id);
  IF rel.rollout_version IS NULL THEN
    RAISE EXCEPTION 'this engine has no rollout to promote' USING ERRCODE = 'PT409', DETAIL = 'no_rollout';
  END IF;
  target := public.engine_version_lookup(rel.engine_id, rel.rollout_version);
  IF target.check_state <> 'runnable' THEN
    RAISE EXCEPTION 'version % has not passed its check (%)', target.version, target.check_state
      USING ERRCODE = 'PT422', DETAIL = 'version_not_runnable', HINT = target.check_issues::text;
  END IF;
  PERFORM set_config('bookengine.version_origin', 'promote', true);
  UPDATE public.ai_engines e
     SET flow_config = target.flow_config, models = target.models, execution_mode = target.execution_mode,
         updated_at = now()
   WHERE e.id = rel.engine_id;
  PERFORM set_config('bookengine.version_origin', '', true);
  -- Same content as the current version: the trigger saw no change; move the pointer here.
  UPDATE public.engine_releases r
     SET current_version = r.rollout_version, rollout_version = NULL, rollout_percent = NULL,
         rollout_started_at = NULL, rollout_started_by = NULL, rollout_updated_at = now()
   WHERE r.engine_id = rel.engine_id AND r.rollout_version IS NOT NULL;
  SELECT * INTO rel FROM public.engine_releases r WHERE r.engine_id = rel.engine_id;
  RETURN rel;
END
$$;
REVOKE ALL ON FUNCTION public.engine_rollout_promote(uuid) FROM PUBLIC, anon, authenticated, service_role;
GRANT EXECUTE ON FUNCTION public.engine_rollout_promote(uuid) TO authenticated, service_role;

-- Every user back on the current version.
CREATE FUNCTION public.engine_rollout_abort(engine_id uuid) RETURNS public.engine_releases
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
  rel public.engine_releases;
BEGIN
  PERFORM public.engine_versions_require_admin();
  rel := public.engine_release_of(engine_rollout_abort.engine_id);
  IF rel.rollout_version IS NULL THEN
    RAISE EXCEPTION 'this engine has no rollout to abort' USING ERRCODE = 'PT409', DETAIL = 'no_rollout';
  END IF;
  UPDATE public.engine_releases r
     SET rollout_version = NULL, rollout_percent = NULL, rollout_started_at = NULL,
         rollout_started_by = NULL, rollout_updated_at = now()
   WHERE r.engine_id = rel.engine_id
  RETURNING * INTO rel;
  RETURN rel;
END
$$;
REVOKE ALL ON FUNCTION public.engine_rollout_abort(uuid) FROM PUBLIC, anon, authenticated, service_role;
GRANT EXECUTE ON FUNCTION public.engine_rollout_abort(uuid) TO authenticated, service_role;

-- The service's check of a version (service role only), like engine_check_save.
CREATE FUNCTION public.engine_version_check_save(engine_id uuid, version integer, runnable boolean,
                                                 issues jsonb DEFAULT '[]')
RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, public AS $$
BEGIN
  UPDATE public.engine_versions v
     SET check_state = CASE WHEN engine_version_check_save.runnable THEN 'runnable' ELSE 'not_runnable' END,
         check_issues = coalesce(engine_version_check_save.issues, '[]'::jsonb),
         checked_at = now()
   WHERE v.engine_id = engine_version_check_save.engine_id AND v.version = engine_version_check_save.version;
  RETURN FOUND;
END
$$;
REVOKE ALL ON FUNCTION public.engine_version_check_save(uuid, integer, boolean, jsonb) FROM PUBLIC, anon, authenticated, service_role;
GRANT EXECUTE ON FUNCTION public.engine_version_check_save(uuid, integer, boolean, jsonb) TO service_role;

---------------------------------------------------------------------------------------
-- 4. Jobs name their version; numbers per version.
---------------------------------------------------------------------------------------

ALTER TABLE public.generation_jobs ADD COLUMN engine_version integer;
CREATE INDEX generation_jobs_engine_version_idx ON public.generation_jobs (engine_id, engine_version);

-- For each version of an engine: jobs, outcomes, wall time of the finished ones and
-- tokens per finished job. Admins only; definer so the per-row admin policy is not
-- evaluated for every job.
CREATE FUNCTION public.engine_version_stats(engine_id uuid)
RETURNS TABLE (version integer, jobs bigint, finished bigint, succeeded bigint, failed bigint,
               cancelled bigint, succeeded_share double precision, failed_share double precision,
               median_wall_ms double precision, p95_wall_ms double precision,
               tokens_per_job double precision)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
  PERFORM public.engine_versions_require_admin();
  RETURN QUERY
  SELECT j.engine_version,
         count(*),
         count(*) FILTER (WHERE j.status IN ('succeeded', 'failed', 'cancelled')),
         count(*) FILTER (WHERE j.status = 'succeeded'),
         count(*) FILTER (WHERE j.status = 'failed'),
         count(*) FILTER (WHERE j.status = 'cancelled'),
         (count(*) FILTER (WHERE j.status = 'succeeded'))::double precision
           / nullif(count(*) FILTER (WHERE j.status IN ('succeeded', 'failed', 'cancelled')), 0),
         (count(*) FILTER (WHERE j.status = 'failed'))::double precision
           / nullif(count(*) FILTER (WHERE j.status IN ('succeeded', 'failed', 'cancelled')), 0),
         percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM j.finished_at - j.started_at) * 1000)
           FILTER (WHERE j.status = 'succeeded' AND j.started_at IS NOT NULL),
         percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM j.finished_at - j.started_at) * 1000)
           FILTER (WHERE j.status = 'succeeded' AND j.started_at IS NOT NULL),
         avg(coalesce((j.usage ->> 'input_tokens')::double precision, 0)
             + coalesce((j.usage ->> 'output_tokens')::double precision, 0))
           FILTER (WHERE j.status IN ('succeeded', 'failed', 'cancelled'))
    FROM public.generation_jobs j
   WHERE j.engine_id = engine_version_stats.engine_id AND j.engine_version IS NOT NULL
   GROUP BY j.engine_version
   ORDER BY j.engine_version;
END
$$;
REVOKE ALL ON FUNCTION public.engine_version_stats(uuid) FROM PUBLIC, anon, authenticated, service_role;
GRANT EXECUTE ON FUNCTION public.engine_version_stats(uuid) TO authenticated, service_role;

---------------------------------------------------------------------------------------
-- 5. Resolution and requests apply the rollout.
---------------------------------------------------------------------------------------

-- version: the version the caller gets; rollout: true when that is a rollout's candidate.
ALTER TYPE public.engine_choice ADD ATTRIBUTE version integer;
ALTER TYPE public.engine_choice ADD ATTRIBUTE rollout boolean;

-- As V7 (definer, explicit caller filter: benches/README.md), plus the rollout: a caller
-- whose bucket is below the share gets the candidate's flow, while the candidate's own
-- check says it runs (otherwise the current version, with the engine's check).
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
  ORDER BY 14
$$;
REVOKE ALL ON FUNCTION public.my_engines() FROM PUBLIC, anon, authenticated, service_role;
GRANT EXECUTE ON FUNCTION public.my_engines() TO anon, authenticated, service_role;

-- The version whose content an engine row holds (the current one, unless a change
-- committed between two reads: then the newest with that content).
CREATE FUNCTION public.engine_version_of(engine public.ai_engines) RETURNS integer
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
  SELECT v.version FROM public.engine_versions v
    LEFT JOIN public.engine_releases r ON r.engine_id = v.engine_id
   WHERE v.engine_id = (engine).id AND v.flow_config = (engine).flow_config AND v.models = (engine).models
     AND v.execution_mode IS NOT DISTINCT FROM (engine).execution_mode
   ORDER BY (v.version = r.current_version) DESC, v.version DESC
   LIMIT 1
$$;
REVOKE ALL ON FUNCTION public.engine_version_of(public.ai_engines) FROM PUBLIC, anon, authenticated, service_role;
GRANT EXECUTE ON FUNCTION public.engine_version_of(public.ai_engines) TO authenticated, service_role;

-- As V7, plus the version: a user's job takes flow, check and version from one
-- my_engines() row (so a rollout's candidate reaches the snapshot only when runnable);
-- the other paths (an admin naming an engine not assigned to them, the service role)
-- run the current version.
CREATE OR REPLACE FUNCTION public.generation_jobs_before_insert() RETURNS trigger
LANGUAGE plpgsql SECURITY INVOKER SET search_path = pg_catalog, public AS $$
DECLARE
  uid uuid := auth.uid();
  engine public.ai_engines;
  choice public.engine_choice;
  chk public.engine_checks;
  version integer;
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
    version := choice.version;
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
    version := public.engine_version_of(engine);
  END IF;
  IF chk.state IS DISTINCT FROM 'runnable' THEN
    RAISE EXCEPTION 'the engine % was changed moments ago and is still being checked', to_jsonb(engine.name)::text
      USING ERRCODE = 'PT409', DETAIL = 'engine_check_pending',
            HINT = 'Try again in a few seconds. If this persists, the bookengine service (which checks engines) is not running.';
  END IF;

  NEW.engine_id := engine.id;
  NEW.id := gen_random_uuid();
  NEW.engine_name := engine.name;
  NEW.engine_version := version;
  NEW.engine_snapshot := jsonb_build_object(
    'flow_config', engine.flow_config,
    'models', engine.models,
    'execution_mode', engine.execution_mode,
    'tier', engine.tier,
    'engine_updated_at', engine.updated_at,
    'engine_version', version);
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
