-- bookengine additions to the specified engine tables. Nothing here changes a
-- specified statement: it adds privileges, a uniqueness rule for assignments, an
-- updated_at trigger and the functions the React app and the service share.

-- Privileges, explicitly. Hosted Supabase projects grant ALL on new public tables and
-- functions to anon and authenticated by default; we neither rely on that nor keep it.
REVOKE ALL ON TABLE public.ai_engines, public.engine_assignments FROM PUBLIC, anon, authenticated, service_role;
GRANT SELECT ON TABLE public.ai_engines, public.engine_assignments TO anon;
GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE public.ai_engines, public.engine_assignments TO authenticated, service_role;
-- The specified policies read these two tables as the caller.
GRANT SELECT ON TABLE public.profiles, public.user_credits TO authenticated;

-- One assignment per (engine, target): assigning twice updates the existing row.
CREATE UNIQUE INDEX engine_assignments_tier_target_key
  ON public.engine_assignments (engine_id, tier) WHERE assignment_type = 'tier';
CREATE UNIQUE INDEX engine_assignments_user_target_key
  ON public.engine_assignments (engine_id, user_id) WHERE assignment_type = 'user';

CREATE FUNCTION public.bookengine_touch_updated_at() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, public AS $$
BEGIN
  NEW.updated_at := now();
  RETURN NEW;
END
$$;
REVOKE ALL ON FUNCTION public.bookengine_touch_updated_at() FROM PUBLIC, anon, authenticated, service_role;

CREATE TRIGGER ai_engines_touch_updated_at BEFORE UPDATE ON public.ai_engines
  FOR EACH ROW EXECUTE FUNCTION public.bookengine_touch_updated_at();

-- created_by is the deploying person, whatever the client sent (the seed's React
-- code sends it; a direct PostgREST insert might not, or might lie).
CREATE FUNCTION public.bookengine_set_created_by() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, public AS $$
BEGIN
  NEW.created_by := coalesce(auth.uid(), NEW.created_by);
  RETURN NEW;
END
$$;
REVOKE ALL ON FUNCTION public.bookengine_set_created_by() FROM PUBLIC, anon, authenticated, service_role;

CREATE TRIGGER ai_engines_set_created_by BEFORE INSERT ON public.ai_engines
  FOR EACH ROW EXECUTE FUNCTION public.bookengine_set_created_by();

-- True when the caller's profile says admin, the same test the specified policies make.
CREATE FUNCTION public.is_engine_admin() RETURNS boolean
LANGUAGE sql STABLE SECURITY INVOKER SET search_path = pg_catalog, public AS $$
  SELECT EXISTS (SELECT 1 FROM public.profiles WHERE id = auth.uid() AND role = 'admin')
$$;
REVOKE ALL ON FUNCTION public.is_engine_admin() FROM PUBLIC, anon, authenticated, service_role;
GRANT EXECUTE ON FUNCTION public.is_engine_admin() TO authenticated, service_role;

-- What resolution returns: the engine and the assignment that gave it to the caller.
CREATE TYPE public.engine_choice AS (
  id uuid,
  name text,
  description text,
  flow_config jsonb,
  models jsonb,
  execution_mode text,
  tier text,
  created_at timestamptz,
  updated_at timestamptz,
  assignment_id uuid,
  assignment_type text,
  assignment_priority integer,
  assigned_at timestamptz,
  rank integer
);

-- The engines the caller may use, best first. The one precedence rule, written once:
--   only active engines and active assignments;
--   a direct user assignment beats a tier assignment;
--   then the higher priority; then the newest assignment.
-- SECURITY INVOKER: RLS on both tables still applies, and the explicit target test
-- keeps an admin (who can see every assignment) to the engines assigned to them.
CREATE FUNCTION public.my_engines() RETURNS SETOF public.engine_choice
LANGUAGE sql STABLE SECURITY INVOKER SET search_path = pg_catalog, public AS $$
  WITH caller AS (
    SELECT auth.uid() AS uid,
           (SELECT tier FROM public.user_credits WHERE user_id = auth.uid()) AS tier
  ), best AS (
    SELECT DISTINCT ON (a.engine_id) a.*
    FROM public.engine_assignments a, caller c
    WHERE a.active
      AND ((a.assignment_type = 'user' AND a.user_id = c.uid)
        OR (a.assignment_type = 'tier' AND a.tier = c.tier))
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

-- The one engine a generation uses when none is named.
CREATE FUNCTION public.resolve_engine() RETURNS public.engine_choice
LANGUAGE plpgsql STABLE SECURITY INVOKER SET search_path = pg_catalog, public AS $$
DECLARE
  choice public.engine_choice;
BEGIN
  SELECT * INTO choice FROM public.my_engines() LIMIT 1;
  IF choice.id IS NULL THEN
    RAISE EXCEPTION 'no engine assigned'
      USING ERRCODE = 'PT404',
            DETAIL = 'no_engine_assigned',
            HINT = 'Ask an administrator to assign an engine to your tier or to you.';
  END IF;
  RETURN choice;
END
$$;

REVOKE ALL ON FUNCTION public.my_engines(), public.resolve_engine() FROM PUBLIC, anon, authenticated, service_role;
GRANT EXECUTE ON FUNCTION public.my_engines(), public.resolve_engine() TO anon, authenticated, service_role;

-- Assign one engine to one target, updating the existing assignment if there is one.
-- SECURITY INVOKER: the specified admin policy decides who may write.
CREATE FUNCTION public.assign_engine(
  engine_id uuid,
  assignment_type text,
  tier text DEFAULT NULL,
  user_id uuid DEFAULT NULL,
  priority integer DEFAULT 0,
  active boolean DEFAULT true
) RETURNS public.engine_assignments
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, public AS $$
#variable_conflict use_column
DECLARE
  row public.engine_assignments;
BEGIN
  IF assign_engine.assignment_type = 'tier' THEN
    INSERT INTO public.engine_assignments AS a (engine_id, assignment_type, tier, user_id, priority, active)
    VALUES (assign_engine.engine_id, 'tier', assign_engine.tier, assign_engine.user_id,
            coalesce(assign_engine.priority, 0), coalesce(assign_engine.active, true))
    ON CONFLICT (engine_id, tier) WHERE assignment_type = 'tier'
    DO UPDATE SET priority = EXCLUDED.priority, active = EXCLUDED.active
    RETURNING a.* INTO row;
  ELSE
    INSERT INTO public.engine_assignments AS a (engine_id, assignment_type, tier, user_id, priority, active)
    VALUES (assign_engine.engine_id, assign_engine.assignment_type, assign_engine.tier, assign_engine.user_id,
            coalesce(assign_engine.priority, 0), coalesce(assign_engine.active, true))
    ON CONFLICT (engine_id, user_id) WHERE assignment_type = 'user'
    DO UPDATE SET priority = EXCLUDED.priority, active = EXCLUDED.active
    RETURNING a.* INTO row;
  END IF;
  RETURN row;
END
$$;

-- Many engines x many targets in one transaction: all rows are written or none is.
-- items: [{"engine_id", "assignment_type", "tier"?, "user_id"?, "priority"?, "active"?}]
CREATE FUNCTION public.assign_engines_bulk(items jsonb) RETURNS SETOF public.engine_assignments
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, public AS $$
DECLARE
  item jsonb;
BEGIN
  IF jsonb_typeof(items) IS DISTINCT FROM 'array' THEN
    RAISE EXCEPTION 'items must be a JSON array' USING ERRCODE = '22023';
  END IF;
  FOR item IN SELECT value FROM jsonb_array_elements(items) LOOP
    RETURN NEXT public.assign_engine(
      (item ->> 'engine_id')::uuid,
      item ->> 'assignment_type',
      item ->> 'tier',
      (item ->> 'user_id')::uuid,
      coalesce((item ->> 'priority')::integer, 0),
      coalesce((item ->> 'active')::boolean, true));
  END LOOP;
END
$$;

REVOKE ALL ON FUNCTION public.assign_engine(uuid, text, text, uuid, integer, boolean),
                       public.assign_engines_bulk(jsonb)
  FROM PUBLIC, anon, authenticated, service_role;
GRANT EXECUTE ON FUNCTION public.assign_engine(uuid, text, text, uuid, integer, boolean),
                          public.assign_engines_bulk(jsonb)
  TO authenticated, service_role;
