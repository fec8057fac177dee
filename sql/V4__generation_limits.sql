-- Per-tier generation limits, enforced in Postgres so every service instance (and
-- the React app calling request_generation directly) agrees. Admins edit the rows.

CREATE TABLE public.generation_limits (
  tier text PRIMARY KEY CHECK (tier IN ('hobby', 'pro', 'enterprise')),
  max_concurrent integer NOT NULL CHECK (max_concurrent >= 0),
  max_per_hour integer NOT NULL CHECK (max_per_hour >= 0),
  updated_at timestamptz NOT NULL DEFAULT now()
);

INSERT INTO public.generation_limits (tier, max_concurrent, max_per_hour) VALUES
  ('hobby', 1, 10),
  ('pro', 3, 60),
  ('enterprise', 10, 600);

ALTER TABLE public.generation_limits ENABLE ROW LEVEL SECURITY;
CREATE POLICY "Everyone signed in can read generation limits" ON public.generation_limits
  FOR SELECT USING (auth.uid() IS NOT NULL OR auth.role() = 'service_role');
CREATE POLICY "Admins can manage generation limits" ON public.generation_limits
  FOR ALL USING (public.is_engine_admin());

REVOKE ALL ON TABLE public.generation_limits FROM PUBLIC, anon, authenticated, service_role;
GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE public.generation_limits TO authenticated, service_role;

-- Serialises the caller's requests and refuses those over the limits of their tier
-- (no user_credits row: hobby). PT429 becomes HTTP 429; the hint says when to retry.
CREATE FUNCTION public.generation_limits_check() RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, public AS $$
#variable_conflict use_column
DECLARE
  uid uuid := auth.uid();
  lim public.generation_limits;
  active_jobs integer;
  recent integer;
  oldest timestamptz;
  wait integer;
BEGIN
  -- Two requests of one user at the same moment must not both pass the count.
  PERFORM pg_advisory_xact_lock(hashtextextended('bookengine.generation:' || uid::text, 0));
  SELECT l.* INTO lim FROM public.generation_limits l
   WHERE l.tier = coalesce((SELECT c.tier FROM public.user_credits c WHERE c.user_id = uid LIMIT 1), 'hobby');
  IF lim.tier IS NULL THEN
    RETURN; -- no limits configured for this tier
  END IF;
  SELECT count(*) INTO active_jobs FROM public.generation_jobs j
   WHERE j.user_id = uid AND j.status IN ('queued', 'running');
  IF active_jobs >= lim.max_concurrent THEN
    RAISE EXCEPTION 'too many generations at once: the % tier allows % at a time', lim.tier, lim.max_concurrent
      USING ERRCODE = 'PT429', DETAIL = 'rate_limited', HINT = 'Try again in 30 seconds.';
  END IF;
  SELECT count(*), min(j.created_at) INTO recent, oldest FROM public.generation_jobs j
   WHERE j.user_id = uid AND j.created_at > now() - interval '1 hour';
  IF recent >= lim.max_per_hour THEN
    wait := greatest(1, ceil(extract(epoch FROM (oldest + interval '1 hour' - now())))::integer);
    RAISE EXCEPTION 'hourly generation limit reached: the % tier allows % per hour', lim.tier, lim.max_per_hour
      USING ERRCODE = 'PT429', DETAIL = 'rate_limited', HINT = format('Try again in %s seconds.', wait);
  END IF;
END
$$;
REVOKE ALL ON FUNCTION public.generation_limits_check() FROM PUBLIC, anon, authenticated, service_role;

-- Users' requests (not the service role's) go through the limits.
CREATE FUNCTION public.generation_jobs_limit() RETURNS trigger
LANGUAGE plpgsql SECURITY INVOKER SET search_path = pg_catalog, public AS $$
BEGIN
  IF auth.uid() IS NOT NULL THEN
    PERFORM public.generation_limits_check();
  END IF;
  RETURN NEW;
END
$$;
REVOKE ALL ON FUNCTION public.generation_jobs_limit() FROM PUBLIC, anon, authenticated, service_role;
GRANT EXECUTE ON FUNCTION public.generation_limits_check() TO authenticated;

-- Runs after generation_jobs_before_insert (triggers fire in name order), when
-- user_id is already the caller.
CREATE TRIGGER generation_jobs_limit BEFORE INSERT ON public.generation_jobs
  FOR EACH ROW EXECUTE FUNCTION public.generation_jobs_limit();
